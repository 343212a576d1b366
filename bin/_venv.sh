# Shared by bin/run and bin/test: create .venv with Python 3.11+ and install a requirements
# file only when it changed since the last install (a hash stamp inside .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "cdrservice needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
ensure_requirements() {
  local file=$1 stamp=".venv/.installed-$(basename "$1")"
  local want
  want=$(cat "$file" requirements.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing $file into .venv ..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$file" >&2
    echo "$want" > "$stamp"
  fi
}
