"""Read replicas: which database each query goes to when DATABASE_REPLICA_URLS names some.

Only the API's four read endpoints read from a replica: the list, the detail, the statistics
and the export. Their view methods are wrapped in ``reads_from_replica``, which picks a
replica for the request (round-robin per process, leaving out those marked down) and runs
the view with it as the request's *read alias*; the selectors send their CDR queries there
(``read_alias()``: raw cursors and compiled SQL explicitly, ORM querysets through
``ReplicaRouter.db_for_read``). Everything else reads and writes the primary:

- writes, and every read inside a write: ingest, the webhook, imports and commands never
  enter ``reads_from_replica``, and a read inside ``transaction.atomic`` on the primary goes
  to the primary whatever the request (``read_alias``);
- token lookups (``cdrs/auth.py``, run before the view): a token just minted must work at
  once, and a revoked one must stop within CDR_TOKEN_CACHE_SECONDS, not that plus the lag;
  the lookup may also write (``last_used_at``, a re-hash under a new pepper);
- the rate limit and lockout counters (the database cache when there is no Redis) and
  sessions: read-modify-write, so they need the newest value;
- the admin: staff look at what they just changed (a new token, a replayed dead letter) and
  its load is small.

When a replica cannot be reached (refused, closed, timed out while connecting) the request
runs again on the next replica, and last on the primary, so no request fails because one
replica is down; the replica is left out for CDR_REPLICA_DOWN_SECONDS, then tried again. The
export is retried only while its first rows are being read (the view produces them): once a
response has started, a replica lost mid-stream cuts it short as the primary's loss would
(no trailer). A statement timeout on a replica is the same 503 as on the primary, not a retry.

Replication lag: a replica answers with what it has replayed, usually within milliseconds of
the primary but later under load, so a client that has just POSTed a CDR may not find it for
a moment (README "Read replicas"). Cursors hold the position, not server state: one made
on a replica is valid on the primary and on any other replica.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    Error,
    InterfaceError,
    OperationalError,
    connections,
)

from cdrs import metrics, timeouts

log = logging.getLogger(__name__)

# The models the read endpoints query: the only ones ever read from a replica.
REPLICA_READ_MODELS = frozenset(
    {"cdrs.Cdr", "cdrs.CdrCounter", "cdrs.CdrHourlyStats", "cdrs.CdrHourlyTotals"}
)

# The database this request's CDR reads go to (set by reads_from_replica); None: the primary.
_read_alias: ContextVar[str | None] = ContextVar("cdr_read_alias", default=None)
# alias -> time.monotonic() until which it is left out; written by any thread.
_down_until: dict[str, float] = {}
_turn = itertools.count()  # next() is atomic under the GIL: round-robin across threads

P = ParamSpec("P")
R = TypeVar("R")


def read_alias() -> str:
    """Where a CDR read goes now: the request's replica, or the primary (also inside a
    transaction on the primary: a read inside a write sees that write)."""
    alias = _read_alias.get()
    if alias is None or _in_write(connections[DEFAULT_DB_ALIAS]):
        return DEFAULT_DB_ALIAS
    return alias


def _in_write(primary: Any) -> bool:
    """Whether a transaction is open on the primary. The test runner's own transaction
    around each test is not one (Django's ``durable`` check makes the same exception): a
    test's reads are routed as a request's are."""
    return any(not block._from_testcase for block in primary.atomic_blocks)


def candidates() -> list[str]:
    """The aliases to try for one request, in order: the live replicas, starting with the
    next in turn, then the primary."""
    now = time.monotonic()
    live = [a for a in settings.CDR_REPLICA_ALIASES if _down_until.get(a, 0.0) <= now]
    if len(live) > 1:
        start = next(_turn) % len(live)
        live = live[start:] + live[:start]
    return [*live, DEFAULT_DB_ALIAS]


def is_down(alias: str) -> bool:
    """Whether ``alias`` is being left out after a failure."""
    return _down_until.get(alias, 0.0) > time.monotonic()


def forget_failures() -> None:
    """Try every replica again from the next request on (tests; an operator's shell)."""
    _down_until.clear()


def _lost(alias: str) -> bool:
    """Whether ``alias``'s connection is gone (never made, or closed by the error)."""
    raw = connections[alias].connection
    return raw is None or bool(getattr(raw, "closed", False))


def _replica_failed(alias: str, exc: Error) -> None:
    cause = type(exc.__cause__ or exc).__name__
    if _lost(alias):
        seconds = settings.CDR_REPLICA_DOWN_SECONDS
        _down_until[alias] = time.monotonic() + seconds
        log.warning(
            "replica %s unreachable (%s): reads go to the next replica or the primary, "
            "and it is left out for %d s",
            alias,
            cause,
            seconds,
        )
        with contextlib.suppress(DatabaseError):
            connections[alias].close()
    else:
        # It answered with an error of its own (a query cancelled by a conflict with
        # recovery): this request reads elsewhere, the next ones may use it again.
        log.warning("replica %s failed a read (%s): read again elsewhere", alias, cause)
    metrics.count_replica_failure(alias)


def reads_from_replica(view: Callable[P, R]) -> Callable[P, R]:
    """Run ``view`` (a read endpoint's method) with its CDR reads on a replica; on a replica's
    failure, run it again on the next one, then on the primary. Only for views whose whole
    work is reading: they may run more than once."""

    @functools.wraps(view)
    def on_replica(*args: P.args, **kwargs: P.kwargs) -> R:
        if not settings.CDR_REPLICA_ALIASES:
            return view(*args, **kwargs)
        for alias in candidates():
            reset = _read_alias.set(alias)
            try:
                return view(*args, **kwargs)
            except (OperationalError, InterfaceError) as exc:
                if alias == DEFAULT_DB_ALIAS or timeouts.is_query_cancelled(exc):
                    raise
                _replica_failed(alias, exc)
            finally:
                _read_alias.reset(reset)
        raise AssertionError("unreachable: the primary is the last candidate")

    return on_replica


class ReplicaRouter:
    """Django's database router (DATABASE_ROUTERS, set only when replicas are configured)."""

    def db_for_read(self, model: type[Any], **hints: Any) -> str:
        # getattr: the database cache routes a stand-in "model" whose _meta has no label
        # (found by the replica run: the lockout counters crashed the admin login).
        if getattr(model._meta, "label", None) in REPLICA_READ_MODELS:
            return read_alias()
        return DEFAULT_DB_ALIAS

    def db_for_write(self, model: type[Any], **hints: Any) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # one database, copied: every alias holds every row

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any):
        # Replicas replay the primary's schema; migrating one would fail (read-only) anyway.
        return db == DEFAULT_DB_ALIAS
