"""The test suite's read replica: the primary's own connection, refusing to write.

bin/test runs the suite a second time "against a primary with a replica": with
DATABASE_REPLICA_URLS set, the router sends the read endpoints' CDR queries to ``replica1``.
A real standby (tests/test_replicas.py starts one) never sees a test's rows, which live in
the test's open transaction, so here the replica alias uses the primary's connection (and
so its transaction) while keeping an alias, a wrapper and a query log of its own. Like a
standby it refuses every write: a write routed to it fails the test.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from cdrs.pgbackend import base

# What a standby accepts (transaction control and session settings included).
_READ_STATEMENTS = frozenset(
    {
        "SELECT",
        "WITH",
        "SHOW",
        "EXPLAIN",
        "VALUES",
        "TABLE",
        "SET",
        "RESET",
        "SAVEPOINT",
        "RELEASE",
        "ROLLBACK",
        "BEGIN",
        "COMMIT",
        "DECLARE",
        "FETCH",
        "CLOSE",
    }
)
# What a standby refuses even inside a read statement.
_WRITES = re.compile(
    r"\b(INSERT|UPDATE|DELETE|MERGE|TRUNCATE|nextval|setval|pg_advisory_xact_lock|"
    r"FOR\s+(NO\s+KEY\s+)?(UPDATE|SHARE))\b",
    re.IGNORECASE,
)


class WriteOnReplica(AssertionError):
    """A write was sent to the read replica (a real standby would refuse it)."""


def _refuse_writes(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    words = str(sql).lstrip(" (").split(None, 1)
    first = words[0].upper() if words else ""
    if first not in _READ_STATEMENTS or _WRITES.search(str(sql)):
        alias = context["connection"].alias
        raise WriteOnReplica(f"a write sent to the read replica {alias!r}: {str(sql)[:300]}")
    return execute(sql, params, many, context)


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute_wrappers.append(_refuse_writes)

    @staticmethod
    def _primary() -> Any:
        primary = connections[DEFAULT_DB_ALIAS]
        primary.ensure_connection()
        return primary.connection

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        return self._primary()

    def init_connection_state(self) -> None:
        self.cdr_citus = None  # the primary's session, set up already

    def _set_autocommit(self, autocommit: bool) -> None:
        pass  # the transaction state is the primary's

    def _close(self) -> None:
        pass  # the primary's connection: closing it is the primary's business

    def _cursor(self, name: str | None = None) -> Any:
        self.connection = self._primary()  # follows the primary's reconnects
        return super()._cursor(name)  # type: ignore[misc]
