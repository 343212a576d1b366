"""A database outage is a 503 with the contract's body, never a 500 or a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psycopg
import pytest

from tests.test_ops import gunicorn, http_get, manage, production_env

ROOT = Path(__file__).resolve().parents[2]

# Runs in a child process whose DATABASE_URL points at a port where nothing listens: the
# real connection attempt fails, exactly as when PostgreSQL is down.
SCRIPT = """
import json, django
django.setup()
from django.test import Client
c = Client(raise_request_exception=False)
token = "Bearer cdr_abcdefghij_" + "x" * 40
out = {}
for path in ("/api/cdrs", "/api/cdrs/NzAw", "/api/cdrs/export", "/readyz", "/healthz"):
    r = c.get(path, HTTP_AUTHORIZATION=token)
    out[path] = [r.status_code, r.content.decode()]
r = c.post("/api/cdrs", "{}", content_type="application/json", HTTP_AUTHORIZATION=token)
out["POST"] = [r.status_code, r.content.decode()]
print(json.dumps(out))
"""


def test_api_answers_503_while_the_database_is_down():
    env = dict(os.environ)
    env.update(
        DATABASE_URL="postgres://postgres@127.0.0.1:1/cdrs",
        DJANGO_SETTINGS_MODULE="tests.settings",
        LOG_LEVEL="CRITICAL",
        ALLOWED_HOSTS="testserver",
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    results = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert results.pop("/healthz")[0] == 200  # the process itself is fine
    for path, (status, body) in results.items():
        assert status == 503, (path, status, body)
        error = json.loads(body)["errors"][0]
        assert error["code"] == "SERVICE_UNAVAILABLE", path
        assert "Traceback" not in body and "127.0.0.1:1" not in body


@pytest.mark.postgresql
def test_a_worker_whose_connection_was_killed_reconnects_without_an_error(
    tmp_path, empty_postgresql
):
    """The server ending idle connections (restart, pg_terminate_backend, an idle timeout)
    costs no client a 503: the next request notices the closed socket and reconnects."""
    # One thread: every request on the same persistent connection, so that the test can
    # tell a reuse from a reconnect (each thread of a threaded worker has its own).
    env = production_env(
        tmp_path, DATABASE_URL=empty_postgresql, LOG_LEVEL="WARNING", GUNICORN_THREADS="1"
    )
    assert manage("migrate", "--no-input", "-v", "0", env=env).returncode == 0
    seeded = manage("seed_demo", "--rows", "20", env=env)
    assert seeded.returncode == 0, seeded.stderr
    token = next(w for w in seeded.stdout.split() if w.startswith("cdr_"))
    headers = {"Authorization": f"Bearer {token}"}
    name = urlsplit(empty_postgresql).path.lstrip("/")
    admin_url = urlsplit(empty_postgresql)._replace(scheme="postgresql", path="/postgres").geturl()

    def worker_backends(conn: psycopg.Connection) -> list[tuple[int, object]]:
        return conn.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE datname = %s ORDER BY pid",
            (name,),
        ).fetchall()

    with gunicorn(env, tmp_path) as base, psycopg.connect(admin_url, autocommit=True) as admin:
        for _ in range(3):
            status, _, body = http_get(f"{base}/api/cdrs?top=5", headers)
            assert status == 200, body
        before = worker_backends(admin)
        assert len(before) == 1  # one worker, one persistent connection
        for _ in range(3):
            assert http_get(f"{base}/api/cdrs?top=5", headers)[0] == 200
        assert worker_backends(admin) == before  # reused while healthy: no reconnects

        admin.execute("SELECT pg_terminate_backend(%s)", (before[0][0],))
        deadline = time.monotonic() + 10
        while worker_backends(admin) == before and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server has closed it

        status, _, body = http_get(f"{base}/api/cdrs?top=5", headers)
        assert status == 200, body
        assert len(orjson.loads(body)["items"]) == 5
        after = worker_backends(admin)
        assert len(after) == 1 and after != before  # a new connection took over
