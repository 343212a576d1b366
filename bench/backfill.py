"""Fast backfill benchmark: ``import_cdrs`` of N CDRs into empty months, against a bare COPY.

    .venv/bin/python bench/backfill.py [--rows 1000000] [--months 12] [--ordinary-rows 0]
        [--database-url postgres://postgres@127.0.0.1:5432/cdrbench_part_backfill]

1. Generates N CDRs over the last ``--months`` months (``manage.py generate_cdrs``, CSV
   without a trailer; cached in bench/data/): every month is empty in the fresh database.
2. Re-creates the database, ``manage.py migrate``, then times
   ``manage.py import_cdrs FILE --no-trailer --quiet --no-analyze`` (the whole command, wall
   clock): the backfill path, since every month is empty.
3. In the same database and run: a bare ``COPY ... FROM STDIN (FORMAT csv)`` of the same file
   into a table with the CDR columns and no index, constraint or NOT NULL: the floor the
   backfill is measured against.
4. ``--ordinary-rows M`` (optional): the first M rows imported with ``--no-backfill`` into a
   second fresh database (the row-by-row path into the indexed table), for comparison.

Prints rows/s for each and the load average (the machine is shared) before and after, and
writes bench/results/backfill-latest.json. No Django import: it drives manage.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_SECRET_KEY, DATA, MANAGE, PYTHON, RESULTS, ROOT, log


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DEBUG")}
    env.update(DATABASE_URL=url, SECRET_KEY=BENCH_SECRET_KEY)
    return env


def _recreate(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([PYTHON, MANAGE, "migrate", "-v0"], cwd=ROOT, env=_env(url), check=True)


def _generate(url: str, rows: int, months: int) -> Path:
    path = DATA / f"backfill-{rows}-{months}m.csv"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        log(f"generating {rows:,} CDRs over {months} months -> {path}")
        subprocess.run(
            [
                PYTHON,
                MANAGE,
                "generate_cdrs",
                "--rows",
                str(rows),
                "--seed",
                "3",
                "--days",
                str(months * 30),
                "--format",
                "csv",
                "--no-trailer",
                "-o",
                f"{path}.tmp",
            ],
            cwd=ROOT,
            env=_env(url),
            check=True,
        )
        Path(f"{path}.tmp").rename(path)
    return path


def _import(url: str, path: Path, *extra: str) -> tuple[float, str]:
    command = [PYTHON, MANAGE, "import_cdrs", str(path), "--no-trailer", "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--no-analyze", *extra],
        cwd=ROOT,
        env=_env(url),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return seconds, done.stdout.strip()


def _bare_copy(url: str, path: Path) -> float:
    with path.open(encoding="utf-8") as fh:
        columns = fh.readline().strip().split(",")  # the generator's header: field names
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_floor")
        conn.execute("CREATE TABLE copy_floor AS SELECT * FROM cdrs_cdr WITH NO DATA")
        started = time.perf_counter()
        with conn.cursor() as cur:
            sql = f"COPY copy_floor ({', '.join(columns)}) FROM STDIN (FORMAT csv, HEADER)"
            with cur.copy(sql) as copy, path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    copy.write(chunk)
        seconds = time.perf_counter() - started
        conn.execute("DROP TABLE copy_floor")
    return seconds


def _head(path: Path, rows: int) -> Path:
    out = path.with_name(f"{path.stem}-head{rows}.csv")
    if not out.exists():
        with path.open("rb") as src, out.open("wb") as dst:
            for n, line in enumerate(src):
                if n > rows:
                    break
                dst.write(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--ordinary-rows", type=int, default=0)
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/cdrbench_part_backfill"
    )
    args = parser.parse_args()
    path = _generate(args.database_url, args.rows, args.months)
    result: dict[str, object] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": args.rows,
        "months": args.months,
        "loadavg_before": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    log(f"load average before: {os.getloadavg()}")
    _recreate(args.database_url)
    log("import_cdrs (backfill: every month empty)")
    seconds, output = _import(args.database_url, path)
    result["backfill_seconds"] = round(seconds, 2)
    result["backfill_rows_per_s"] = round(args.rows / seconds)
    result["backfill_output"] = output
    log(f"  {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s end to end\n{output}")
    log("bare COPY into a table without indexes (same file, same database)")
    copy_seconds = _bare_copy(args.database_url, path)
    result["copy_seconds"] = round(copy_seconds, 2)
    result["copy_rows_per_s"] = round(args.rows / copy_seconds)
    log(f"  {copy_seconds:.1f} s, {args.rows / copy_seconds:,.0f} rows/s")
    if args.ordinary_rows:
        head = _head(path, args.ordinary_rows)
        _recreate(args.database_url)
        log(f"import_cdrs --no-backfill of the first {args.ordinary_rows:,} rows")
        seconds, output = _import(args.database_url, head, "--no-backfill")
        result["ordinary_rows"] = args.ordinary_rows
        result["ordinary_rows_per_s"] = round(args.ordinary_rows / seconds)
        log(f"  {seconds:.1f} s, {args.ordinary_rows / seconds:,.0f} rows/s\n{output}")
    result["loadavg_after"] = os.getloadavg()
    log(f"load average after: {os.getloadavg()}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backfill-latest.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
