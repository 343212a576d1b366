"""The floor: the fastest honest Python implementation of the benchmarked read endpoints.

A bare WSGI app (no framework) that answers the requests bench/run.py sends with hand-written
SQL over psycopg 3 (one connection per worker thread, opened after the fork and reused) and
orjson, returning the same JSON as the service. It is the yardstick: the service's req/s is
reported as a fraction of this.

It does the same work the service does; what that is (token check and cache, counts, signed
cursors, id/cost/timestamp formatting) lives in bench/wire.py, shared with the FastAPI peer
(bench/peer_fastapi.py) so both send the same SQL and answer the same bytes. This file is only
the WSGI entry point and the psycopg calls.

Run it like the service:
    DATABASE_URL=... SECRET_KEY=... BIND=127.0.0.1:8902 \
        .venv/bin/gunicorn -c gunicorn.conf.py --chdir bench floor:application
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from urllib.parse import parse_qsl

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: wire

import wire
from wire import HttpError

# --- one connection per worker thread (gthread) or process (sync), opened lazily after the
# fork and reused: the service's Django connections are per thread too -------------------------
_local = threading.local()


def conn() -> psycopg.Connection:
    c = getattr(_local, "conn", None)
    if c is None or c.closed:
        c = _local.conn = psycopg.connect(
            wire.DATABASE_URL, autocommit=True, options="-c TimeZone=UTC"
        )
    return c


_tokens = wire.TokenCache()


def authenticate(environ: dict) -> list:
    prefix, digest = wire.bearer(environ.get("HTTP_AUTHORIZATION", ""))
    token = _tokens.get(digest)
    if token is None:
        token = _tokens.put(digest, conn().execute(wire.TOKEN_SQL, (prefix,)).fetchone())
    touch = wire.check_token(token)
    if touch is not None:
        conn().execute(wire.TOUCH_SQL, touch)
    wire.require_read(token)
    return token


# --- responses --------------------------------------------------------------------------------
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    500: "500 Internal Server Error",
}


def _respond(start_response, status: int, body: bytes, extra=()) -> list[bytes]:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    headers.extend(extra)
    start_response(_STATUS.get(status, f"{status} Error"), headers)
    return [body]


def _error(start_response, status: int, message: str) -> list[bytes]:
    extra = [("WWW-Authenticate", "Bearer")] if status == 401 else []
    return _respond(start_response, status, wire.error_body(status, message), extra)


def list_cdrs(token: list, query: str) -> bytes:
    plan = wire.plan_list(token, parse_qsl(query, keep_blank_values=True))
    db = conn()
    count = None
    if plan.count_sql is not None:
        count = db.execute(plan.count_sql, plan.count_args).fetchone()[0]
    rows = db.execute(plan.page_sql, plan.page_args).fetchall()
    return wire.list_body(plan, count, rows)


def detail_cdr(token: list, public_id: str) -> bytes:
    sql, args = wire.plan_detail(token, public_id)
    return wire.detail_body(token, conn().execute(sql, args).fetchone())


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if environ.get("REQUEST_METHOD") != "GET":
        return _error(start_response, 404, "not found")
    if path == "/healthz":
        return _respond(start_response, 200, b'{"status":"ok"}')
    path = path.rstrip("/")
    if not path.startswith("/api/cdrs"):
        return _error(start_response, 404, "not found")
    try:
        token = authenticate(environ)
        if path == "/api/cdrs":
            body = list_cdrs(token, environ.get("QUERY_STRING", ""))
        elif path.startswith("/api/cdrs/") and "/" not in path[10:]:
            body = detail_cdr(token, path[10:])
        else:
            return _error(start_response, 404, "not found")
    except HttpError as exc:
        return _error(start_response, exc.status, exc.message)
    except psycopg.OperationalError:
        _local.conn = None
        return _error(start_response, 500, "database error")
    return _respond(start_response, 200, body)
