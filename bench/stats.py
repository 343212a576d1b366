"""S8 in process: a month of daily buckets from the rollup vs the direct GROUP BY.

    .venv/bin/python bench/stats.py [--database-url URL] [--repeat N] [--output FILE]

Times ``cdrs.stats.cdr_stats`` (the selector behind GET /api/cdrs/stats) on the database as
it is (load it first with ``generate_cdrs`` + ``import_cdrs``, see bench/README.md), for the
same requests as S8, once with the rollup and once forced to the direct query, and checks
both answer the same. No HTTP, no token: the query and the Python around it only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common
from common import RESULTS, log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cdrbench"),
    )
    p.add_argument("--repeat", type=int, default=15, help="timed runs per request and source")
    p.add_argument("--months", type=int, default=2, help="calendar months per zone")
    p.add_argument("--output", default=str(RESULTS / "stats-latest.md"))
    args = p.parse_args()

    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789-abcdefghijklmnop")
    os.environ["DJANGO_SETTINGS_MODULE"] = "cdrservice.settings"
    import django

    django.setup()
    from django.db import connection
    from run import _months, _ts

    from cdrs.query.options import parse_list_options
    from cdrs.query.stats_options import parse_stats_options
    from cdrs.stats import cdr_stats

    with connection.cursor() as cur:
        cur.execute("SELECT count(*), min(started_at), max(started_at) FROM cdrs_cdr")
        rows, lo, hi = cur.fetchone()
        cur.execute("SELECT count(*) FROM cdrs_hourly_stats")
        rollup_rows = cur.fetchone()[0]
    log(f"{rows:,} CDRs from {lo:%Y-%m-%d} to {hi:%Y-%m-%d}; {rollup_rows:,} rollup rows")
    months = []
    for zone in ("UTC", "Europe/Berlin"):
        months += [m for m in _months(lo, hi) if m[0] == zone][: args.months]

    lines = [
        "# S8 in process: a month of daily buckets, rollup vs direct GROUP BY",
        "",
        f"- date: {common.now_utc()}",
        f"- command: `{common.command_line()}`",
        f"- code: commit {common.git_revision()}",
        f"- data: {rows:,} CDRs from {lo:%Y-%m-%d} to {hi:%Y-%m-%d}, "
        f"{rollup_rows:,} rows in cdrs_hourly_stats",
        f"- machine: {common.machine_info()['nproc']} CPUs, shared; {args.repeat} timed runs "
        "per cell after one warm-up run; times are `cdr_stats()` wall time in ms",
        "",
        "| zone | month | filter | CDRs in window | rollup table | rollup p50 | rollup max "
        "| direct p50 | direct max | same answer |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    # S8 itself, and the same with a filter the per-dimension rollup serves.
    cases = [(m, extra) for m in months for extra in ({}, {"direction": ["OUTBOUND_CALL"]})]
    for (zone, start, end), extra in cases:
        params = {"started_after": [_ts(start)], "started_before": [_ts(end)], **extra}
        options = parse_list_options(params, billing=True)
        stats_options = parse_stats_options({"group_by": ["day"], "tz": [zone]}, billing=True)
        timings: dict[bool, list[float]] = {True: [], False: []}
        answers = {}
        for use_rollup in (True, False):
            for n in range(args.repeat + 1):
                t0 = time.perf_counter()
                result = cdr_stats(
                    token=None,
                    options=options,
                    stats=stats_options,
                    billing=True,
                    use_rollup=use_rollup,
                )
                if n:  # the first run warms the caches
                    timings[use_rollup].append((time.perf_counter() - t0) * 1000)
            answers[use_rollup] = result
            assert result.source.startswith("rollup") == use_rollup, result.source
        same = answers[True].items == answers[False].items and (
            answers[True].total == answers[False].total
        )
        r, d = timings[True], timings[False]
        shown = ", ".join(f"{k}={v[0]}" for k, v in extra.items()) or "—"
        line = (
            f"| {zone} | {start:%Y-%m} | {shown} | {answers[True].total['calls']:,} | "
            f"{answers[True].source} | "
            f"{statistics.median(r):.1f} | {max(r):.1f} | {statistics.median(d):.1f} | "
            f"{max(d):.1f} | {'yes' if same else '**NO**'} |"
        )
        log(line)
        lines.append(line)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
