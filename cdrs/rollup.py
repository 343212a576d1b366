"""Writes of the hourly statistics rollup (``cdrs_hourly_stats``), beside the CDR inserts.

``add_inserted`` is called by ``services.cdr_ingest`` with exactly the rows its INSERT
stored (``ON CONFLICT DO NOTHING`` skips duplicates), inside the same transaction, so the
rollup is exact whenever the CDR table is; one CDR on PostgreSQL is added by the statement
that inserts it (``upserts_sql`` over its ``RETURNING`` row). ``rebuild`` recomputes it
from the CDRs (the migration's backfill; also a repair tool).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection

TABLE = "cdrs_hourly_stats"
TOTALS_TABLE = "cdrs_hourly_totals"  # the same per hour only (see CdrHourlyTotals)
DIMENSIONS = ("direction", "end_reason", "trunk", "caller_domain", "callee_domain")
MEASURES = ("calls", "answered", "total_duration", "pdd_sum", "pdd_calls", "cost_micros")
SLOTS = 4  # rows per key that concurrent writers spread over (see CdrHourlyStats)
_COLUMNS = ("hour", "dims_key", "slot", *DIMENSIONS, *MEASURES)
_CHUNK = 500  # keys per INSERT statement (SQLite allows 32766 parameters)
# Up to this many rows (a small POST) are added from Python, as on SQLite: reading a few
# just-inserted rows back from the partitioned table to aggregate them in SQL took PostgreSQL
# 1.5 ms a statement. (One CDR on PostgreSQL is added by its own INSERT statement instead,
# aggregating its RETURNING row: ``upserts_sql``, ``services._one_statement_sql``.)
FEW_ROWS = 20


def dims_key(values: Sequence[str]) -> uuid.UUID:
    """Hash of the dimension strings, length-prefixed so no two tuples share a text."""
    text = "".join(f"{len(v)}:{v}" for v in values)
    return uuid.UUID(hashlib.md5(text.encode()).hexdigest())


def _dims_key_sql() -> str:
    """``dims_key`` in PostgreSQL's SQL, equal to ``dims_key`` (md5 of the same UTF-8 text)."""
    parts = [f"length({d}) || ':' || {d}" for d in DIMENSIONS]
    return f"md5({' || '.join(parts)})::uuid"


def accumulate(rows: Iterable[dict[str, Any]]) -> dict[tuple[Any, ...], list[int]]:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        hour = int(row["started_at"].timestamp()) // 3600
        key = (hour, *(row[d] for d in DIMENSIONS))
        acc = groups.get(key)
        if acc is None:
            acc = groups[key] = [0, 0, 0, 0, 0, 0]
        acc[0] += 1
        answered_at = row["answered_at"]
        if answered_at is not None:
            acc[1] += 1
            if row["rang_at"] is not None:
                acc[3] += int((answered_at - row["rang_at"]).total_seconds())
                acc[4] += 1
        acc[2] += row["duration"]
        if row["cost"] is not None:
            acc[5] += int(row["cost"].scaleb(6))  # at most 6 decimal places (validation)
    return groups


def _upsert(groups: dict[tuple[Any, ...], list[int]], slot: int) -> None:
    from cdrs.models import CdrHourlyStats

    key_field = CdrHourlyStats._meta.get_field("dims_key")
    one = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    updates = ", ".join(f"{m} = {TABLE}.{m} + excluded.{m}" for m in MEASURES)
    # Keys in one order for every writer: two transactions never lock the same rows in
    # opposite orders (no deadlock), they only queue.
    keys = sorted(groups, key=lambda k: (k[0], dims_key(k[1:]).hex))
    with connection.cursor() as cur:
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            params: list[Any] = []
            for key in chunk:
                hashed = key_field.get_db_prep_save(dims_key(key[1:]), connection)
                params.extend((key[0], hashed, slot, *key[1:], *groups[key]))
            cur.execute(
                f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) "
                f"VALUES {', '.join([one] * len(chunk))} "
                f"ON CONFLICT (hour, dims_key, slot) DO UPDATE SET {updates}",
                params,
            )


def _totals(groups: dict[tuple[Any, ...], list[int]]) -> dict[int, list[int]]:
    hours: dict[int, list[int]] = {}
    for key, acc in groups.items():
        total = hours.setdefault(key[0], [0, 0, 0, 0, 0, 0])
        for i, value in enumerate(acc):
            total[i] += value
    return hours


def _upsert_totals(hours: dict[int, list[int]], slot: int) -> None:
    columns = ("hour", "slot", *MEASURES)
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    updates = ", ".join(f"{m} = {TOTALS_TABLE}.{m} + excluded.{m}" for m in MEASURES)
    keys = sorted(hours)  # one lock order for every writer, as in _upsert
    with connection.cursor() as cur:
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            params: list[Any] = []
            for hour in chunk:
                params.extend((hour, slot, *hours[hour]))
            cur.execute(
                f"INSERT INTO {TOTALS_TABLE} ({', '.join(columns)}) "
                f"VALUES {', '.join([one] * len(chunk))} "
                f"ON CONFLICT (hour, slot) DO UPDATE SET {updates}",
                params,
            )


_BOTH = "rang_at IS NOT NULL AND answered_at IS NOT NULL"
# PostgreSQL: the measures of a group of CDRs, in MEASURES order.
_MEASURES_SQL = (
    "count(*), count(answered_at), coalesce(sum(duration), 0), "
    f"coalesce(sum(CASE WHEN {_BOTH} THEN extract(epoch FROM answered_at - rang_at) END), 0)"
    f"::bigint, count(CASE WHEN {_BOTH} THEN 1 END), "
    "coalesce(sum((cost * 1000000)::bigint), 0)"
)
_HOURLY_CDRS = (
    "(SELECT floor(extract(epoch FROM started_at) / 3600)::bigint AS hour, * "
    "FROM {table} WHERE {where}) AS c"
)


def _stats_select_sql(where: str, table: str = "cdrs_cdr") -> str:
    """PostgreSQL: the rollup rows (slot: first parameter) of the CDRs ``where`` selects, in
    key order, so concurrent writers lock rows in one order (no deadlock)."""
    dims = ", ".join(DIMENSIONS)
    return (
        f"SELECT hour, {_dims_key_sql()} AS dims_key, %s, {dims}, {_MEASURES_SQL} "
        f"FROM {_HOURLY_CDRS.format(table=table, where=where)} GROUP BY hour, {dims} "
        "ORDER BY hour, dims_key"
    )


def _totals_select_sql(where: str, table: str = "cdrs_cdr") -> str:
    """PostgreSQL: the per-hour totals (slot: first parameter) of the CDRs ``where`` selects."""
    return (
        f"SELECT hour, %s, {_MEASURES_SQL} FROM {_HOURLY_CDRS.format(table=table, where=where)} "
        "GROUP BY hour ORDER BY hour"
    )


def upserts_sql(where: str, table: str = "cdrs_cdr") -> tuple[str, str]:
    """PostgreSQL: the statements adding the CDRs ``where`` selects in ``table`` to the rollup
    and to its totals. Each takes the slot, then ``where``'s parameters. ``table`` may be a
    data-modifying WITH's ``RETURNING *`` (``services``: one statement per webhook event).
    """
    stats_updates = ", ".join(f"{m} = {TABLE}.{m} + excluded.{m}" for m in MEASURES)
    totals_updates = ", ".join(f"{m} = {TOTALS_TABLE}.{m} + excluded.{m}" for m in MEASURES)
    return (
        f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) {_stats_select_sql(where, table)} "
        f"ON CONFLICT (hour, dims_key, slot) DO UPDATE SET {stats_updates}",
        f"INSERT INTO {TOTALS_TABLE} (hour, slot, {', '.join(MEASURES)}) "
        f"{_totals_select_sql(where, table)} "
        f"ON CONFLICT (hour, slot) DO UPDATE SET {totals_updates}",
    )


def _add_inserted_sql(where: str, params: list[Any], slot: int, table: str = "cdrs_cdr") -> None:
    """PostgreSQL: aggregate the inserted rows in SQL, found by ``where`` in ``table``.

    A multi-row VALUES list built in Python cost as much as the CDR insert itself (psycopg
    composing ~14,000 parameters for a 1,000-row batch of historical CDRs, ~1 key a row).
    """
    with connection.cursor() as cur:
        for sql in upserts_sql(where, table):
            cur.execute(sql, [slot, *params])


def add_table(table: str) -> None:
    """PostgreSQL: add every CDR of ``table`` (a backfilled month, ``cdrs.backfill``)."""
    _add_inserted_sql("true", [], random.randrange(SLOTS), table)


def add_inserted(rows: Sequence[dict[str, Any]]) -> None:
    """Add CDRs just inserted (validated rows) to the rollup, in the caller's transaction."""
    if not rows:
        return
    slot = random.randrange(SLOTS)
    if connection.vendor == "postgresql" and len(rows) > FEW_ROWS:
        # The rows' started_at range lets the planner read only the partitions that can
        # hold them (an id alone is looked up in every partition).
        starts = [row["started_at"] for row in rows]
        ids = [row["id"] for row in rows]
        where = "id = ANY(%s) AND started_at BETWEEN %s AND %s"
        _add_inserted_sql(where, [ids, min(starts), max(starts)], slot)
        return
    groups = accumulate(rows)
    _upsert(groups, slot)
    _upsert_totals(_totals(groups), slot)


def subtract_deleted(rows: Sequence[dict[str, Any]]) -> None:
    """Take CDRs just deleted (model values) out of the rollup, in the caller's transaction.

    Retention (``cdrs.retention``): a pruned call leaves the statistics as it leaves the
    list, so /api/cdrs/stats gives one answer whether it reads the rollup or the CDRs.
    """
    if not rows:
        return
    slot = random.randrange(SLOTS)
    groups = {key: [-value for value in acc] for key, acc in accumulate(rows).items()}
    _upsert(groups, slot)
    _upsert_totals(_totals(groups), slot)


def forget_hours(first_hour: int, end_hour: int) -> None:
    """Delete the rollup rows of hours ``first_hour`` <= hour < ``end_hour`` (the hours of
    a dropped partition: every CDR of them is gone)."""
    with connection.cursor() as cur:
        for table in (TABLE, TOTALS_TABLE):
            cur.execute(
                f"DELETE FROM {table} WHERE hour >= %s AND hour < %s", [first_hour, end_hour]
            )


def rebuild(using_connection: Any = None) -> None:
    """Recompute the whole rollup from ``cdrs_cdr`` (raw SQL only: usable in migrations)."""
    conn = using_connection or connection
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {TABLE}")
        cur.execute(f"DELETE FROM {TOTALS_TABLE}")
        if conn.vendor == "postgresql":
            cur.execute(
                f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) {_stats_select_sql('true')}", [0]
            )
            cur.execute(
                f"INSERT INTO {TOTALS_TABLE} (hour, slot, {', '.join(MEASURES)}) "
                f"{_totals_select_sql('true')}",
                [0],
            )
            return
    _rebuild_in_python(conn)
    with conn.cursor() as cur:
        _totals_from_stats(cur)


def _totals_from_stats(cur: Any) -> None:
    """SQLite: the totals as the per-dimension rows' sums."""
    sums = ", ".join(f"sum({m})" for m in MEASURES)
    cur.execute(
        f"INSERT INTO {TOTALS_TABLE} (hour, slot, {', '.join(MEASURES)}) "
        f"SELECT hour, 0, {sums} FROM {TABLE} GROUP BY hour"
    )


def _rebuild_in_python(conn: Any) -> None:
    """SQLite (no md5, no exact decimal sum): stream the CDRs through ``accumulate``."""
    from django.utils.dateparse import parse_datetime

    from cdrs.models import Cdr

    cost_field = Cdr._meta.get_field("cost")
    names = ("started_at", "rang_at", "answered_at", "duration", "cost", *DIMENSIONS)
    groups: dict[tuple[Any, ...], list[int]] = {}
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(names)} FROM cdrs_cdr")
        while batch := cur.fetchmany(5000):
            rows = []
            for values in batch:
                row = dict(zip(names, values, strict=True))
                for ts in ("started_at", "rang_at", "answered_at"):
                    if isinstance(row[ts], str):
                        row[ts] = _aware(parse_datetime(row[ts]))
                row["cost"] = cost_field.to_python(row["cost"])
                rows.append(row)
            for key, acc in accumulate(rows).items():
                total = groups.setdefault(key, [0, 0, 0, 0, 0, 0])
                for i, value in enumerate(acc):
                    total[i] += value
    if groups:
        _upsert(groups, 0)


def _aware(value: Any) -> Any:
    from datetime import UTC

    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
