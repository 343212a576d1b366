"""Retention: remove every CDR that started before a bound (``manage.py prune_cdrs``).

On partitioned PostgreSQL a month partition wholly before the bound goes as a whole: its
rows are counted (the partition locked against writes, reads go on), its hours leave the
rollups, it is detached (the only step that locks the CDR table, for milliseconds) and
the counter is lowered, in one transaction; its ids then leave the id registry and the
table is dropped. Whatever remains before the bound (the bound's own month, the spill
partitions, and every row on SQLite) is deleted in batches of ``batch_rows``, each batch a
transaction that also takes its rows out of the counter and the rollups. The counter and
the rollups stay exact throughout: a pruned call leaves the list, the count and the
statistics alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction

from cdrs import citus, partitions, rollup
from cdrs.services import add_to_counter

BATCH_ROWS = 10_000
PRUNED_PREFIX = "cdrs_cdr_pruned_"  # a detached partition whose ids still leave the registry
_ROLLUP_FIELDS = ("id", "started_at", "rang_at", "answered_at", "duration", "cost")


@dataclass
class PruneReport:
    before: datetime
    dry_run: bool
    partitions: list[tuple[str, int, float]] = field(default_factory=list)  # name, rows, s
    deleted: int = 0  # rows deleted in batches
    delete_seconds: float = 0.0
    registry_seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.deleted + sum(rows for _, rows, _ in self.partitions)


Say = Callable[[str], None]


def _quiet(_text: str) -> None:
    pass


def _hour(value: datetime) -> int:
    return int(value.timestamp()) // 3600


def _whole_partitions(before: datetime) -> list[partitions.Partition]:
    return [
        p
        for p in partitions.partitions()
        if p.month is not None and partitions.month_start(partitions.next_month(p.month)) <= before
    ]


def _count(table: str) -> int:
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def _drop_partition(part: partitions.Partition, say: Say) -> tuple[int, float]:
    """Detach a month partition wholly before the bound; (rows, seconds). Its range goes to
    the spill partition before it (``partitions.cover``): a late row of that month still
    has a place."""
    assert part.month is not None
    first = _hour(partitions.month_start(part.month))
    end = _hour(partitions.month_start(partitions.next_month(part.month)))
    pruned = PRUNED_PREFIX + part.name.removeprefix("cdrs_cdr_")

    def detach() -> tuple[int, float, float]:
        started = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cur:
            partitions.serialize(cur)
            # Writers of this month wait; readers do not, until the DETACH below.
            cur.execute(f"LOCK TABLE {part.name} IN SHARE MODE")
            rows = _count(part.name)
            rollup.forget_hours(first, end)
            add_to_counter(-rows)
            partitions.set_lock_timeout(cur)
            locked = time.perf_counter()
            cur.execute(f"ALTER TABLE {partitions.TABLE} DETACH PARTITION {part.name}")
            cur.execute(f"ALTER TABLE {part.name} RENAME TO {pruned}")
            partitions.cover(cur)
        return rows, started, locked

    rows, started, locked = partitions.with_lock_retries(detach, what=part.name, say=say)
    done = time.perf_counter()
    say(
        f"dropped {part.name}: {rows:,} rows in {(done - started) * 1000:,.0f} ms "
        f"(the CDR table locked {(done - locked) * 1000:,.1f} ms)"
    )
    return rows, done - started


def release_pruned_ids(say: Say = _quiet) -> float:
    """Delete the ids of detached partitions from the registry, then drop those tables.

    Until then their ids stay taken: a pruned CDR sent again counts as a duplicate. Also
    finishes the work of a prune that was interrupted after a detach.
    """
    started = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE %s ORDER BY 1",
            [PRUNED_PREFIX.replace("_", r"\_") + "%"],
        )
        names = [row[0] for row in cur.fetchall()]
    for name in names:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(f"DELETE FROM {partitions.REGISTRY} r USING {name} p WHERE r.id = p.id")
            month = partitions.month_of_name("cdrs_cdr_" + name.removeprefix(PRUNED_PREFIX))
            if month is not None:
                citus.forget_keys_between(
                    cur,
                    partitions.month_start(month),
                    partitions.month_start(partitions.next_month(month)),
                )
            cur.execute(f"DROP TABLE {name}")
        say(f"released the ids of {name}")
    return time.perf_counter() - started


def _delete_batch(before: datetime, batch_rows: int) -> int:
    from cdrs.models import Cdr

    with transaction.atomic():
        old = Cdr.objects.filter(started_at__lt=before)
        names = (*_ROLLUP_FIELDS, *rollup.DIMENSIONS)
        # Citus refuses FOR UPDATE on a query of every shard; there each batch's DELETE
        # locks its rows, and a row deleted meanwhile fails the count check below.
        locked = old.order_by() if citus.in_use() else old.order_by().select_for_update()
        rows = list(locked.values(*names)[:batch_rows])
        if not rows:
            return 0
        ids = [row["id"] for row in rows]
        first = min(row["started_at"] for row in rows)
        deleted, _ = old.filter(pk__in=ids, started_at__gte=first).delete()
        assert deleted == len(rows)  # locked above: nobody else deleted them
        citus.forget_deleted(ids)
        rollup.subtract_deleted(rows)
        add_to_counter(-deleted)
    return deleted


def prune(
    *,
    before: datetime,
    dry_run: bool = False,
    batch_rows: int = BATCH_ROWS,
    say: Say = _quiet,
) -> PruneReport:
    """Remove every CDR with started_at < ``before`` (nothing with ``dry_run``)."""
    from cdrs.models import Cdr

    report = PruneReport(before=before, dry_run=dry_run)
    whole = _whole_partitions(before) if partitions.is_partitioned() else []
    if dry_run:
        for part in whole:
            report.partitions.append((part.name, _count(part.name), 0.0))
            say(f"would drop {part.name}: {report.partitions[-1][1]:,} rows")
        remainder = Cdr.objects.filter(started_at__lt=before)
        report.deleted = remainder.count() - sum(rows for _, rows, _ in report.partitions)
        say(f"would delete {report.deleted:,} rows outside those partitions")
        return report
    for part in whole:
        rows, seconds = _drop_partition(part, say)
        report.partitions.append((part.name, rows, seconds))
    if partitions.is_partitioned():
        report.registry_seconds = release_pruned_ids(say)
    started = time.perf_counter()
    while batch := _delete_batch(before, batch_rows):
        report.deleted += batch
        say(f"deleted {report.deleted:,} rows")
    report.delete_seconds = time.perf_counter() - started
    return report
