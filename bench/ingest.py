"""The ingest/export benchmark, side by side on generated CDRs (default 1,000,000).

    .venv/bin/python bench/ingest.py [--rows N] [--post-rows N] [--post-clients C]

(a) manage.py import_cdrs of the generated CSV into an empty database, vs a bare COPY of the
    same CSV into a plain table with the same columns, constraints and indexes;
(b) re-import of the same file (every row a duplicate);
(d) GET /api/cdrs/export?format=ndjson of every row over HTTP: rows/s and the serving
    worker's peak RSS;
(c) POST /api/cdrs in batches of 1000 from several concurrent clients (2 gunicorn workers).
(d runs before c so the export streams exactly the imported rows.)

The database (default cdrbench_ingest) is dropped and re-created on every run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: cdrs.fields

import common
from common import RESULTS, Server, log

from cdrs.fields import CDR_FIELDS, Kind

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/cdrbench_ingest"
# Text columns: FORCE_NOT_NULL for them, so an empty CSV cell is '' as the importer reads it.
STRING_COLS = tuple(f.name for f in CDR_FIELDS if f.kind in (Kind.STRING, Kind.ENUM))


def bare_copy(url: str, path: Path) -> float:
    """COPY the CSV into a plain table with cdrs_cdr's columns, constraints and indexes."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    with common.pg_connect(url) as c:
        c.execute("DROP TABLE IF EXISTS bench_bare_cdr")
        c.execute("DROP SEQUENCE IF EXISTS bench_bare_cdr_seq")
        c.execute("CREATE SEQUENCE bench_bare_cdr_seq")
        c.execute(
            "CREATE TABLE bench_bare_cdr (LIKE cdrs_cdr INCLUDING DEFAULTS INCLUDING "
            "CONSTRAINTS INCLUDING INDEXES)"
        )
        # The CSV has neither id nor natural_key (import_cdrs computes them): defaults here.
        c.execute("ALTER TABLE bench_bare_cdr ALTER id SET DEFAULT nextval('bench_bare_cdr_seq')")
        c.execute("ALTER TABLE bench_bare_cdr ALTER natural_key SET DEFAULT gen_random_uuid()")
        indexes = c.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'bench_bare_cdr' ORDER BY 1"
        ).fetchall()
        log(f"bare table: {len(indexes)} indexes, as cdrs_cdr")
        c.execute("CHECKPOINT")
        force = ", ".join(h for h in header if h in STRING_COLS)
        started = time.monotonic()
        with (
            c.transaction(),
            c.cursor() as cur,
            cur.copy(
                f"COPY bench_bare_cdr ({', '.join(header)}) FROM STDIN "
                f"(FORMAT csv, HEADER true, FORCE_NOT_NULL ({force}))"
            ) as copy,
            open(path, "rb") as f,
        ):
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        seconds = time.monotonic() - started
        n = c.execute("SELECT count(*) FROM bench_bare_cdr").fetchone()[0]
        c.execute("DROP TABLE bench_bare_cdr")
        c.execute("DROP SEQUENCE bench_bare_cdr_seq")
    log(f"bare COPY: {n:,} rows in {seconds:.1f} s")
    return seconds


def timed_import(url: str, path: Path, env: dict[str, str]) -> tuple[float, str]:
    with common.pg_connect(url) as c:
        c.execute("CHECKPOINT")
    started = time.monotonic()
    out = common.manage(["import_cdrs", str(path), "--lenient", "--no-trailer", "--quiet"], env)
    seconds = time.monotonic() - started
    log(out.strip())
    return seconds, out.strip()


def export(server: Server, token: str) -> dict:
    """Stream the whole NDJSON export; rows/s and the workers' peak RSS (sampled 5×/s)."""
    workers = server.workers()
    baseline = {p: common.rss_kb(p) or 0 for p in workers}
    sampler = common.RssSampler(server.pid, interval=0.2)
    sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    started = time.monotonic()
    conn.request(
        "GET", "/api/cdrs/export?format=ndjson", headers={"Authorization": f"Bearer {token}"}
    )
    resp = conn.getresponse()
    first_byte = time.monotonic() - started
    lines = 0
    size = 0
    tail = b""
    while chunk := resp.read(1 << 20):
        size += len(chunk)
        lines += chunk.count(b"\n")
        tail = chunk[-2000:]
    seconds = time.monotonic() - started
    conn.close()
    sampler.stop()
    status = resp.status
    served_by = max(sampler.max_by_pid, key=lambda p: sampler.max_by_pid[p] - baseline.get(p, 0))
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    trailer = json.loads(last)  # the stream ended with the export's trailer
    assert trailer == {"export_complete": True, "rows": lines - 1}, trailer
    return {
        "status": status,
        "rows": lines - 1,
        "bytes": size,
        "seconds": seconds,
        "first_byte_s": first_byte,
        "peak_rss_kb": sampler.max_by_pid.get(served_by, 0),
        "baseline_rss_kb": baseline.get(served_by, 0),
    }


def post_ingest(server: Server, token: str, path: Path, clients: int, batch: int) -> dict:
    """POST {"items": [...]} batches from ``clients`` threads; every batch distinct."""
    bodies: queue.Queue[bytes] = queue.Queue()
    with open(path, "rb") as f:
        lines = [line.rstrip(b"\n") for line in f if line.strip()]
    for i in range(0, len(lines), batch):
        bodies.put(b'{"items":[' + b",".join(lines[i : i + batch]) + b"]}")
    total_batches = bodies.qsize()
    created = 0
    duplicates = 0
    failures: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def client() -> None:
        nonlocal created, duplicates
        while True:
            try:
                body = bodies.get_nowait()
            except queue.Empty:
                return
            t0 = time.monotonic()
            # A new connection per request (sync workers close it after each response).
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
            conn.request("POST", "/api/cdrs", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            dt = time.monotonic() - t0
            with lock:
                latencies.append(dt)
                if resp.status != 201:
                    failures.append(f"{resp.status} {data[:200]!r}")
                else:
                    answer = json.loads(data)
                    created += answer["created"]
                    duplicates += answer["duplicates"]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    latencies.sort()
    return {
        "batches": total_batches,
        "rows": len(lines),
        "created": created,
        "duplicates": duplicates,
        "failures": len(failures),
        "first_failure": failures[0] if failures else "",
        "seconds": seconds,
        "batch_p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else 0,
        "batch_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--post-rows", type=int, default=200_000, help="CDRs to POST (seed 2)")
    p.add_argument("--post-clients", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    p.add_argument(
        "--database-url", default=os.environ.get("BENCH_INGEST_DATABASE_URL", DEFAULT_DB)
    )
    p.add_argument("--port", type=int, default=8911)
    p.add_argument("--output", default=str(RESULTS / "ingest-latest.md"))
    args = p.parse_args()

    url = args.database_url
    env = common.service_env(url)
    csv_path = common.generated(args.rows, env, seed=1, fmt="csv")
    ndjson_path = common.generated(args.post_rows, env, seed=2, fmt="ndjson")
    log(f"re-creating the database {common.db_name(url)}")
    common.ensure_database(url, recreate=True)
    common.manage(["migrate", "--no-input", "-v", "0"], env)
    meta = {
        "date": common.now_utc(),
        "command": common.command_line(),
        "machine": common.machine_info(),
        "revision": common.git_revision(),
        "gunicorn": common.gunicorn_settings(env, args.workers),
        "versions": common.versions(url),
        "loadavg_start": os.getloadavg(),
    }

    log(f"(a) bare COPY of {csv_path.name} into a plain table with the same indexes")
    copy_s = bare_copy(url, csv_path)
    log(f"(a) import_cdrs {csv_path.name} into the empty cdrs_cdr")
    import_s, import_out = timed_import(url, csv_path, env)
    log("(b) import_cdrs of the same file again (all duplicates)")
    reimport_s, reimport_out = timed_import(url, csv_path, env)
    with common.pg_connect(url) as c:
        stored = c.execute("SELECT count(*) FROM cdrs_cdr").fetchone()[0]
        c.execute("VACUUM ANALYZE")
    if stored != args.rows:
        log(f"! expected {args.rows:,} rows after the imports, found {stored:,}")

    token = common.mint_token(env)
    server = Server(
        "ingest-service", "cdrservice.wsgi", common.free_port(args.port), env, args.workers
    )
    try:
        log("(d) GET /api/cdrs/export?format=ndjson")
        exp = export(server, token)
        log(
            f"    {exp['rows']:,} rows, {exp['bytes'] / 1e6:,.0f} MB in {exp['seconds']:.1f} s, "
            f"peak worker RSS {exp['peak_rss_kb'] / 1024:,.0f} MB"
        )
        log(
            f"(c) POST /api/cdrs: {args.post_rows:,} CDRs in batches of {args.batch}, "
            f"{args.post_clients} concurrent clients"
        )
        post = post_ingest(server, token, ndjson_path, args.post_clients, args.batch)
        log(
            f"    {post['created']:,} created, {post['duplicates']:,} duplicates, "
            f"{post['failures']} failed batches in {post['seconds']:.1f} s"
        )
        if post["first_failure"]:
            log(f"    first failure: {post['first_failure']}")
    finally:
        server.stop()
    meta["loadavg_end"] = os.getloadavg()

    rows = args.rows
    m_import = re.search(r"([\d,]+) rows/s", import_out)
    rate = {
        "copy": rows / copy_s,
        "import": rows / import_s,
        "reimport": rows / reimport_s,
        "post": post["created"] / post["seconds"] if post["seconds"] else 0,
        "export": exp["rows"] / exp["seconds"] if exp["seconds"] else 0,
    }
    ratio = rate["import"] / rate["copy"]
    rss_mb = exp["peak_rss_kb"] / 1024
    targets = [
        ("import ≥ 50,000 rows/s", f"{rate['import']:,.0f} rows/s", rate["import"] >= 50_000),
        ("import ≥ 60% of bare COPY", f"{ratio:.1%}", ratio >= 0.60),
        (
            "re-import ≥ 50,000 rows/s",
            f"{rate['reimport']:,.0f} rows/s",
            rate["reimport"] >= 50_000,
        ),
        (
            "POST ingest ≥ 5,000 CDRs/s",
            f"{rate['post']:,.0f} CDRs/s",
            rate["post"] >= 5_000 and post["failures"] == 0,
        ),
        ("export ≥ 50,000 rows/s", f"{rate['export']:,.0f} rows/s", rate["export"] >= 50_000),
        ("export worker RSS < 200 MB", f"{rss_mb:,.0f} MB", rss_mb < 200),
    ]
    lines = [
        "# cdrservice ingest / export benchmark",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- code: commit {meta['revision']}",
        f"- machine: {meta['machine']['nproc']} CPUs ({meta['machine']['cpu']}), "
        f"{meta['machine']['memory']} RAM; load average at start "
        f"{meta['loadavg_start'][0]:.2f}, at end {meta['loadavg_end'][0]:.2f}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- data: `generate_cdrs --rows {rows} --seed 1 --format csv` "
        f"({csv_path.stat().st_size / 1e6:,.0f} MB); POST: `generate_cdrs --rows "
        f"{args.post_rows} --seed 2 --format ndjson`",
        f"- server: gunicorn -c gunicorn.conf.py cdrservice.wsgi: {meta['gunicorn']}",
        "",
        "| measurement | rows | seconds | rows/s | note |",
        "|---|---:|---:|---:|---|",
        f"| (a) bare `COPY ... CSV` into a plain table, same columns and indexes | {rows:,} | "
        f"{copy_s:,.1f} | {rate['copy']:,.0f} | baseline |",
        f"| (a) `import_cdrs FILE --lenient` into an empty DB | {rows:,} | {import_s:,.1f} | "
        f"{rate['import']:,.0f} | {ratio:.1%} of bare COPY; own summary: "
        f"{m_import.group(1) if m_import else '?'} rows/s (without process start) |",
        f"| (b) re-import of the same file (all duplicates) | {rows:,} | {reimport_s:,.1f} | "
        f"{rate['reimport']:,.0f} | |",
        f"| (c) POST /api/cdrs, batches of {args.batch}, {args.post_clients} clients | "
        f"{post['created']:,} | {post['seconds']:,.1f} | {rate['post']:,.0f} | batch p50 "
        f"{post['batch_p50_ms']:,.0f} ms, p99 {post['batch_p99_ms']:,.0f} ms, "
        f"{post['failures']} failed |",
        f"| (d) GET /api/cdrs/export?format=ndjson | {exp['rows']:,} | {exp['seconds']:,.1f} | "
        f"{rate['export']:,.0f} | {exp['bytes'] / 1e6:,.0f} MB, first byte after "
        f"{exp['first_byte_s']:.2f} s, worker RSS {exp['baseline_rss_kb'] / 1024:,.0f} → "
        f"peak {rss_mb:,.0f} MB |",
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---:|---|",
    ]
    lines += [f"| {t} | {m} | {'PASS' if ok else '**FAIL**'} |" for t, m, ok in targets]
    lines.append("")
    report = "\n".join(lines)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "meta": meta,
                "copy_s": copy_s,
                "import_s": import_s,
                "reimport_s": reimport_s,
                "import_out": import_out,
                "reimport_out": reimport_out,
                "export": exp,
                "post": post,
                "rates": rate,
                "targets": targets,
            },
            indent=1,
            default=str,
        )
    )
    print()
    print(report)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
