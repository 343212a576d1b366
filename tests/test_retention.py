"""manage.py prune_cdrs: retention by a time bound, with the count and rollups kept exact."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from cdrs import partitions, rollup
from cdrs.ids import encode_id
from cdrs.models import Cdr
from cdrs.selectors import cdr_total
from cdrs.services import cdr_ingest
from cdrs.validation import validate_cdr
from tests.factories import cdr_payload, create_cdrs

pytestmark = pytest.mark.django_db


def _prune(*args: str) -> str:
    out = io.StringIO()
    call_command("prune_cdrs", *args, stdout=out)
    return out.getvalue()


def _rollup_by_hour() -> dict[tuple[object, ...], tuple[int, ...]]:
    """The rollups summed over slots (zero rows left out): what stats requests read."""
    measures = ", ".join(f"sum({m})" for m in rollup.MEASURES)
    found: dict[tuple[object, ...], tuple[int, ...]] = {}
    with connection.cursor() as cur:
        dims = ", ".join(rollup.DIMENSIONS)
        cur.execute(f"SELECT hour, {dims}, {measures} FROM {rollup.TABLE} GROUP BY hour, {dims}")
        for row in cur.fetchall():
            if any(row[6:]):
                found[("stats", *row[:6])] = tuple(int(v) for v in row[6:])
        cur.execute(f"SELECT hour, {measures} FROM {rollup.TOTALS_TABLE} GROUP BY hour")
        for row in cur.fetchall():
            if any(row[1:]):
                found[("totals", row[0])] = tuple(int(v) for v in row[1:])
    return found


def _assert_rollups_exact() -> None:
    kept = _rollup_by_hour()
    with transaction.atomic():
        rollup.rebuild()
        assert _rollup_by_hour() == kept
        transaction.set_rollback(True)


def _spread(first: datetime, days: int, every_hours: int = 7) -> list[int]:
    payloads = [
        cdr_payload(
            started=first + timedelta(hours=h),
            trunk=f"t{h % 3}",
            cost=Decimal(h % 5) + Decimal("0.25"),
        )
        for h in range(0, days * 24, every_hours)
    ]
    return create_cdrs(*payloads)


def test_refuses_to_run_without_a_bound(settings):
    settings.CDR_RETENTION_DAYS = 0
    with pytest.raises(CommandError, match="no bound"):
        _prune()
    with pytest.raises(CommandError, match="400d"):
        _prune("--older-than", "400")
    with pytest.raises(CommandError, match="--before"):
        _prune("--before", "last tuesday")


def test_removes_what_started_before_the_bound_and_keeps_counts_exact():
    _spread(datetime(2024, 1, 1, tzinfo=UTC), days=120)
    bound = datetime(2024, 2, 20, 5, 30, tzinfo=UTC)
    old = Cdr.objects.filter(started_at__lt=bound).count()
    total = Cdr.objects.count()
    assert 0 < old < total

    dry = _prune("--before", "2024-02-20T05:30:00Z", "--dry-run")
    assert f"dry run, nothing removed: {old:,} CDRs" in dry
    assert Cdr.objects.count() == total

    out = _prune("--before", "2024-02-20T05:30:00Z", "--batch", "25")
    assert f"removed {old:,} CDRs" in out
    assert not Cdr.objects.filter(started_at__lt=bound).exists()
    assert Cdr.objects.count() == total - old == cdr_total()
    _assert_rollups_exact()
    assert "removed 0 CDRs" in _prune("--before", "2024-02-20T05:30:00Z")


def test_older_than_defaults_to_cdr_retention_days(settings):
    now = datetime.now(UTC)
    create_cdrs(
        cdr_payload(started=now - timedelta(days=500)),
        cdr_payload(started=now - timedelta(days=10)),
    )
    settings.CDR_RETENTION_DAYS = 400
    assert "removed 1 CDRs" in _prune()
    assert "removed 0 CDRs" in _prune("--older-than", "400d")
    assert "removed 1 CDRs" in _prune("--older-than", "5d")
    assert Cdr.objects.count() == 0 == cdr_total()


@pytest.mark.postgresql
def test_whole_months_go_as_partitions_and_free_their_ids():
    partitions.ensure(first=date(2024, 1, 1), today=date(2024, 6, 1), ahead=0)
    _spread(datetime(2024, 1, 1, tzinfo=UTC), days=150)
    (foreign,) = create_cdrs(
        cdr_payload(id=encode_id(31337), started=datetime(2024, 1, 9, tzinfo=UTC))
    )
    kept = Cdr.objects.filter(started_at__gte=datetime(2024, 3, 10, tzinfo=UTC)).count()

    out = _prune("--before", "2024-03-10")
    assert "dropped cdrs_cdr_p2024_01:" in out and "dropped cdrs_cdr_p2024_02:" in out
    assert "removed" in out and "in 2 whole partition(s)" in out
    names = [p.name for p in partitions.partitions()]
    assert "cdrs_cdr_p2024_01" not in names and "cdrs_cdr_p2024_03" in names
    # The pruned months' range went to the spill partition before them: a late CDR of
    # January still has a place (below).
    assert names[0] == "cdrs_cdr_spill_min_2024_03"
    assert Cdr.objects.count() == kept == cdr_total()
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM cdrs_cdr_id")
        assert cur.fetchone()[0] == kept
        cur.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'cdrs_cdr_pruned%%'")
        assert cur.fetchone()[0] == 0
    _assert_rollups_exact()
    # The pruned CDR's id is free again: a new CDR may carry it.
    again = create_cdrs(
        cdr_payload(id=encode_id(foreign), started=datetime(2024, 5, 2, tzinfo=UTC))
    )
    assert again == [foreign] and Cdr.objects.filter(pk=foreign).count() == 1


def test_a_pruned_cdr_sent_again_is_stored_again():
    """Whatever kept the pruned CDR's natural key (its unique index, or on Citus the key
    table) forgets it: a re-sent copy is a new CDR, not a duplicate of a deleted one."""
    if partitions.is_partitioned():
        partitions.ensure(first=date(2024, 1, 1), today=date(2024, 3, 1), ahead=0)
    whole_month = cdr_payload(started=datetime(2024, 1, 12, tzinfo=UTC))  # a partition goes
    in_a_batch = cdr_payload(started=datetime(2024, 2, 3, tzinfo=UTC))  # deleted in a batch
    kept = cdr_payload(started=datetime(2024, 2, 20, tzinfo=UTC))
    create_cdrs(whole_month, in_a_batch, kept)
    assert "removed 2 CDRs" in _prune("--before", "2024-02-10")
    result = cdr_ingest(rows=[validate_cdr(dict(p)) for p in (whole_month, in_a_batch, kept)])
    assert (result.created, result.duplicates) == (2, 1)
    assert Cdr.objects.count() == 3 == cdr_total()
