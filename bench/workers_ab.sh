#!/usr/bin/env bash
# The service under each gunicorn worker class, side by side: bench/run.py (service only,
# the database as it is) once per worker class per round, rounds alternating, so the
# machine's noise lands on both alike. Reports go to bench/results/workers/<class>-<round>.md
# (and .json); the last lines print each run's req/s and p50/p99 per scenario.
#
#   bench/workers_ab.sh [ROUNDS] [SCENARIOS] [DURATION]      # defaults: 2 S2,S3,S5,S7 8
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
only=${2:-S2,S3,S5,S7}
duration=${3:-8}
classes=(cdrservice.gunicorn_worker.ThreadWorker cdrservice.gunicorn_loop.LoopWorker)
mkdir -p bench/results/workers
for round in $(seq "$rounds"); do
  for class in "${classes[@]}"; do
    GUNICORN_WORKER_CLASS=$class .venv/bin/python bench/run.py --skip-load --servers service \
      --only "$only" --duration "$duration" --warmup 2 --probe 0 \
      --output "bench/results/workers/${class##*.}-$round.md" >/dev/null
  done
done
.venv/bin/python - "$rounds" <<'PY'
import json, sys
for path in sorted(__import__("glob").glob("bench/results/workers/*.json")):
    data = json.load(open(path))
    cells = [
        f"{s} {r['service']['rps']:,.0f} req/s p50 {r['service']['p50_us'] / 1e3:.1f} "
        f"p99 {r['service']['p99_us'] / 1e3:.1f} ms"
        for s, r in data["results"].items() if r.get("service")
    ]
    print(path.rsplit("/", 1)[1], "|", "; ".join(cells))
PY
