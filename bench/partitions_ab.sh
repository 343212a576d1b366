#!/usr/bin/env bash
# The partitions benchmark side by side: bench/partitions.py against a plain and a
# partitioned copy of one database, in alternating rounds, so the machine's noise (it
# moved single runs by up to 1.8x here) lands on both alike; then, per case, the median
# of the rounds' p50s and the ratio. Every round is appended to
# bench/results/partitions-10m.json under a label "<tag> plain|partitioned <round>".
#
#   bench/partitions_10m.sh cdrbench_part 36                # 10M CDRs, plain table
#   createdb -T cdrbench_part cdrbench_plain                # a copy that stays plain
#   DATABASE_URL=.../cdrbench_part .venv/bin/python manage.py migrate   # partitions it
#   psql .../cdrbench_part -c 'VACUUM ANALYZE'
#   bench/partitions_ab.sh .../cdrbench_plain .../cdrbench_part [ROUNDS] [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
plain=$1
partitioned=$2
rounds=${3:-6}
iterations=${4:-150}
tag="ab-$(date -u +%Y%m%dT%H%M%S)"
for round in $(seq "$rounds"); do
  for kind in plain partitioned; do
    url=$plain
    [ "$kind" = partitioned ] && url=$partitioned
    .venv/bin/python bench/partitions.py --database-url "$url" --iterations "$iterations" \
      --label "$tag $kind $round" >/dev/null
  done
  echo "round $round of $rounds done"
done
.venv/bin/python - "$tag" <<'PY'
import json
import statistics
import sys
from pathlib import Path

tag = sys.argv[1]
runs = json.loads(Path("bench/results/partitions-10m.json").read_text())
p50s: dict[str, dict[str, list[float]]] = {"plain": {}, "partitioned": {}}
parts = 0
for run in runs:
    label = run.get("label", "")
    if not label.startswith(tag + " "):
        continue
    kind = label.split()[1]
    parts = max(parts, run["partitions"])
    for case, row in run["results"].items():
        p50s[kind].setdefault(case, []).append(row["p50_ms"])
rounds = len(next(iter(p50s["plain"].values())))
print(f"{tag}: median of {rounds} rounds' p50 (ms), plain table vs {parts} partitions")
print("| case | plain | partitioned | partitioned / plain |")
print("|---|---:|---:|---:|")
for case, values in p50s["plain"].items():
    a = statistics.median(values)
    b = statistics.median(p50s["partitioned"][case])
    print(f"| {case} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
PY
