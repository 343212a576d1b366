"""Compiled SQL per query shape: each read query is built by the ORM once, then reused.

Building and compiling the 40-column ``values_list()`` of a detail or list query costs
Django about a millisecond, more than PostgreSQL needs to answer it from an index. The read
paths ask few *shapes* of query (the same fields, conditions and order; other values), so a
shape is built once with stand-in values ("slots") for everything that varies, compiled,
and kept as its SQL plus the parameter position of each slot. A request with that shape
runs the SQL with its own values in those positions.

The ORM stays the one definition of every query: this only memoizes what it compiles. A
shape is kept only when every slot reaches the parameters unchanged (once or more) and
nowhere else; when the ORM transforms a value (LIKE escaping for ``contains``, a datetime
turned into text on SQLite) or writes it into the SQL text, that shape is compiled per
request, as before. Values that change the SQL itself (``None`` -> ``IS NULL``, booleans,
list lengths, LIMIT/OFFSET, a ``RawSQL`` without parameters) are part of the shape, never
slots.

The interface is ``fetch_shaped``: the caller hands over a function that builds the query
from what varies (a token's domains, the rows' condition, a keyset position) and a key
naming the rest; slots, stand-ins and the cache stay in here. ``stats`` counts how each
query was answered, so tests can tell a reused shape from one silently compiled again.

This reads SQL compiler internals (``as_sql`` parameter order, ``get_converters``), hence
the pin to Django 5.2.x in requirements.txt.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import EmptyResultSet, ValidationError
from django.db import connections
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL

from cdrs import routers

# Values that go into a query as parameters, unchanged by the ORM on a friendly backend.
_SLOTTABLE = (int, str, datetime, Decimal)
_CACHE_MAX = 256  # shapes per thread (~25 kB each); a flood of odd shapes just recompiles
_local = threading.local()


class _Uncacheable(Exception):
    pass


def _value_shape(value: Any, values: list[Any]) -> Hashable:
    if value is None or isinstance(value, bool):
        return ("literal", value)
    if isinstance(value, RawSQL) and not value.params:  # SQL text: part of the shape
        return ("sql", value.sql)
    if type(value) in _SLOTTABLE:
        values.append(value)
        return ("slot", type(value).__name__)
    if isinstance(value, list | tuple) and all(type(v) in _SLOTTABLE for v in value):
        values.extend(value)
        return ("slots", tuple(type(v).__name__ for v in value))
    raise _Uncacheable


def _q_shape(q: Q, values: list[Any]) -> Hashable:
    parts: list[Hashable] = []
    for child in q.children:
        if isinstance(child, Q):
            parts.append(_q_shape(child, values))
        elif isinstance(child, tuple) and len(child) == 2 and isinstance(child[0], str):
            parts.append((child[0], _value_shape(child[1], values)))
        else:  # an expression (search): compiled per request
            raise _Uncacheable
    return (q.connector, q.negated, tuple(parts))


def _shape_of_q(q: Q) -> tuple[Hashable, list[Any]] | None:
    """(shape, slot values in order) of a ``Q`` of plain lookups; None if it has others."""
    values: list[Any] = []
    try:
        return _q_shape(q, values), values
    except _Uncacheable:
        return None


def _shape_of_values(items: Sequence[Any]) -> tuple[Hashable, list[Any]] | None:
    """(shape, slot values) of a flat list of values (a cursor position, say)."""
    values: list[Any] = []
    try:
        return tuple(_value_shape(v, values) for v in items), values
    except _Uncacheable:
        return None


def _values_fill(items: Sequence[Any], values: Iterator[Any]) -> list[Any]:
    """``items`` with their slots (see ``_value_shape``) replaced by the next ``values``."""
    return [_value_fill(v, values) for v in items]


def _value_fill(value: Any, values: Iterator[Any]) -> Any:
    if value is None or isinstance(value, bool | RawSQL):
        return value
    if isinstance(value, list | tuple):
        return [next(values) for _ in value]
    return next(values)


def _q_fill(q: Q, values: Iterator[Any]) -> Q:
    """``q`` with its slot values replaced, in order, by the next ones from ``values``."""
    filled = Q()
    filled.connector, filled.negated = q.connector, q.negated
    for child in q.children:
        if isinstance(child, Q):
            filled.children.append(_q_fill(child, values))
            continue
        assert isinstance(child, tuple)  # _shape_of_q accepted only Qs and (lookup, value)
        lookup, value = child
        filled.children.append((lookup, _value_fill(value, values)))
    return filled


def _stand_in(kind: type, index: int) -> Any:
    """A value of ``kind`` no request sends and the ORM passes through (in int4 range)."""
    if kind is int:
        return 2_000_000_000 - index
    if kind is str:
        return f"\x00slot{index}\x00"
    if kind is datetime:
        return datetime(1971, 2, 3, 4, 5, 6, index + 1, tzinfo=UTC)
    return Decimal(f"-987654.{index + 1:06d}")


class _Compiled:
    def __init__(
        self, qs: QuerySet[Any, Any], stand_ins: list[Any], limit_as_parameter: bool
    ) -> None:
        self.alias = qs.db
        compiler = qs.query.get_compiler(using=self.alias)
        try:
            sql, params = compiler.as_sql()
        except (EmptyResultSet, ValidationError, TypeError, ValueError) as exc:
            raise _Uncacheable from exc
        slots: list[int | None] = []
        # The backend may wrap a value in a subclass to fix its SQL type (psycopg's Int8 for
        # bigint columns); the same wrapper is applied to the request's value.
        wrappers: list[type | None] = []
        for p in params:
            found = [i for i, s in enumerate(stand_ins) if isinstance(p, type(s)) and s == p]
            slots.append(found[0] if found else None)
            wrappers.append(type(p) if found and type(p) is not type(stand_ins[found[0]]) else None)
        if {s for s in slots if s is not None} != set(range(len(stand_ins))):
            raise _Uncacheable  # a value was transformed or dropped
        if any(str(s).strip("\x00") in sql for s in stand_ins):
            raise _Uncacheable  # a value went into the SQL text
        if limit_as_parameter:
            sql, params = _limit_as_parameter(sql, list(params))
        slots += [None] * (len(params) - len(slots))
        wrappers += [None] * (len(params) - len(wrappers))
        self.sql = sql
        self.slots = slots
        self.wrappers = wrappers
        self.fixed = list(params)
        self.compiler = compiler
        self.converters = compiler.get_converters(
            [s[0] for s in compiler.select[0 : compiler.col_count]]
        )

    def rows(self, values: Sequence[Any]) -> list[Any]:
        params = list(self.fixed)
        for i, slot in enumerate(self.slots):
            if slot is not None:
                wrap = self.wrappers[i]
                params[i] = values[slot] if wrap is None else wrap(values[slot])
        with connections[self.alias].cursor() as cur:
            cur.execute(self.sql, params)
            rows: list[Any] = cur.fetchall()
        if self.converters:
            rows = list(self.compiler.apply_converters(rows, self.converters))
        return rows


# The ORM writes the page's LIMIT/OFFSET into the SQL text; at the end of the statement.
_TRAILING_LIMIT = re.compile(r" LIMIT (\d+)(?: OFFSET (\d+))?$")


def _limit_as_parameter(sql: str, params: list[Any]) -> tuple[str, list[Any]]:
    """The statement's own LIMIT (and OFFSET) as parameters, the same values.

    Why: psycopg prepares a statement run often and PostgreSQL then plans it once for any
    values (a generic plan). With ``caller = $1 ... LIMIT 51`` that plan expects a caller's
    average handful of rows and sorts them all, so an extension with 1,500 calls read every
    one of them (7.6 ms); with ``LIMIT $2`` the generic plan reads the caller index in
    order and stops at the page's end (0.2 ms), as a plan for the actual values does.
    A LIMIT inside a subquery (ids first) is left alone: it is not at the end.

    The price: PostgreSQL then plans such a statement anew on every run (a generic plan
    with an unknown LIMIT looks costly), which on the partitioned table means planning
    every partition not pruned by the statement's own values. So a query whose plan does
    not depend on its values (a page with no condition) keeps its LIMIT in the text and is
    planned once per connection (``fetch_shaped(limit_as_parameter=False)``).
    """
    found = _TRAILING_LIMIT.search(sql)
    if found is None:
        return sql, params
    limit, offset = found.groups()
    tail = " LIMIT %s" + (" OFFSET %s" if offset is not None else "")
    values = [int(limit)] + ([int(offset)] if offset is not None else [])
    return sql[: found.start()] + tail, params + values


def _cache() -> dict[Hashable, _Compiled | None]:
    cache: dict[Hashable, _Compiled | None] | None = getattr(_local, "cache", None)
    if cache is None or len(cache) > _CACHE_MAX:
        cache = _local.cache = {}
    return cache


@dataclass
class Stats:
    """Process-wide counts of how read queries were answered (for tests and diagnostics)."""

    compiled: int = 0  # shapes compiled and kept
    refused: int = 0  # shapes tried and found uncacheable (then compiled per request)
    reused: int = 0  # queries answered with SQL kept for their shape
    per_request: int = 0  # queries the ORM compiled for this request alone

    def snapshot(self) -> Stats:
        with _stats_lock:
            return replace(self)


stats = Stats()
_stats_lock = threading.Lock()


def _count(name: str) -> None:
    with _stats_lock:
        setattr(stats, name, getattr(stats, name) + 1)


def _fetch_rows(
    key: Hashable,
    build: Callable[[Sequence[Any]], QuerySet[Any, Any]],
    values: Sequence[Any],
    limit_as_parameter: bool,
) -> list[Any]:
    """Rows of the ``values_list`` query ``build(values)``, compiled once per ``key``.

    ``build`` must make the same query shape for any values (stand-ins included); ``key``
    must name everything else the query depends on.
    """
    alias = routers.read_alias()  # the request's replica, or the primary
    cache = _cache()
    full_key = (alias, connections[alias].vendor, key)
    if full_key in cache:
        compiled = cache[full_key]
        _count("per_request" if compiled is None else "reused")
    else:
        stand_ins = [_stand_in(type(v), i) for i, v in enumerate(values)]
        try:
            compiled = cache[full_key] = _Compiled(
                build(stand_ins).using(alias), stand_ins, limit_as_parameter
            )
            _count("compiled")
        except _Uncacheable:
            compiled = cache[full_key] = None
            _count("refused")
    if compiled is None:
        return list(build(values).using(alias))
    return compiled.rows(values)


Make = Callable[[Sequence[str], Q, list[Any] | None], QuerySet[Any, Any]]


def fetch_shaped(
    kind: Hashable,
    make: Make,
    *,
    domains: Sequence[str],
    where: Q,
    after: list[Any] | None = None,
    limit_as_parameter: bool = True,
) -> list[Any]:
    """Rows of the ``values_list`` query ``make(domains, where, after)``, its SQL compiled
    once per query shape (its trailing LIMIT a parameter unless ``limit_as_parameter`` is
    false: see ``_limit_as_parameter``).

    The arguments of ``make`` are what varies between requests: a token's domains, the
    rows' condition and a keyset position (None: no keyset condition). ``kind`` must name
    everything else ``make`` builds into the query (fields, order, LIMIT/OFFSET).
    """
    domains = list(domains)
    where_shape = _shape_of_q(where)
    after_shape = _shape_of_values(after or [])
    if where_shape is None or after_shape is None:
        _count("per_request")
        return list(make(domains, where, after).using(routers.read_alias()))
    key = (kind, len(domains), where_shape[0], after is None, after_shape[0], limit_as_parameter)
    n_domains, n_where = len(domains), len(where_shape[1])

    def build(values: Sequence[Any]) -> QuerySet[Any, Any]:
        rest = iter(values[n_domains + n_where :])
        position = None if after is None else _values_fill(after, rest)
        filled = _q_fill(where, iter(values[n_domains : n_domains + n_where]))
        return make(values[:n_domains], filled, position)

    values = [*domains, *where_shape[1], *after_shape[1]]
    return _fetch_rows(key, build, values, limit_as_parameter)
