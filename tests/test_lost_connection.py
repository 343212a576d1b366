"""A database connection lost in the middle of an ingest (PostgreSQL ends the backend while
the raw COPY runs): the API answers 503 with the contract body, the importer one line, and
nothing is half-stored, so the same request or command can simply be run again."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psycopg
import pytest

from tests.factories import cdr_payload
from tests.test_ops import gunicorn, manage, production_env

pytestmark = pytest.mark.postgresql


class CopyKiller:
    """While armed, ends (``pg_terminate_backend``) any backend of ``dbname`` that is running
    a COPY FROM STDIN: ingest's raw COPY, the one path outside Django's error wrapping."""

    def __init__(self, database_url: str) -> None:
        server = urlsplit(database_url)._replace(scheme="postgresql")
        self.admin_url = server._replace(path="/postgres").geturl()
        self.dbname = server.path.lstrip("/")
        self.armed, self.stop = threading.Event(), threading.Event()
        self.kills = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            while not self.stop.is_set():
                if not self.armed.wait(0.05):
                    continue
                # Found and signalled in one statement: the COPY is still running when hit.
                hit = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND state = 'active' AND query LIKE 'COPY %%FROM STDIN'",
                    (self.dbname,),
                ).fetchall()
                if hit:
                    self.kills += len(hit)
                    self.armed.clear()
                time.sleep(0.001)

    def __enter__(self) -> CopyKiller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def count_stored(database_url: str, call_ids: list[str] | None = None) -> tuple[int, int]:
    """(rows, distinct call_ids) stored, of ``call_ids`` or of all."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        params: tuple[list[str], ...]
        if call_ids is None:
            query, params = "SELECT count(*), count(DISTINCT call_id) FROM cdrs_cdr", ()
        else:
            query = "SELECT count(*), count(DISTINCT call_id) FROM cdrs_cdr WHERE call_id = ANY(%s)"
            params = (call_ids,)
        row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0], row[1]


@pytest.fixture
def migrated(tmp_path: Path, empty_postgresql: str) -> dict[str, str]:
    env = production_env(tmp_path, DATABASE_URL=empty_postgresql, LOG_LEVEL="WARNING")
    assert manage("migrate", "--no-input", "-v", "0", env=env).returncode == 0
    return env


def test_api_ingest_that_loses_its_connection_is_503_stores_nothing_and_can_be_retried(
    tmp_path, migrated
):
    env = migrated
    # An unlimited token (cdr_ingest's own transaction) and a domain-limited one (a savepoint
    # inside cdr_ingest_for_token's), taking turns.
    tokens = [
        manage("create_token", "pbx", "--scope", "write", *limit, env=env).stdout.split()[-1]
        for limit in ((), ("--domain", "pbx.example.com"))
    ]
    batches = [[cdr_payload() for _ in range(1000)] for _ in range(3)]
    acknowledged: list[int] = []
    with gunicorn(env, tmp_path) as base, CopyKiller(env["DATABASE_URL"]) as killer:
        # New batches (COPY into the staging table), then each again: all duplicates, which
        # also COPYs their keys to look up the stored ids.
        for number, batch in [*enumerate(batches), *enumerate(batches)]:
            body = orjson.dumps({"items": batch})
            for attempt in range(3):
                kills_before = killer.kills
                if attempt == 0:  # the retry is left alone
                    killer.armed.set()
                headers = {"Authorization": f"Bearer {tokens[(number + attempt) % 2]}"}
                status, answer = http_post(f"{base}/api/cdrs", body, headers)
                killer.armed.clear()
                if status == 201:
                    result = orjson.loads(answer)
                    assert result["created"] + result["duplicates"] == 1000
                    acknowledged.append(number)
                    break
                assert status == 503, answer[:2000]
                error = orjson.loads(answer)["errors"][0]
                assert error["code"] == "SERVICE_UNAVAILABLE", error
                assert killer.kills > kills_before
                if number not in acknowledged:  # nothing half-stored
                    call_ids = [item["call_id"] for item in batch]
                    assert count_stored(env["DATABASE_URL"], call_ids) == (0, 0)
            else:
                pytest.fail("a retry after a lost connection did not succeed")
        assert killer.kills >= 3, "hardly a COPY was interrupted: the test proved nothing"
    # Every acknowledged CDR is stored, each once.
    assert count_stored(env["DATABASE_URL"]) == (3000, 3000)
    log = next(tmp_path.glob("gunicorn-*.log")).read_text()
    assert "Traceback" not in log and "psycopg.OperationalError" not in log


def test_import_that_loses_its_connection_says_so_in_one_line_and_can_be_rerun(tmp_path, migrated):
    env = migrated
    path = tmp_path / "cdrs.ndjson"
    path.write_bytes(b"".join(orjson.dumps(cdr_payload()) + b"\n" for _ in range(2000)))
    command = ("import_cdrs", str(path), "--batch-rows", "250", "--quiet", "--no-trailer")
    for mode, left_over in (("--strict", {0}), ("--lenient", set(range(0, 2000, 250)))):
        with CopyKiller(env["DATABASE_URL"]) as killer:
            killer.armed.set()
            done = manage(*command, mode, env=env)
        assert killer.kills == 1, done.stdout + done.stderr
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "database connection lost" in lines[0] and "Re-run" in lines[0]
        # Strict: nothing; lenient: whole committed batches only.
        assert count_stored(env["DATABASE_URL"])[0] in left_over
        again = manage(*command, mode, env=env)
        assert again.returncode == 0, again.stderr
        assert count_stored(env["DATABASE_URL"]) == (2000, 2000)
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("TRUNCATE cdrs_cdr")
