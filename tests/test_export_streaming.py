"""A long export streams to the end under gunicorn as deployed, even to a slow reader."""

from __future__ import annotations

import http.client
import time
from typing import cast
from urllib.parse import urlsplit

import pytest

from tests.test_ops import gunicorn, manage, production_env

ROWS = 20_000


@pytest.mark.parametrize(
    "database",
    [None, pytest.param("empty_postgresql", marks=pytest.mark.postgresql)],
    ids=["sqlite", "postgresql"],
)
def test_slow_client_gets_the_whole_export_past_the_worker_timeout(request, tmp_path, database):
    env = production_env(tmp_path, GUNICORN_TIMEOUT="2", LOG_LEVEL="WARNING")
    if database:
        env["DATABASE_URL"] = request.getfixturevalue(database)
    assert manage("migrate", "--no-input", env=env).returncode == 0
    seeded = manage("seed_demo", "--rows", str(ROWS), env=env)
    assert seeded.returncode == 0, seeded.stderr
    token = next(w for w in seeded.stdout.split() if w.startswith("cdr_"))
    with gunicorn(env, tmp_path) as base:
        url = urlsplit(base)
        # gunicorn() yields http://127.0.0.1:<port>: both parts are there.
        conn = http.client.HTTPConnection(cast(str, url.hostname), url.port, timeout=30)
        conn.request(
            "GET", "/api/cdrs/export?format=ndjson", headers={"Authorization": f"Bearer {token}"}
        )
        response = conn.getresponse()
        assert response.status == 200
        started, body = time.monotonic(), bytearray()
        while chunk := response.read(64 * 1024):  # a slow consumer: ~1.3 MB/s
            body += chunk
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        conn.close()
    assert elapsed > 4  # well past the 2 s worker timeout
    assert body.count(b"\n") == ROWS + 1  # nothing cut off: every row, then the trailer
    assert body.endswith(b'{"export_complete":true,"rows":%d}\n' % ROWS)
