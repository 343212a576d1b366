"""Fast backfill: an import's rows for months that hold no CDR load as whole partitions.

Inserting history into the indexed table is the import's slowest part (every row updates
eight indexes and the id registry as it goes). For a month with no stored CDR, nothing
needs checking row by row: ``import_file`` hands its validated rows here, and the rows of
such a month are COPYed into a standalone table without indexes. At the end of the file,
per month, in one transaction:

1. duplicates within the file go, as ``cdr_ingest`` would skip them (the first occurrence
   of a natural key, then of an id, stays): the table's unique constraints are built, and
   only when one fails are the later rows removed;
2. the remaining indexes are built, each once over all the rows (the parent's definitions,
   so ATTACH adopts them instead of building its own);
3. the ids go into the registry (``cdrs.partitions``) with ``ON CONFLICT DO NOTHING``: a
   row whose id is already stored (in another month, or by a concurrent writer) is a
   duplicate, and a generated id that collides is drawn again, as in ``cdr_ingest``;
4. the hourly rollups and the counter get the rows, and the table is attached as the
   month's partition (replacing the month's empty partition if it has one, or cut out of
   the spill partition covering it) after a CHECK constraint matching the bound, so ATTACH
   does not scan it.

The month is checked again under lock before step 3; when a CDR of it was stored meanwhile
(in its partition, or in the spill partition covering it), the month's rows go through the
ordinary insert instead. Months that already hold CDRs always take the ordinary path
(``cdr_ingest``).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, cast

from django.db import IntegrityError, connection, transaction

from cdrs import citus, partitions, rollup
from cdrs.backfill_csv import FastRow, copy_fast_rows
from cdrs.ids import LOW_BITS, LOW_MASK, SNOWFLAKE_EPOCH, snowflake
from cdrs.partitions import REGISTRY, TABLE
from cdrs.services import ID_SEQUENCE, add_to_counter, next_low_bits
from cdrs.validation import INSERT_COLUMNS, CdrInvalid, validate_cdr

LOAD_PREFIX = partitions.LOAD_PREFIX
GENERATED = "cdr_backfill_generated"  # per connection: ids this import drew itself
_COLS = ", ".join(INSERT_COLUMNS)
_EPOCH_MS = int(SNOWFLAKE_EPOCH.timestamp() * 1000)
# ``ids.snowflake`` in SQL, for redrawing a colliding generated id (rare).
_SNOWFLAKE_SQL = (
    f"((greatest(floor(extract(epoch FROM started_at) * 1000)::bigint - {_EPOCH_MS}, 0) "
    f"<< {LOW_BITS}) | (nextval('{ID_SEQUENCE}') & {LOW_MASK}))"
)


@dataclass
class MonthResult:
    month: date
    created: int = 0
    duplicates: int = 0
    attached: bool = False  # False: went through the ordinary insert (the month filled)


@dataclass
class Backfill:
    """The months of one import that load as partitions; ``route`` then ``finish``."""

    tables: dict[date, str | None] = field(default_factory=dict)  # None: ordinary path
    staged: dict[date, int] = field(default_factory=dict)
    _partitions: set[date] | None = None

    @staticmethod
    def available() -> bool:
        # Not on Citus: a load table would have to be distributed (co-located, without the
        # natural key's unique index, which Citus refuses) before it could be attached, and
        # the generated-id redraw is a volatile UPDATE Citus refuses. Imports there take the
        # ordinary path (docs/scaling.md, "Citus").
        return (
            partitions.is_partitioned()
            and not partitions.has_default_partition()
            and not citus.in_use()
        )

    def _holds_rows(self, cur: Any, month: date) -> bool:
        if self._partitions is None:
            self._partitions = {p.month for p in partitions.partitions() if p.month}
        lo = partitions.month_start(month)
        hi = partitions.month_start(partitions.next_month(month))
        # No spill covering the month: it has its own partition (maybe made meanwhile).
        spill = None if month in self._partitions else partitions.spill_covering(cur, month)
        if spill is None:
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM {partitions.partition_name(month)})")
        else:
            cur.execute(
                f"SELECT EXISTS (SELECT 1 FROM {spill} WHERE started_at >= %s AND started_at < %s)",
                [lo, hi],
            )
        return bool(cur.fetchone()[0])

    def _table_for(self, cur: Any, month: date) -> str | None:
        if month not in self.tables:
            if self._holds_rows(cur, month):
                self.tables[month] = None
            else:
                # The loading connection's pid in the name: partitions.drop_orphan_loads
                # drops the tables of imports whose connection is gone (killed mid-file).
                pid = _scalar(cur, "SELECT pg_backend_pid()")
                name = f"{LOAD_PREFIX}{month:%Y_%m}_{pid}_{secrets.token_hex(3)}"
                cur.execute(f"CREATE TABLE {name} (LIKE {TABLE} {partitions.LIKE_OPTIONS})")
                self.tables[month] = name
                self.staged[month] = 0
        return self.tables[month]

    def route(self, rows: Sequence[dict[str, Any] | FastRow]) -> list[dict[str, Any]]:
        """COPY the rows of empty months into their tables; returns the other rows."""
        ordinary: list[dict[str, Any]] = []
        by_month: dict[date, list[dict[str, Any] | FastRow]] = {}
        with connection.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {GENERATED} (id bigint)")
            for row in rows:
                if isinstance(row, FastRow):
                    month = row.month
                else:
                    started = row["started_at"].astimezone(UTC)
                    month = date(started.year, started.month, 1)
                if self._table_for(cur, month) is None:
                    ordinary.append(_validated(row) if isinstance(row, FastRow) else row)
                else:
                    by_month.setdefault(month, []).append(row)
            new_ids: list[int] = []
            for month, staged in by_month.items():
                missing = [row for row in staged if _id_of(row) is None]
                for row, low in zip(missing, next_low_bits(len(missing)), strict=True):
                    new_ids.append(_set_id(row, snowflake(_started_at(row), low)))
                table = self.tables[month]
                assert table is not None
                self._copy(cur, table, staged)
                self.staged[month] += len(staged)
            if new_ids:
                cur.execute(f"INSERT INTO {GENERATED} (id) SELECT unnest(%s::bigint[])", [new_ids])
        return ordinary

    @staticmethod
    def _copy(cur: Any, table: str, rows: Sequence[dict[str, Any] | FastRow]) -> None:
        """COPY in file order (the first of two duplicates stays): canonical CSV rows as
        text, validated rows value by value."""
        for fast, run in itertools.groupby(rows, key=lambda row: isinstance(row, FastRow)):
            with connection.wrap_database_errors:  # as services._stage_rows
                if fast:
                    copy_fast_rows(cur.connection.cursor(), table, cast(list[FastRow], list(run)))
                    continue
                with cur.connection.cursor().copy(f"COPY {table} ({_COLS}) FROM STDIN") as copy:
                    for row in cast(Iterator[dict[str, Any]], run):
                        copy.write_row([row[c] for c in INSERT_COLUMNS])

    def finish(self) -> Iterator[MonthResult]:
        """Attach every staged month (see the module's steps); one result per month."""
        for month, table in sorted(self.tables.items()):
            if table is not None:
                with transaction.atomic():
                    yield _finish_month(month, table)
        with connection.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {GENERATED}")
        self.tables.clear()

    def abandon(self) -> None:
        """Drop the staging tables of a lenient import that failed or was interrupted (a
        re-run loads those months again); best effort: the connection may be gone."""
        try:
            with connection.cursor() as cur:
                for table in self.tables.values():
                    if table is not None:
                        cur.execute(f"DROP TABLE IF EXISTS {table}")
        except Exception:  # the import's own error is the one to report
            pass
        self.tables.clear()


def _id_of(row: dict[str, Any] | FastRow) -> int | None:
    return row.id if isinstance(row, FastRow) else row["id"]


def _set_id(row: dict[str, Any] | FastRow, cdr_id: int) -> int:
    if isinstance(row, FastRow):
        row.id = cdr_id
    else:
        row["id"] = cdr_id
    return cdr_id


def _started_at(row: dict[str, Any] | FastRow) -> datetime:
    return row.started_at if isinstance(row, FastRow) else row["started_at"]


def _validated(row: FastRow) -> dict[str, Any]:
    """A canonical row bound for the ordinary path (its month holds CDRs) as
    ``validate_cdr`` makes it; it passed the stricter canonical check already."""
    try:
        return validate_cdr(row.as_item(), text=True)
    except CdrInvalid as exc:  # a bug in cdrs.backfill_csv, never the file's fault
        raise RuntimeError(f"canonical CSV row failed validation: {exc}") from exc


def _scalar(cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
    cur.execute(sql, params)
    return cur.fetchone()[0]


def _keep_first(cur: Any, table: str, columns: str) -> int:
    """Delete every row but the first (file order) of each value of ``columns``."""
    cur.execute(
        f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() "
        f"OVER (PARTITION BY {columns} ORDER BY ctid) AS n FROM {table}) x WHERE n > 1)"
    )
    return int(cur.rowcount)


def _unique_or_dedupe(cur: Any, table: str, name: str, kind: str, columns: str) -> int:
    """Add a unique constraint; when the file held duplicates, drop the later ones first."""
    sql = f"ALTER TABLE {table} ADD CONSTRAINT {name} {kind} ({columns})"
    try:
        with transaction.atomic():
            cur.execute(sql)
        return 0
    except IntegrityError:  # unique_violation: the file repeats a key
        removed = _keep_first(cur, table, columns)
        cur.execute(sql)
        return removed


def _redraw_generated(cur: Any, table: str, which: str) -> int:
    """Draw new ids for the generated rows ``which`` selects (by ``t.id``), as
    ``cdr_ingest`` redraws a colliding generated id; returns how many."""
    cur.execute(
        f"WITH redrawn AS (UPDATE {table} t SET id = {_SNOWFLAKE_SQL} FROM {GENERATED} g "
        f"WHERE t.id = g.id AND {which} RETURNING t.id) "
        f"INSERT INTO {GENERATED} (id) SELECT id FROM redrawn"
    )
    return int(cur.rowcount)


def _dedupe_ids(cur: Any, table: str) -> int:
    """An id twice in the file: generated ones are drawn again, later given ones go."""
    repeated = f"SELECT id FROM {table} GROUP BY id HAVING count(*) > 1"
    if not _scalar(cur, f"SELECT EXISTS ({repeated})"):
        return 0
    _redraw_generated(cur, table, f"t.id IN ({repeated})")
    return _keep_first(cur, table, "id")


def _register_ids(cur: Any, table: str) -> int:
    """Put the table's ids in the registry; rows whose id is already there (stored before,
    or by a concurrent writer) are duplicates, or drawn again when generated. Returns the
    duplicates removed."""
    unregistered = (
        f"NOT EXISTS (SELECT 1 FROM {REGISTRY} r WHERE r.id = t.id AND r.started_at = t.started_at)"
    )
    generated = f"EXISTS (SELECT 1 FROM {GENERATED} g WHERE g.id = t.id)"
    removed = 0
    for _attempt in range(5):
        rows = _scalar(cur, f"SELECT count(*) FROM {table}")
        cur.execute(
            f"INSERT INTO {REGISTRY} (id, started_at) SELECT id, started_at FROM {table} "
            "ON CONFLICT (id) DO NOTHING"
        )
        if cur.rowcount == rows:  # the common case: every id was free
            return removed
        if not _scalar(cur, f"SELECT EXISTS (SELECT 1 FROM {table} t WHERE {unregistered})"):
            return removed
        _redraw_generated(cur, table, unregistered)
        cur.execute(f"DELETE FROM {table} t WHERE {unregistered} AND NOT {generated}")
        removed += cur.rowcount
    raise RuntimeError("could not assign unique ids")  # pragma: no cover


def _finish_month(month: date, table: str) -> MonthResult:
    result = MonthResult(month=month)
    existing = partitions.partition_name(month)
    with connection.cursor() as cur:
        cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
        # 1. Duplicates within the file: natural key first, then id, the first one staying.
        result.duplicates += _unique_or_dedupe(
            cur, table, f"{table}_nk", "UNIQUE", "natural_key, started_at"
        )
        result.duplicates += _dedupe_ids(cur, table)
        cur.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id, started_at)")
        # 2. The parent's other indexes, each built once.
        cur.execute(
            "SELECT pg_get_indexdef(x.indexrelid) FROM pg_index x WHERE x.indrelid = "
            "to_regclass(%s) AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE "
            "c.conindid = x.indexrelid)",
            [TABLE],
        )
        for n, (definition,) in enumerate(cur.fetchall()):
            _, _, rest = definition.partition(" ON ONLY ")
            _, _, columns = rest.partition(" USING ")
            cur.execute(f"CREATE INDEX {table}_{n} ON {table} USING {columns}")
        # 3. The month is still empty (checked under lock), and the ids are free.
        lo = partitions.month_start(month)
        hi = partitions.month_start(partitions.next_month(month))
        partitions.serialize(cur)  # no ensure or split cuts the month's spill meanwhile
        spill = partitions.spill_covering(cur, month)
        has_partition = spill is None
        if has_partition:
            cur.execute(f"LOCK TABLE {existing} IN SHARE MODE")
            filled = _scalar(cur, f"SELECT EXISTS (SELECT 1 FROM {existing})")
        else:
            # The spill covering the month is cut around it: no row of the month may come.
            cur.execute(f"LOCK TABLE {spill} IN SHARE MODE")
            filled = _scalar(
                cur,
                f"SELECT EXISTS (SELECT 1 FROM {spill} WHERE started_at >= %s AND started_at < %s)",
                [lo, hi],
            )
        if filled:
            return _insert_instead(cur, table, result)
        result.duplicates += _register_ids(cur, table)
        result.created = _scalar(cur, f"SELECT count(*) FROM {table}")
        # 4. Rollups, counter, then the partition (the short locks come last).
        rollup.add_table(table)
        add_to_counter(result.created)
        if has_partition:
            cur.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {existing}")
            cur.execute(f"DROP TABLE {existing}")
        partitions.attach_month(cur, table, month)
        cur.execute(f"ALTER TABLE {table} RENAME TO {existing}")
        _rename_indexes(cur, existing)
        result.attached = True
    return result


def _rename_indexes(cur: Any, partition: str) -> None:
    """Name the attached table's indexes as ``CREATE TABLE ... PARTITION OF`` would have."""
    cur.execute(
        "SELECT c.relname, p.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
        "JOIN pg_inherits i ON i.inhrelid = x.indexrelid JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE x.indrelid = to_regclass(%s)",
        [partition],
    )
    for child, parent in cur.fetchall():
        cur.execute(f'ALTER INDEX "{child}" RENAME TO "{partition}_{parent}"')


def _insert_instead(cur: Any, table: str, result: MonthResult) -> MonthResult:
    """The month got CDRs meanwhile: its rows go in as ``cdr_ingest`` stores them."""
    _redraw_generated(cur, table, f"EXISTS (SELECT 1 FROM {REGISTRY} r WHERE r.id = t.id)")
    cur.execute(
        f"INSERT INTO {TABLE} ({_COLS}) SELECT {_COLS} FROM {table} s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {REGISTRY} r WHERE r.id = s.id) "
        "ON CONFLICT DO NOTHING RETURNING id"
    )
    ids = [row[0] for row in cur.fetchall()]
    staged = _scalar(cur, f"SELECT count(*) FROM {table}")
    if ids:
        lo = partitions.month_start(result.month)
        hi = partitions.month_start(partitions.next_month(result.month))
        rollup._add_inserted_sql(
            "id = ANY(%s) AND started_at >= %s AND started_at < %s",
            [ids, lo, hi],
            0,
        )
        add_to_counter(len(ids))
    result.created = len(ids)
    result.duplicates += staged - len(ids)
    cur.execute(f"DROP TABLE {table}")
    return result
