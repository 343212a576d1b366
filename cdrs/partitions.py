"""Monthly range partitions of ``cdrs_cdr`` on PostgreSQL, and the id registry beside them.

``cdrs_cdr`` is ``PARTITION BY RANGE (started_at)``: one partition a month
(``cdrs_cdr_p2025_01`` holds ``[2025-01-01, 2025-02-01)`` UTC) and ``cdrs_cdr_default`` for
any row no month partition takes, so an insert never fails for want of a partition.
``ensure`` creates months ahead (``manage.py cdr_partitions --ensure``, also after every
``migrate``); ``split_default`` moves rows out of the default partition into their month.

A unique index of a partitioned table must contain the partition key, so the database's
primary key is ``(id, started_at)``. ``cdrs_cdr_id`` (id primary key, started_at) keeps ids
unique across partitions: statement triggers on ``cdrs_cdr`` add, move and remove its rows
with every INSERT, UPDATE, DELETE and TRUNCATE through the parent table, so an insert of an
id stored under another ``started_at`` fails on its primary key. Work that bypasses the
parent (attaching or dropping a partition, moving rows between partitions) keeps the
registry itself: ``split_default`` moves rows without changing id or started_at, ``prune``
deletes the dropped rows' ids, the backfill inserts its ids.

SQLite has none of this: the table stays a plain table and every function here is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from django.db import connection as default_connection
from django.db import transaction

TABLE = "cdrs_cdr"
DEFAULT_PARTITION = "cdrs_cdr_default"
REGISTRY = "cdrs_cdr_id"
MONTHS_AHEAD = 3  # months after the current one that ``ensure`` creates
_PREFIX = "cdrs_cdr_p"
LOAD_PREFIX = "cdrs_cdr_load_"  # a backfill's month being loaded: cdrs_cdr_load_YYYY_MM_<pid>_x
# A standalone table with the CDR table's columns, collations, defaults and CHECKs.
LIKE_OPTIONS = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS"

# Planner statistics targets every partition gets (migration 0009 explains why): a new
# partition, made by CREATE TABLE ... PARTITION OF or attached, starts at the default.
COLUMN_STATISTICS = {"caller": 1000, "callee": 1000}

_LOCK_KEY = 0x0CD8_7A27  # pg_advisory_xact_lock: one partition maintainer at a time
Say = Callable[[str], None]


def _quiet(_text: str) -> None:
    pass


def partition_name(month: date) -> str:
    return f"{_PREFIX}{month.year:04d}_{month.month:02d}"


def month_of(value: datetime | date) -> date:
    return date(value.year, value.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def month_start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def months(first: date, last: date) -> Iterator[date]:
    """Every month from ``first`` to ``last`` inclusive."""
    month = month_of(first)
    while month <= last:
        yield month
        month = next_month(month)


def month_of_name(name: str) -> date | None:
    if not name.startswith(_PREFIX):
        return None
    try:
        year, mon = name[len(_PREFIX) :].split("_")
        return date(int(year), int(mon), 1)
    except ValueError:
        return None


def is_partitioned(conn: Any = None) -> bool:
    """Whether ``cdrs_cdr`` is a partitioned table on this connection's database."""
    conn = conn or default_connection
    if conn.vendor != "postgresql":
        return False
    with conn.cursor() as cur:
        cur.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cur.fetchone()
    return row is not None and row[0] == "p"


def has_registry(conn: Any = None) -> bool:
    """Whether writes and id lookups go through ``cdrs_cdr_id`` on this connection's database
    (PostgreSQL after migration 0007). Asked once per connection object (a process); a
    schema change under a running process needs its restart, as any migration does."""
    conn = conn or default_connection
    found = getattr(conn, "_cdr_has_registry", None)
    if found is None:
        found = False
        if conn.vendor == "postgresql":
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", [REGISTRY])
                found = bool(cur.fetchone()[0])
        conn._cdr_has_registry = found
    return bool(found)


@dataclass(frozen=True)
class Partition:
    name: str
    month: date | None  # None for the default partition
    rows_estimate: int


def partitions(conn: Any = None) -> list[Partition]:
    """The partitions of ``cdrs_cdr``, month partitions in month order, default last."""
    conn = conn or default_connection
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname, greatest(c.reltuples, 0)::bigint FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [TABLE],
        )
        found = cur.fetchall()
    result = sorted(
        (
            Partition(name, month, rows)
            for name, rows in found
            if (month := month_of_name(name)) is not None
        ),
        key=lambda p: p.month or date.min,
    )
    result += [Partition(name, None, rows) for name, rows in found if name == DEFAULT_PARTITION]
    return result


def _default_months(cur: Any) -> list[date]:
    """The months of the rows in the default partition (a scan of the default partition,
    which holds only the rows no month took: normally none)."""
    cur.execute(
        f"SELECT DISTINCT date_trunc('month', started_at AT TIME ZONE 'UTC')::date "
        f"FROM {DEFAULT_PARTITION} ORDER BY 1"
    )
    return [row[0] for row in cur.fetchall()]


def _distributed(cur: Any) -> bool:
    """Whether the CDR table is distributed by Citus (``cdrs.citus``)."""
    cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'")
    if cur.fetchone() is None:
        return False
    cur.execute("SELECT 1 FROM pg_dist_partition WHERE logicalrelid = %s::regclass", [TABLE])
    return cur.fetchone() is not None


def bound(moment: datetime) -> str:
    """A partition bound as an SQL literal: DDL takes no bind parameters (and the service's
    PostgreSQL connections bind parameters on the server, cdrservice/databases)."""
    return f"'{moment.astimezone(UTC).isoformat()}'"


def tune_statistics(cur: Any, table: str) -> None:
    """Give ``table`` (a partition) the CDR table's per-column statistics targets.

    Not on Citus: it refuses ``SET STATISTICS`` on a distributed table (the statistics that
    plan a query there are each shard's, with PostgreSQL's default target).
    """
    if _distributed(cur):
        return
    cur.execute(
        f"ALTER TABLE {table} "
        + ", ".join(f'ALTER COLUMN "{c}" SET STATISTICS {n}' for c, n in COLUMN_STATISTICS.items())
    )


def _create_month(cur: Any, month: date) -> None:
    lo, hi = bound(month_start(month)), bound(month_start(next_month(month)))
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {partition_name(month)} PARTITION OF {TABLE} "
        f"FOR VALUES FROM ({lo}) TO ({hi})"
    )
    tune_statistics(cur, partition_name(month))


def ensure(
    *,
    ahead: int = MONTHS_AHEAD,
    first: date | None = None,
    conn: Any = None,
    say: Say = _quiet,
    today: date | None = None,
) -> list[str]:
    """Create the month partitions from ``first`` (default: this month) to ``ahead`` months
    after this one, and the default partition; returns the names created. Idempotent.

    A month whose rows sit in the default partition is left for ``split_default`` (creating
    it would fail: the default partition would then hold rows of another partition).
    """
    conn = conn or default_connection
    if not is_partitioned(conn):
        say("nothing to do: cdrs_cdr is not partitioned (SQLite, or not migrated)")
        return []
    drop_orphan_loads(conn=conn, say=say)
    today = today or datetime.now(UTC).date()
    last = month_of(today)
    for _ in range(ahead):
        last = next_month(last)
    created: list[str] = []
    with transaction.atomic(using=conn.alias), conn.cursor() as cur:
        # Two app servers running migrate at once: one creates, the other then sees it.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        existing = {p.month for p in partitions(conn)}
        cur.execute(f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT")
        tune_statistics(cur, DEFAULT_PARTITION)
        waiting = set(_default_months(cur))
        for month in months(first or month_of(today), last):
            if month in existing:
                continue
            if month in waiting:
                say(f"{partition_name(month)}: rows wait in the default partition: --split-default")
                continue
            _create_month(cur, month)
            created.append(partition_name(month))
            say(f"created {partition_name(month)}")
    return created


def drop_orphan_loads(*, conn: Any = None, say: Say = _quiet) -> list[str]:
    """Drop the tables of backfills whose connection is gone (an import killed mid-file;
    re-running it loads those months again)."""
    conn = conn or default_connection
    with conn.cursor() as cur:
        cur.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE %s",
            [LOAD_PREFIX.replace("_", r"\_") + "%"],
        )
        names = [row[0] for row in cur.fetchall()]
        cur.execute("SELECT pid FROM pg_stat_activity")
        alive = {str(row[0]) for row in cur.fetchall()}
        dropped = []
        for name in names:
            parts = name.removeprefix(LOAD_PREFIX).split("_")
            if len(parts) == 4 and parts[2] not in alive:
                cur.execute(f"DROP TABLE IF EXISTS {name}")
                dropped.append(name)
                say(f"dropped {name}, left by an import that was killed")
    return dropped


def split_default(*, conn: Any = None, say: Say = _quiet) -> dict[str, int]:
    """Move the default partition's rows into month partitions; returns rows per partition.

    Per month, in one transaction: the rows are moved into a new table (deleted from the
    default partition), which is then attached as the month's partition. The CHECK
    constraint matching the bound lets ATTACH skip its validation scan. Id and started_at
    do not change, so the id registry stays as it is.
    """
    conn = conn or default_connection
    if not is_partitioned(conn):
        say("nothing to do: cdrs_cdr is not partitioned (SQLite, or not migrated)")
        return {}
    moved: dict[str, int] = {}
    with conn.cursor() as cur:
        waiting = _default_months(cur)
    for month in waiting:
        name = partition_name(month)
        lo, hi = month_start(month), month_start(next_month(month))
        with transaction.atomic(using=conn.alias), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
            cur.execute(f"LOCK TABLE {DEFAULT_PARTITION} IN SHARE ROW EXCLUSIVE MODE")
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
            if cur.fetchone()[0]:  # split meanwhile by another run
                continue
            cur.execute(
                f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            cur.execute(
                f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE started_at >= %s "
                f"AND started_at < %s RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                [lo, hi],
            )
            count = cur.rowcount
            attach_month(cur, name, month)
        moved[name] = count
        say(f"moved {count:,} rows from {DEFAULT_PARTITION} to {name}")
    return moved


def attach_month(cur: Any, table: str, month: date) -> None:
    """Attach a standalone table as ``month``'s partition without a validation scan.

    A CHECK constraint matching the bound proves the rows fit (PostgreSQL skips the scan
    when one implies the partition constraint); it is dropped once attached. The indexes
    the parent has are created on the table before it is attached, or by the attach.
    """
    lo, hi = bound(month_start(month)), bound(month_start(next_month(month)))
    check = f"{table}_bound"
    cur.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK (started_at IS NOT NULL "
        f"AND started_at >= {lo} AND started_at < {hi})"
    )
    tune_statistics(cur, table)
    cur.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {table} FOR VALUES FROM ({lo}) TO ({hi})")
    cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {check}")
