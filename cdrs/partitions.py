"""Monthly range partitions of ``cdrs_cdr`` on PostgreSQL, and the id registry beside them.

``cdrs_cdr`` is ``PARTITION BY RANGE (started_at)``: one partition a month
(``cdrs_cdr_p2025_01`` holds ``[2025-01-01, 2025-02-01)`` UTC), and *spill* partitions over
every range no month covers: ``cdrs_cdr_spill_min_2025_01`` holds everything before the
first month, ``cdrs_cdr_spill_2027_04_max`` everything after the last, and a gap between two
months (a pruned or never created month) has one too. Together they cover every instant,
so an insert never fails for want of a partition: they play the role of a DEFAULT
partition, which this table no longer has (migration 0011). A DEFAULT partition has no
range, so PostgreSQL cannot scan the partitions in order while one is attached: every query
without a time bound (the first page, a caller filter) then sorts across all months
instead of reading the newest month's index and stopping. Measured at 10M rows over 41
months: the first page's execution took 2.7 ms with ``cdrs_cdr_default`` attached, 0.19 ms
without it (docs/scaling.md).

``ensure`` creates months ahead (``manage.py cdr_partitions --ensure``, also after every
``migrate``) by cutting them out of the spill partition that covers them;
``split_default`` moves rows that landed in a spill partition into their month's own
partition. Cutting a spill detaches it (a short lock of the whole table, taken with a lock
timeout and retried) and copies its rows, normally none, into the pieces.

A unique index of a partitioned table must contain the partition key, so the database's
primary key is ``(id, started_at)``. ``cdrs_cdr_id`` (id primary key, started_at) keeps ids
unique across partitions: statement triggers on ``cdrs_cdr`` add, move and remove its rows
with every INSERT, UPDATE, DELETE and TRUNCATE through the parent table, so an insert of an
id stored under another ``started_at`` fails on its primary key. Work that bypasses the
parent (attaching or dropping a partition, moving rows between partitions) keeps the
registry itself: moving rows between partitions keeps id and started_at, ``prune`` deletes
the dropped rows' ids, the backfill inserts its ids.

SQLite has none of this: the table stays a plain table and every function here is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import pairwise
from typing import Any, TypeVar

from django.db import OperationalError, transaction
from django.db import connection as default_connection
from psycopg import errors as pg_errors

TABLE = "cdrs_cdr"
REGISTRY = "cdrs_cdr_id"
MONTHS_AHEAD = 3  # months after the current one that ``ensure`` creates
_PREFIX = "cdrs_cdr_p"
SPILL_PREFIX = "cdrs_cdr_spill_"  # cdrs_cdr_spill_<YYYY_MM|min>_<YYYY_MM|max>
LOAD_PREFIX = "cdrs_cdr_load_"  # a backfill's month being loaded: cdrs_cdr_load_YYYY_MM_<pid>_x
# A standalone table with the CDR table's columns, collations, defaults and CHECKs.
LIKE_OPTIONS = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS"

# Planner statistics targets every partition gets (migration 0009 explains why): a new
# partition, made by CREATE TABLE ... PARTITION OF or attached, starts at the default.
COLUMN_STATISTICS = {"caller": 1000, "callee": 1000}

_LOCK_KEY = 0x0CD8_7A27  # pg_advisory_xact_lock: one partition maintainer at a time
# DETACH locks the whole CDR table: never queue every request behind a long read (an
# export) for long; give up and try again instead.
DETACH_LOCK_TIMEOUT_MS = 2000
DETACH_ATTEMPTS = 5
Say = Callable[[str], None]
T = TypeVar("T")


class PartitionError(RuntimeError):
    pass


def _quiet(_text: str) -> None:
    pass


def partition_name(month: date) -> str:
    return f"{_PREFIX}{month.year:04d}_{month.month:02d}"


def spill_name(lo: date | None, hi: date | None) -> str:
    def tag(month: date | None, open_end: str) -> str:
        return open_end if month is None else f"{month.year:04d}_{month.month:02d}"

    return f"{SPILL_PREFIX}{tag(lo, 'min')}_{tag(hi, 'max')}"


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


def _spill_range(name: str) -> tuple[date | None, date | None] | None:
    """The range a spill partition's name says, or None for another name."""
    if not name.startswith(SPILL_PREFIX):
        return None
    parts = name[len(SPILL_PREFIX) :].split("_")
    try:
        lo = None if parts[0] == "min" else date(int(parts.pop(0)), int(parts.pop(0)), 1)
        if lo is None:
            parts.pop(0)
        hi = None if parts == ["max"] else date(int(parts[0]), int(parts[1]), 1)
        if hi is not None and len(parts) != 2:
            return None
    except (ValueError, IndexError):
        return None
    return lo, hi


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
    (PostgreSQL after migration 0008). Asked once per connection object (a process); a
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


def has_default_partition(conn: Any = None) -> bool:
    """Whether ``cdrs_cdr`` still has the DEFAULT partition of migrations 0008-0010: a
    database migrated that far only, whose layout this module does not keep (0011's)."""
    conn = conn or default_connection
    with conn.cursor() as cur:
        cur.execute(
            "SELECT partdefid <> 0 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s)",
            [TABLE],
        )
        row = cur.fetchone()
    return row is not None and bool(row[0])


@dataclass(frozen=True)
class Partition:
    """A partition of ``cdrs_cdr`` over ``[lo, hi)``: a month, or a spill partition."""

    name: str
    lo: date | None  # None: from MINVALUE (a spill partition)
    hi: date | None  # None: to MAXVALUE (a spill partition)
    rows_estimate: int

    @property
    def month(self) -> date | None:
        """The month of a month partition; None for a spill partition."""
        return month_of_name(self.name)

    @property
    def spill(self) -> bool:
        return self.name.startswith(SPILL_PREFIX)

    def covers(self, month: date) -> bool:
        return (self.lo is None or self.lo <= month) and (self.hi is None or month < self.hi)


def _read_partitions(cur: Any) -> list[Partition]:
    cur.execute(
        "SELECT c.relname, greatest(c.reltuples, 0)::bigint FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
        [TABLE],
    )
    result = []
    for name, rows in cur.fetchall():
        if (month := month_of_name(name)) is not None:
            result.append(Partition(name, month, next_month(month), rows))
        elif (spill := _spill_range(name)) is not None:
            result.append(Partition(name, spill[0], spill[1], rows))
    return sorted(result, key=lambda p: date.min if p.lo is None else p.lo)


def partitions(conn: Any = None) -> list[Partition]:
    """The partitions of ``cdrs_cdr`` in the order of their ranges."""
    conn = conn or default_connection
    with conn.cursor() as cur:
        return _read_partitions(cur)


def _spill_over(cur: Any, month: date) -> Partition | None:
    return next((p for p in _read_partitions(cur) if p.spill and p.covers(month)), None)


def spill_covering(cur: Any, month: date) -> str | None:
    """The spill partition whose range holds ``month`` (None when the month has its own)."""
    spill = _spill_over(cur, month)
    return None if spill is None else spill.name


def _range_sql(lo: date | None, hi: date | None) -> tuple[str, list[datetime]]:
    terms, params = ["TRUE"], []
    if lo is not None:
        terms.append("started_at >= %s")
        params.append(month_start(lo))
    if hi is not None:
        terms.append("started_at < %s")
        params.append(month_start(hi))
    return " AND ".join(terms), params


def _spill_months(cur: Any) -> list[date]:
    """The months of the rows in spill partitions (a scan of each: they hold only the rows
    no month took, normally none)."""
    spills = [p.name for p in _read_partitions(cur) if p.spill]
    if not spills:
        return []
    cur.execute(
        " UNION ".join(
            f"SELECT date_trunc('month', started_at AT TIME ZONE 'UTC')::date FROM {name}"
            for name in spills
        )
        + " ORDER BY 1"
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


def _bounds_sql(lo: date | None, hi: date | None) -> str:
    start = "MINVALUE" if lo is None else bound(month_start(lo))
    end = "MAXVALUE" if hi is None else bound(month_start(hi))
    return f"FROM ({start}) TO ({end})"


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


def _create_partition(cur: Any, name: str, lo: date | None, hi: date | None) -> None:
    cur.execute(f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES {_bounds_sql(lo, hi)}")
    tune_statistics(cur, name)


def copy_rows(cur: Any, source: str, targets: list[Partition]) -> dict[str, int]:
    """Copy every row of the table ``source`` into the partition of ``targets`` whose range
    holds it (straight into the partition: the parent's triggers do not run, and id and
    started_at stay, so the id registry stays as it is); rows per target. Raises when a
    row has no target, rolling the caller's transaction back."""
    cur.execute(f"SELECT count(*) FROM {source}")
    total = int(cur.fetchone()[0])
    moved: dict[str, int] = {}
    if total:
        cur.execute(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            [TABLE],
        )
        columns = cur.fetchone()[0]
        for target in targets:
            where, params = _range_sql(target.lo, target.hi)
            cur.execute(
                f"INSERT INTO {target.name} ({columns}) SELECT {columns} FROM {source} "
                f"WHERE {where}",
                params,
            )
            if cur.rowcount:
                moved[target.name] = cur.rowcount
    if sum(moved.values()) != total:
        raise PartitionError(f"{source}: {total - sum(moved.values())} rows have no partition")
    return moved


def _reshape(cur: Any, olds: list[Partition], news: list[Partition]) -> dict[str, int]:
    """Replace the partitions ``olds`` by ``news`` over the same ranges, cut differently (a
    range both leave out must hold no row); rows moved per new partition. Takes the lock
    DETACH takes: the whole CDR table, until the transaction ends."""
    for old in olds:
        cur.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {old.name}")
    for new in news:
        _create_partition(cur, new.name, new.lo, new.hi)
    moved: dict[str, int] = {}
    for old in olds:
        for name, rows in copy_rows(cur, old.name, news).items():
            moved[name] = moved.get(name, 0) + rows
        cur.execute(f"DROP TABLE {old.name}")
    return moved


def _spill(lo: date | None, hi: date | None) -> Partition:
    return Partition(spill_name(lo, hi), lo, hi, 0)


def carve(cur: Any, month: date, *, make_month: bool = True) -> tuple[str, dict[str, int]] | None:
    """Cut ``month`` out of the spill partition that covers it: the spill is replaced by the
    month's partition (or, with ``make_month=False``, a hole the caller attaches a table
    into in the same transaction) and spills over what is left on either side. Returns the
    spill's name and the rows moved per new partition; None when no spill covers the month
    (it has a partition of its own, or was just detached by the caller)."""
    spill = _spill_over(cur, month)
    if spill is None:
        return None
    after = next_month(month)
    news = []
    if spill.lo != month:
        news.append(_spill(spill.lo, month))
    if make_month:
        news.append(Partition(partition_name(month), month, after, 0))
    if spill.hi != after:
        news.append(_spill(after, spill.hi))
    return spill.name, _reshape(cur, [spill], news)


def _gaps(parts: list[Partition]) -> list[tuple[date | None, date | None]]:
    if not parts:
        return [(None, None)]
    gaps: list[tuple[date | None, date | None]] = []
    if parts[0].lo is not None:
        gaps.append((None, parts[0].lo))
    gaps += [(a.hi, b.lo) for a, b in pairwise(parts) if a.hi != b.lo]
    if parts[-1].hi is not None:
        gaps.append((parts[-1].hi, None))
    return gaps


def cover(cur: Any, say: Say = _quiet) -> list[str]:
    """Give every range no partition covers (a pruned month, or before the first and after
    the last after a conversion) a spill partition, merged with the spills next to it;
    returns the names created."""
    created = []
    while gaps := _gaps(parts := _read_partitions(cur)):
        lo, hi = gaps[0]
        left = next((p for p in parts if p.spill and lo is not None and p.hi == lo), None)
        right = next((p for p in parts if p.spill and hi is not None and p.lo == hi), None)
        new = _spill(left.lo if left else lo, right.hi if right else hi)
        _reshape(cur, [p for p in (left, right) if p is not None], [new])
        created.append(new.name)
        say(f"created {new.name}")
    return created


def serialize(cur: Any) -> None:
    """Take the partition maintainers' lock (until the transaction ends): one at a time."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


def set_lock_timeout(cur: Any) -> None:
    cur.execute(f"SET LOCAL lock_timeout = {DETACH_LOCK_TIMEOUT_MS}")


def with_lock_retries(work: Callable[[], T], *, what: str, say: Say = _quiet) -> T:
    """Run ``work``, a transaction that detaches under ``set_lock_timeout``, again while its
    lock wait times out (a long read holds the CDR table), up to ``DETACH_ATTEMPTS`` times."""
    for attempt in range(1, DETACH_ATTEMPTS + 1):
        try:
            return work()
        except OperationalError as exc:
            if not isinstance(exc.__cause__, pg_errors.LockNotAvailable):
                raise
            say(f"{what}: the CDR table stayed busy (attempt {attempt}), trying again")
            time.sleep(0.1 * attempt)
    raise PartitionError(f"could not change {what}: the CDR table stayed busy")


def ensure(
    *,
    ahead: int = MONTHS_AHEAD,
    first: date | None = None,
    conn: Any = None,
    say: Say = _quiet,
    today: date | None = None,
) -> list[str]:
    """Create the month partitions from ``first`` (default: this month) to ``ahead`` months
    after this one, and spill partitions over any range left uncovered; returns the names
    created. Idempotent.

    A month whose rows sit in a spill partition is left for ``split_default``, which moves
    them (ensure stays cheap: the rows could be many).
    """
    conn = conn or default_connection
    if not is_partitioned(conn):
        say("nothing to do: cdrs_cdr is not partitioned (SQLite, or not migrated)")
        return []
    if has_default_partition(conn):
        say("nothing to do: cdrs_cdr still has its DEFAULT partition (run migrate)")
        return []
    drop_orphan_loads(conn=conn, say=say)
    today = today or datetime.now(UTC).date()
    last = month_of(today)
    for _ in range(ahead):
        last = next_month(last)

    def work() -> list[str]:
        with transaction.atomic(using=conn.alias), conn.cursor() as cur:
            # Two app servers running migrate at once: one creates, the other then sees it.
            serialize(cur)
            set_lock_timeout(cur)
            created = cover(cur, say)
            existing = {p.month for p in _read_partitions(cur)}
            waiting = set(_spill_months(cur))
            for month in months(first or month_of(today), last):
                if month in existing:
                    continue
                if month in waiting:
                    say(f"{partition_name(month)}: rows wait in a spill partition: --split-default")
                    continue
                carve(cur, month)
                created.append(partition_name(month))
                say(f"created {partition_name(month)}")
            return created

    return with_lock_retries(work, what="the partitions", say=say)


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
    """Move the rows that landed in spill partitions into their months' own partitions;
    returns rows per partition. One month per transaction: the spill is cut around the
    month (``carve``), which moves its rows."""
    conn = conn or default_connection
    if not is_partitioned(conn):
        say("nothing to do: cdrs_cdr is not partitioned (SQLite, or not migrated)")
        return {}
    moved: dict[str, int] = {}
    with conn.cursor() as cur:
        waiting = _spill_months(cur)
    for month in waiting:
        name = partition_name(month)

        def work(month: date = month) -> tuple[str, int] | None:
            with transaction.atomic(using=conn.alias), conn.cursor() as cur:
                serialize(cur)
                set_lock_timeout(cur)
                cut = carve(cur, month)
                if cut is None:  # split meanwhile by another run
                    return None
                spill, rows = cut
                return spill, rows.get(partition_name(month), 0)

        done = with_lock_retries(work, what=name, say=say)
        if done is not None:
            moved[name] = done[1]
            say(f"moved {done[1]:,} rows from {done[0]} to {name}")
    return moved


def attach_month(cur: Any, table: str, month: date) -> None:
    """Attach a standalone table as ``month``'s partition without a validation scan.

    The spill partition covering the month, if any, is cut around it first (it must hold
    no row of the month). A CHECK constraint matching the bound proves the rows fit
    (PostgreSQL skips the scan when one implies the partition constraint); it is dropped
    once attached. The indexes the parent has are created on the table before it is
    attached, or by the attach.
    """
    carve(cur, month, make_month=False)
    lo, hi = bound(month_start(month)), bound(month_start(next_month(month)))
    check = f"{table}_bound"
    cur.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK (started_at IS NOT NULL "
        f"AND started_at >= {lo} AND started_at < {hi})"
    )
    tune_statistics(cur, table)
    cur.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {table} FOR VALUES FROM ({lo}) TO ({hi})")
    cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {check}")
