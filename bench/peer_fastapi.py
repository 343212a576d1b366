"""The peer: the benchmarked read endpoints as a hand-written FastAPI + asyncpg app.

What a good engineer would write to serve these two endpoints fast with the usual async
stack, for bench/run.py to measure the service against (issue #16):

* FastAPI routes, the token check as a dependency (``Depends``), errors through an exception
  handler in the service's PortSIP error shape;
* one asyncpg pool per worker process, made in the lifespan (PEER_POOL_SIZE connections,
  default 10, asyncpg's default); asyncpg prepares and caches every statement on each
  connection by itself; a list request holds one connection for its count and its page;
* bodies built with one ``orjson.dumps`` and returned as bytes in a plain ``Response``
  (no ``response_model``: FastAPI then neither validates nor re-serialises them); the query
  options are read from ``request.query_params`` and checked by hand like the floor's, not
  declared as pydantic-validated parameters (they must be rejected with the service's
  messages, unknown and repeated options included);
* the same work as the floor and the service (token cache, counts, signed cursors, id and
  cost formatting) and the same SQL: bench/wire.py, shared with bench/floor.py.

Served by uvicorn's own process manager (bench/run.py starts it so; no access log, like the floor):
    DATABASE_URL=... SECRET_KEY=... .venv/bin/uvicorn peer_fastapi:app --app-dir bench \
        --host 127.0.0.1 --port 8903 --workers 2 --loop uvloop --http httptools \
        --no-access-log
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import asyncpg
import orjson
from fastapi import Depends, FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: wire

import wire
from wire import HttpError, dollar_params

POOL_SIZE = int(os.environ.get("PEER_POOL_SIZE") or "10")
TOKEN_SQL = dollar_params(wire.TOKEN_SQL)
TOUCH_SQL = dollar_params(wire.TOUCH_SQL)
JSON = "application/json"


class Db:
    pool: asyncpg.Pool


async def _init_connection(conn: asyncpg.Connection) -> None:
    # cdrs_api_token.domains is jsonb: decoded like psycopg does, to a list.
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
    )


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    Db.pool = await asyncpg.create_pool(
        wire.DATABASE_URL,
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        init=_init_connection,
        server_settings={"TimeZone": "UTC"},
    )
    try:
        yield
    finally:
        await Db.pool.close()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
_tokens = wire.TokenCache()


def _error(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(wire.error_body(status, message), status, headers, media_type=JSON)


@app.exception_handler(HttpError)
async def _http_error(_request: Request, exc: HttpError) -> Response:
    return _error(exc.status, exc.message)


@app.exception_handler(StarletteHTTPException)
async def _routing_error(_request: Request, exc: StarletteHTTPException) -> Response:
    return _error(exc.status_code, "not found" if exc.status_code == 404 else str(exc.detail))


@app.exception_handler(asyncpg.PostgresError)
@app.exception_handler(asyncpg.InterfaceError)
@app.exception_handler(OSError)
async def _database_error(_request: Request, _exc: Exception) -> Response:
    return _error(500, "database error")


async def read_token(request: Request) -> list:
    """The caller's token (cached per process), live and with the read scope."""
    prefix, digest = wire.bearer(request.headers.get("authorization", ""))
    token = _tokens.get(digest)
    if token is None:
        token = _tokens.put(digest, await Db.pool.fetchrow(TOKEN_SQL, prefix))
    touch = wire.check_token(token)
    if touch is not None:
        await Db.pool.execute(TOUCH_SQL, *touch)
    wire.require_read(token)
    return token


Token = Annotated[list, Depends(read_token)]


@app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


@app.get("/api/cdrs")
async def list_cdrs(request: Request, token: Token) -> Response:
    plan = wire.plan_list(token, request.query_params.multi_items())
    async with Db.pool.acquire() as db:
        count = None
        if plan.count_sql is not None:
            count = await db.fetchval(dollar_params(plan.count_sql), *plan.count_args)
        rows = await db.fetch(dollar_params(plan.page_sql), *plan.page_args)
    return Response(wire.list_body(plan, count, rows), media_type=JSON)


@app.get("/api/cdrs/{public_id}")
async def detail_cdr(public_id: str, token: Token) -> Response:
    sql, args = wire.plan_detail(token, public_id)
    row = await Db.pool.fetchrow(dollar_params(sql), *args)
    return Response(wire.detail_body(token, row), media_type=JSON)
