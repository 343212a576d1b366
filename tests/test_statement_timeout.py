"""Statement timeouts under gunicorn on PostgreSQL: a statement that runs too long is
cancelled and answered with the contract's 503; the export has its own, longer limit.

The slow statement is real: another connection holds an ACCESS EXCLUSIVE lock on the CDR
table, so the service's query waits inside PostgreSQL exactly as a long scan would run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import orjson
import psycopg
import pytest

from tests.test_ops import gunicorn, http_get, manage, production_env

pytestmark = pytest.mark.postgresql

API_MS, EXPORT_MS = 300, 3000


@contextmanager
def table_locked(url: str, seconds: float | None = None) -> Iterator[None]:
    """cdrs_cdr locked by another session: until the block ends, or for ``seconds``."""
    conn = psycopg.connect(urlsplit(url)._replace(scheme="postgresql").geturl())
    conn.execute("LOCK TABLE cdrs_cdr IN ACCESS EXCLUSIVE MODE")
    timer = threading.Timer(seconds, conn.rollback) if seconds else None
    if timer:
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.join()
        conn.rollback()
        conn.close()


def timed_get(url: str, headers: dict[str, str]) -> tuple[int, bytes, float]:
    started = time.monotonic()
    status, _, body = http_get(url, headers)
    return status, body, time.monotonic() - started


def assert_timeout_body(status: int, body: bytes) -> None:
    assert status == 503, body
    error = orjson.loads(body)["errors"][0]
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert "next_cursor" in error["message"]
    assert "SELECT" not in body.decode() and "Traceback" not in body.decode()


def test_slow_statements_answer_503_and_the_export_has_its_own_limit(tmp_path, empty_postgresql):
    env = production_env(
        tmp_path,
        DATABASE_URL=empty_postgresql,
        LOG_LEVEL="WARNING",
        CDR_STATEMENT_TIMEOUT_MS=str(API_MS),
        CDR_EXPORT_STATEMENT_TIMEOUT_MS=str(EXPORT_MS),
    )
    assert manage("migrate", "--no-input", "-v", "0", env=env).returncode == 0
    seeded = manage("seed_demo", "--rows", "50", env=env)
    assert seeded.returncode == 0, seeded.stderr
    token = next(w for w in seeded.stdout.split() if w.startswith("cdr_"))
    headers = {"Authorization": f"Bearer {token}"}

    with gunicorn(env, tmp_path) as base:
        list_url, export_url = f"{base}/api/cdrs?top=5", f"{base}/api/cdrs/export"
        assert http_get(list_url, headers)[0] == 200

        with table_locked(empty_postgresql):
            status, body, took = timed_get(list_url, headers)
            assert_timeout_body(status, body)
            assert API_MS / 1000 <= took < 2.5  # cancelled at the API's limit
            # The export waits up to its own limit, then the same answer (not a cut stream).
            status, body, took = timed_get(export_url, headers)
            assert_timeout_body(status, body)
            assert took >= EXPORT_MS / 1000 * 0.95

        with table_locked(empty_postgresql, seconds=1.0):  # longer than the API's limit
            status, body, took = timed_get(export_url, headers)
        assert status == 200 and took >= 0.9
        assert body.endswith(b'{"export_complete":true,"rows":50}\n')

        # The export's limit ended with its transaction: the list is back on the API's.
        with table_locked(empty_postgresql):
            status, body, took = timed_get(list_url, headers)
            assert_timeout_body(status, body)
            assert took < 2.5
        status, body, _ = timed_get(list_url, headers)  # and the worker is fine
        assert status == 200 and len(orjson.loads(body)["items"]) == 5
