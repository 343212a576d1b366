"""An export the database drops mid-stream never looks complete, even over HTTP/1.0.

Under gunicorn on PostgreSQL, the export's database session is terminated while the client
is still reading: the stream must end without the trailer (HTTP/1.0, where the end of the
body is just the connection closing), or with a broken chunked encoding (HTTP/1.1), and
import_cdrs must refuse what arrived.
"""

from __future__ import annotations

import http.client
import socket
import time
from typing import cast
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.test_ops import gunicorn, http_get, manage, production_env

pytestmark = pytest.mark.postgresql

ROWS = 20_000  # about 13 MB of NDJSON: far more than the socket buffers hold


def terminate_export_session(admin: psycopg.Connection, database: str) -> None:
    """End the worker's session while it is inside the export's transaction."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND xact_start IS NOT NULL"
            " AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
        if pids:
            for (pid,) in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            return
        time.sleep(0.05)
    raise AssertionError("no export transaction to terminate")


def read_http10_export(base: str, token: str, admin: psycopg.Connection, db: str) -> bytes:
    """The body of an HTTP/1.0 export whose database session dies after the first 64 kB."""
    url = urlsplit(base)
    # gunicorn() yields http://127.0.0.1:<port>: both parts are there.
    with socket.create_connection((url.hostname, cast(int, url.port)), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # a slow reader
        sock.sendall(
            b"GET /api/cdrs/export?format=ndjson HTTP/1.0\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
        )
        received = bytearray()
        while len(received) < 64 * 1024:
            received += sock.recv(65536)
        terminate_export_session(admin, db)
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")), head[:200]
    assert b"chunked" not in head.lower()  # the end of the body is the connection closing
    return body


def test_an_export_cut_by_the_database_ends_without_a_trailer(tmp_path, empty_postgresql):
    env = production_env(tmp_path, DATABASE_URL=empty_postgresql, LOG_LEVEL="CRITICAL")
    assert manage("migrate", "--no-input", "-v", "0", env=env).returncode == 0
    seeded = manage("seed_demo", "--rows", str(ROWS), env=env)
    assert seeded.returncode == 0, seeded.stderr
    token = next(w for w in seeded.stdout.split() if w.startswith("cdr_"))
    db = urlsplit(empty_postgresql).path.lstrip("/")
    admin_url = urlsplit(empty_postgresql)._replace(scheme="postgresql", path="/postgres").geturl()

    with gunicorn(env, tmp_path) as base, psycopg.connect(admin_url, autocommit=True) as admin:
        body = read_http10_export(base, token, admin, db)
        lines = body.splitlines()
        assert 0 < len(lines) < ROWS
        assert b"export_complete" not in body  # nothing says it is complete

        # HTTP/1.1: the chunked body stops without its last chunk, which clients report.
        conn = http.client.HTTPConnection(
            cast(str, urlsplit(base).hostname), urlsplit(base).port, timeout=30
        )
        conn.request("GET", "/api/cdrs/export", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
        response.read(64 * 1024)
        terminate_export_session(admin, db)
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        assert b"export_complete" not in cut.value.partial
        conn.close()

        # The worker reconnects; a whole export ends with its trailer.
        status, _, whole = http_get(
            f"{base}/api/cdrs/export?filter=duration%20eq%200",
            {"Authorization": f"Bearer {token}"},
        )
        assert status == 200 and b'{"export_complete":true,"rows":' in whole.splitlines()[-1]

    # What the HTTP/1.0 client got is refused by the importer.
    path = tmp_path / "cut.ndjson"
    path.write_bytes(body)
    refused = manage("import_cdrs", str(path), "--quiet", env=env)
    assert refused.returncode == 1 and "does not end with an export trailer" in refused.stderr
