"""Read paths measured in process (the selectors, no HTTP) on a 10M-CDR database, before and
after ``cdrs_cdr`` is partitioned (bench/partitions_10m.sh makes the database).

    .venv/bin/python bench/partitions.py --database-url postgres://.../cdrbench_part \
        [--iterations 300] [--label before|after]

Detail by id for ids the service generates (snowflakes) and for foreign ids (a PBX's small
integers), a first page, a one-day window, a caller filter, a caller filter with its count,
and the unfiltered count (the counter). Each case: 20 warm-up calls, then ``--iterations``
timed calls; p50, p95 and mean in ms. Appends to bench/results/partitions-10m.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-not-for-production-0123456789")
    os.environ["DJANGO_SETTINGS_MODULE"] = "cdrservice.settings"
    import django

    django.setup()
    from django.db import connection

    from cdrs import partitions
    from cdrs.query.options import parse_list_options
    from cdrs.selectors import cdr_get, cdr_list
    from cdrs.tokens import mint_token

    token = mint_token(username="bench-partitions", scopes=("read", "billing")).token
    with connection.cursor() as cur:
        cur.execute("SELECT id FROM cdrs_cdr TABLESAMPLE SYSTEM (0.2) LIMIT 20000")
        sample = [row[0] for row in cur.fetchall()]
        cur.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'cdrs_cdr'::regclass")
        parts = cur.fetchone()[0]
    random.seed(5)
    generated = [i for i in sample if i > 10**12]
    foreign = [i for i in sample if i <= 10**12]
    random.shuffle(generated)
    random.shuffle(foreign)

    def options(**params: str) -> Any:
        return parse_list_options({k: [v] for k, v in params.items()}, billing=True)

    def cycle(values: list[int]) -> Callable[[int], Any]:
        return lambda n: cdr_get(token=token, cdr_id=values[n % len(values)])

    day = {"started_after": "2025-06-01T00:00:00Z", "started_before": "2025-06-02T00:00:00Z"}
    cases: dict[str, Callable[[int], Any]] = {
        "detail, generated id": cycle(generated),
        "detail, foreign id": cycle(foreign),
        "first page (top=50)": lambda n: cdr_list(token=token, options=options(top="50")),
        "one-day window": lambda n: cdr_list(token=token, options=options(top="50", **day)),
        # count=false: a list counts by default (the PortSIP shape), the next case does.
        "caller filter": lambda n: cdr_list(
            token=token,
            options=options(top="50", count="false", filter=f"caller eq '{100 + n % 900}'"),
        ),
        "caller filter + count": lambda n: cdr_list(
            token=token,
            options=options(top="50", count="true", filter=f"caller eq '{100 + n % 900}'"),
        ),
        "unfiltered count": lambda n: cdr_list(token=token, options=options(top="1", count="true")),
    }
    results: dict[str, dict[str, float]] = {}
    print(
        f"{args.label or 'run'}: partitioned={partitions.is_partitioned()} partitions={parts} "
        f"load={os.getloadavg()}"
    )
    for name, call in cases.items():
        for n in range(20):
            call(n)
        times = []
        for n in range(args.iterations):
            started = time.perf_counter()
            found = call(n + 20)
            times.append((time.perf_counter() - started) * 1000)
            assert found is not None
        times.sort()
        row = {
            "p50_ms": round(statistics.median(times), 3),
            "p95_ms": round(times[int(len(times) * 0.95)], 3),
            "mean_ms": round(statistics.fmean(times), 3),
        }
        results[name] = row
        figures = "  ".join(f"{k.removesuffix('_ms')} {v:8.3f}" for k, v in row.items())
        print(f"  {name:24} {figures} ms")
    out = ROOT / "bench" / "results" / "partitions-10m.json"
    runs = json.loads(out.read_text()) if out.exists() else []
    runs.append(
        {
            "label": args.label,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "partitioned": partitions.is_partitioned(),
            "partitions": parts,
            "loadavg": os.getloadavg(),
            "iterations": args.iterations,
            "results": results,
        }
    )
    out.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
