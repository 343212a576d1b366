"""Helpers shared by several test modules: scratch databases and concurrent requests."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext


@contextlib.contextmanager
def scratch_postgresql(prefix: str) -> Iterator[str]:
    """A new, empty database on DATABASE_URL's server (dropped afterwards); yields its URL."""
    url = os.environ.get("DATABASE_URL", "")
    assert url.startswith(("postgres://", "postgresql://")), "needs PostgreSQL"
    name = f"{prefix}_{secrets.token_hex(4)}"
    server = urlsplit(url)._replace(scheme="postgresql")
    admin_url = server._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def post_concurrently(client: Client, payload: bytes, senders: int = 6) -> list[dict[str, Any]]:
    """POST ``payload`` to /api/cdrs from ``senders`` threads released at once.

    Each answer's body with its ``status``; every thread closes its own connection.
    """
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(senders)

    def send() -> None:
        try:
            barrier.wait()
            response = client.post("/api/cdrs", payload, content_type="application/json")
            results.append(orjson.loads(response.content) | {"status": response.status_code})
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


class AllQueries:
    """``CaptureQueriesContext`` over the primary and every replica alias at once (the
    replica run routes the read endpoints' queries to ``replica1``)."""

    def __init__(self) -> None:
        self.aliases = [DEFAULT_DB_ALIAS, *settings.CDR_REPLICA_ALIASES]
        self._contexts = [CaptureQueriesContext(connections[a]) for a in self.aliases]
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> AllQueries:
        for context in self._contexts:
            self._stack.enter_context(context)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def captured_queries(self) -> list[dict[str, str]]:
        return [
            {**query, "alias": alias}
            for alias, context in zip(self.aliases, self._contexts, strict=True)
            for query in context.captured_queries
        ]

    def __len__(self) -> int:
        return sum(len(context) for context in self._contexts)
