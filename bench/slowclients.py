"""Slow clients vs gunicorn worker models: who still gets answered, and at what read speed.

For each candidate worker setting, the service is started as bin/run starts it (gunicorn
with gunicorn.conf.py, 2 workers) against a PostgreSQL database this script fills with
``seed_demo`` CDRs. Then:

1. wrk -t2 -c8 for a few seconds on GET /api/cdrs/{id} (read throughput, no slow clients);
2. 8 clients trickle request headers (a line every 0.3 s) and 4 clients ask for the whole
   export and stop reading; meanwhile /healthz and a detail request are timed one after
   the other (``--samples`` each, 2 s timeout; a timeout counts as 2,000 ms).

    .venv/bin/python bench/slowclients.py [--candidates sync,gthread-stock,threads-16,threads-32]

Loopback only, bounded (a few seconds per candidate); prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-only-secret-key-not-for-production-0123456789abcdefghijklmnop"
THREAD_WORKER = "cdrservice.gunicorn_worker.ThreadWorker"
CANDIDATES = {
    "sync": {"GUNICORN_WORKER_CLASS": "sync", "GUNICORN_THREADS": "1"},
    "gthread-stock": {"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "32"},
    "threads-8": {"GUNICORN_WORKER_CLASS": THREAD_WORKER, "GUNICORN_THREADS": "8"},
    "threads-16": {"GUNICORN_WORKER_CLASS": THREAD_WORKER, "GUNICORN_THREADS": "16"},
    "threads-32": {"GUNICORN_WORKER_CLASS": THREAD_WORKER, "GUNICORN_THREADS": "32"},
    # The default: an event loop per worker, 32 threads for long requests.
    "loop": {"GUNICORN_WORKER_CLASS": "cdrservice.gunicorn_loop.LoopWorker"},
}
TIMEOUT = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(url: str, rows: int, env: dict[str, str]) -> str:
    """A fresh database at ``url`` with ``rows`` demo CDRs; returns a token with every scope."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--no-input", "-v0"], env=env, check=True, cwd=ROOT)
    out = subprocess.run(
        [*manage, "seed_demo", "--rows", str(rows)],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    return next(w for w in out.split() if w.startswith("cdr_"))


@contextlib.contextmanager
def service(env: dict[str, str]) -> Iterator[int]:
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "cdrservice.wsgi"],
        cwd=ROOT,
        env={**env, "BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while get(port, "/healthz", "")[0] != 200:
            if time.monotonic() > deadline or process.poll() is not None:
                log.seek(0)
                raise RuntimeError(log.read().decode()[-2000:])
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def get(port: int, path: str, token: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - started
    except OSError:
        return 0, b"", TIMEOUT
    finally:
        conn.close()


def trickle(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        n = 0
        while not stop.wait(0.3):
            n += 1
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Slow-%d: 1\r\n" % n)


def stalled_export(port: int, token: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /api/cdrs/export?format=ndjson HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    return sock


def sample(port: int, path: str, token: str, count: int) -> list[tuple[int, bytes, float]]:
    """``count`` timed GETs one after the other; after 3 timeouts in a row, the rest count as
    timeouts too (keeps a run against a stuck server short)."""
    results: list[tuple[int, bytes, float]] = []
    while len(results) < count:
        if len(results) >= 3 and all(s == 0 for s, _, _ in results[-3:]):
            results.append((0, b"", TIMEOUT))
            continue
        results.append(get(port, path, token))
    return results


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    timeouts = sum(1 for v in values if v >= TIMEOUT)
    return f"{p50:,.1f} / {p99:,.1f} ms" + (f" ({timeouts} timeouts)" if timeouts else "")


def wrk(port: int, path: str, token: str, seconds: int) -> str:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c8",
            f"-d{seconds}s",
            "-H",
            f"Authorization: Bearer {token}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return f"{float(found.group(1)):,.0f}" if found else "?"


def run_candidate(env: dict[str, str], token: str, samples: int, wrk_seconds: int) -> list[str]:
    with service(env) as port:
        _, body, _ = get(port, "/api/cdrs?top=1", token)
        cdr_id = re.search(rb'"id":"([^"]+)"', body).group(1).decode()  # type: ignore[union-attr]
        detail = f"/api/cdrs/{cdr_id}"
        wrk(port, detail, token, 1)  # warm-up: connections, caches, threads
        throughput = wrk(port, detail, token, wrk_seconds)
        stop = threading.Event()
        tricklers = [threading.Thread(target=trickle, args=(port, stop)) for _ in range(8)]
        for thread in tricklers:
            thread.start()
        exports = [stalled_export(port, token) for _ in range(4)]
        try:
            time.sleep(1.5)
            healthz = sample(port, "/healthz", token, samples)
            details = sample(port, detail, token, samples)
        finally:
            stop.set()
            for sock in exports:
                sock.close()
            for thread in tricklers:
                thread.join()
    failed = sum(1 for s, _, _ in healthz + details if s != 200)
    return [
        percentiles([t for _, _, t in healthz]),
        percentiles([t for _, _, t in details]),
        str(failed),
        throughput,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/cdrbench_slowclients"
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--wrk-seconds", type=int, default=3)
    args = parser.parse_args()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DEBUG", "DJANGO_SETTINGS_MODULE")},
        "DATABASE_URL": args.database_url,
        "SECRET_KEY": SECRET,
        "LOG_LEVEL": "WARNING",
        "CDR_METRICS": "false",
        # One token drives every candidate's load: a rate no run reaches (as bench/run.py),
        # or the later candidates are measured answering 429s.
        "CDR_TOKEN_RATE": "100000000/min",
    }
    token = prepare(args.database_url, args.rows, env)
    print(
        "| candidate (2 workers) | /healthz p50 / p99 | detail p50 / p99 | non-200 "
        "| detail req/s (wrk -t2 -c8, no slow clients) |"
    )
    print("|---|---|---|---:|---:|")
    for name in args.candidates.split(","):
        row = run_candidate({**env, **CANDIDATES[name]}, token, args.samples, args.wrk_seconds)
        print(f"| {name} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
