"""Soak: mixed traffic with retrying ingest while workers are killed and connections cut.

Starts the service as bin/run does (gunicorn -c gunicorn.conf.py cdrservice.wsgi, 2 workers)
against a PostgreSQL database it (re)creates and seeds, then for ``--seconds`` runs:

- readers: list pages (with filters), detail requests and small exports (one day of CDRs);
- writers: POST batches of new CDRs; a batch that gets no 201 (503, 5xx, reset, timeout) is
  sent again, unchanged, until it gets one; some acknowledged batches are sent once more on
  purpose: the service must report them as duplicates and store nothing;
- faults at set fractions of the run (``--faults``): ``kill`` SIGKILLs one gunicorn worker,
  ``pgterm`` terminates every database connection of the service (pg_terminate_backend).

At the end it checks the database and prints: acknowledged CDRs missing (must be 0), CDRs
stored twice (must be 0), 5xx answers other than 503 (must be 0); exit status 1 otherwise.
Loopback only.

    .venv/bin/python bench/soak.py --seconds 600
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
SECRET = "soak-only-secret-key-not-for-production-0123456789abcdefghijklmnopq"
BATCH = 50


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.acknowledged: set[str] = set()  # call_ids of CDRs in batches answered 201
        self.resent_created = 0  # CDRs a deliberate re-send of an acknowledged batch stored again

    def count(self, kind: str, status: int | str) -> None:
        with self.lock:
            self.statuses[f"{kind} {status}"] += 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(
    port: int, method: str, path: str, token: str, body: bytes | None = None, timeout: float = 30
) -> tuple[int | str, bytes]:
    """(status, body); on a transport failure (reset, timeout) (exception name, b"")."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__, b""
    finally:
        conn.close()


def new_cdr(rng: random.Random) -> dict:
    started = datetime(2026, 6, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(86400 * 30))

    def ts(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "call_id": f"soak-{uuid.uuid4()}@pbx.example.com",
        "caller": str(rng.randrange(100, 500)),
        "caller_domain": "soak.example.com",
        "callee": str(rng.randrange(100, 500)),
        "callee_domain": "soak.example.com",
        "started_at": ts(started),
        "rang_at": ts(started + timedelta(seconds=1)),
        "answered_at": ts(started + timedelta(seconds=4)),
        "ended_at": ts(started + timedelta(seconds=64)),
        "direction": "EXTENSION_CALL",
        "end_reason": "CALLER_DISCONNECTED",
        "status_code": 200,
        "duration": 60,
    }


def writer(port: int, token: str, tally: Tally, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        batch = [new_cdr(rng) for _ in range(BATCH)]
        body = orjson.dumps({"items": batch})
        for attempt in range(60):  # the same batch until it is acknowledged
            status, answer = request(port, "POST", "/api/cdrs", token, body)
            tally.count("POST", status)
            if status == 201:
                with tally.lock:
                    tally.acknowledged.update(cdr["call_id"] for cdr in batch)
                break
            time.sleep(min(0.2 * (attempt + 1), 2))
        else:
            continue
        if rng.random() < 0.2:  # a client that did not see the 201 would send it again
            status, answer = request(port, "POST", "/api/cdrs", token, body)
            tally.count("POST-resend", status)
            if status == 201:
                with tally.lock:
                    tally.resent_created += orjson.loads(answer)["created"]


def reader(port: int, token: str, ids: list[str], tally: Tally, stop: threading.Event) -> None:
    rng = random.Random()
    day = datetime(2025, 1, 1, tzinfo=UTC)
    while not stop.is_set():
        kind = rng.choices(("list", "detail", "export"), weights=(5, 8, 1))[0]
        if kind == "list":
            path = rng.choice(
                [
                    "/api/cdrs?top=50",
                    "/api/cdrs?top=20&filter=duration%20gt%2060&count=false",
                    "/api/cdrs?top=20&direction=INBOUND_CALL",
                ]
            )
        elif kind == "detail":
            path = f"/api/cdrs/{rng.choice(ids)}"
        else:
            start = day + timedelta(days=rng.randrange(300))
            path = (
                "/api/cdrs/export?format=ndjson"
                f"&started_after={start:%Y-%m-%dT%H:%M:%SZ}"
                f"&started_before={start + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"
            )
        status, _ = request(port, "GET", path, token)
        tally.count(kind, status)


def worker_pids(arbiter: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(arbiter)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/cdrsoak")
    parser.add_argument("--rows", type=int, default=5000, help="CDRs seeded for the readers")
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument(
        "--faults",
        default="0.2:kill,0.35:pgterm,0.5:kill,0.65:pgterm,0.8:kill,0.9:pgterm",
        help="fraction:kind,... with kind kill (SIGKILL a worker) or pgterm",
    )
    args = parser.parse_args()
    if args.seconds > 900:
        parser.error("--seconds: at most 900 (a soak is bounded)")
    url = args.database_url
    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DEBUG", "DJANGO_SETTINGS_MODULE")},
        "DATABASE_URL": url,
        "SECRET_KEY": SECRET,
        "LOG_LEVEL": "WARNING",
        "CDR_METRICS": "false",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--no-input", "-v0"], env=env, check=True, cwd=ROOT)
    seeded = subprocess.run(
        [*manage, "seed_demo", "--rows", str(args.rows)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    token = next(w for w in seeded.split() if w.startswith("cdr_"))

    port = free_port()
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept after the run, closed below
        prefix="soak-gunicorn-", suffix=".log", delete=False
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "cdrservice.wsgi"],
        cwd=ROOT,
        env={**env, "BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    tally = Tally()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        deadline = time.monotonic() + 30
        while request(port, "GET", "/healthz", "")[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not start; see {log.name}")
            time.sleep(0.2)
        _, body = request(port, "GET", "/api/cdrs?top=200&count=false", token)
        ids = [item["id"] for item in orjson.loads(body)["items"]]
        threads = [
            threading.Thread(target=reader, args=(port, token, ids, tally, stop))
            for _ in range(args.readers)
        ] + [
            threading.Thread(target=writer, args=(port, token, tally, stop, n))
            for n in range(args.writers)
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        faults = sorted(
            (float(at) * args.seconds, kind)
            for at, kind in (item.split(":") for item in args.faults.split(","))
        )
        for at, kind in faults:
            time.sleep(max(0.0, started + at - time.monotonic()))
            if kind == "kill":
                victim = random.choice(worker_pids(server.pid))
                os.kill(victim, signal.SIGKILL)
                print(f"[{at:6.1f} s] SIGKILL gunicorn worker {victim}", flush=True)
            else:
                with psycopg.connect(admin_url, autocommit=True) as conn:
                    cut = conn.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    ).fetchone()
                print(
                    f"[{at:6.1f} s] pg_terminate_backend: {cut[0] if cut else 0} connections",
                    flush=True,
                )
        time.sleep(max(0.0, started + args.seconds - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=40)
        if server.poll() is None:
            server.kill()
        log.close()

    with psycopg.connect(url) as conn:
        stored = dict(
            conn.execute(
                "SELECT call_id, count(*) FROM cdrs_cdr "
                "WHERE call_id LIKE 'soak-%%' GROUP BY call_id"
            ).fetchall()
        )
    missing = sum(1 for call_id in tally.acknowledged if call_id not in stored)
    twice = sum(count - 1 for count in stored.values() if count > 1)
    bad_5xx = sum(
        n
        for key, n in tally.statuses.items()
        if key.split()[1].isdigit() and int(key.split()[1]) >= 500 and key.split()[1] != "503"
    )
    print(f"requests by kind and status: {dict(sorted(tally.statuses.items()))}")
    print(f"acknowledged CDRs: {len(tally.acknowledged)}; stored soak CDRs: {len(stored)}")
    print(f"re-sent acknowledged batches that stored anything: {tally.resent_created}")
    print(f"acknowledged CDRs missing: {missing}")
    print(f"stored twice: {twice}")
    print(f"non-503 5xx: {bad_5xx}")
    print(f"gunicorn log: {log.name}")
    return 0 if missing == twice == bad_5xx == tally.resent_created == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
