"""Fast backfill (PostgreSQL): an import's empty months load as whole partitions, with the
de-duplication, counter and rollups of the ordinary path."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from cdrs import jsonenc, rollup
from cdrs.backfill import Backfill
from cdrs.fields import ALL_FIELD_NAMES
from cdrs.ids import encode_id
from cdrs.models import Cdr
from cdrs.selectors import cdr_total
from cdrs.validation import validate_cdr
from cdrs.wire import CsvLines, csv_cell, csv_writer
from tests.factories import cdr_payload, create_cdrs

pytestmark = [pytest.mark.postgresql, pytest.mark.django_db]


def _at(month: int, day: int, year: int = 2023) -> datetime:
    return datetime(year, month, day, 9, 30, tzinfo=UTC)


def _write(path: Path, payloads: list[dict[str, Any]]) -> Path:
    """NDJSON, or CSV in the export's dialect (every field a column) for a .csv path: the
    rows in the export's form take the canonical-CSV fast path (cdrs/backfill_csv.py)."""
    if path.suffix != ".csv":
        path.write_bytes(b"".join(jsonenc.dumps(p) + b"\n" for p in payloads))
        return path
    lines = CsvLines()
    writer = csv_writer(lines)
    writer.writerow(ALL_FIELD_NAMES)
    for payload in payloads:
        writer.writerow([csv_cell(payload.get(name)) for name in ALL_FIELD_NAMES])
    path.write_text(lines.pop(), encoding="utf-8")
    return path


def _import(path: Path, *args: str) -> str:
    out = io.StringIO()
    call_command(
        "import_cdrs", str(path), "--no-trailer", "--quiet", *args, stdout=out, stderr=io.StringIO()
    )
    return out.getvalue()


def _scalar(sql: str, params: list[Any] | None = None) -> Any:
    with connection.cursor() as cur:
        cur.execute(sql, params or [])
        return cur.fetchone()[0]


def _rollups() -> list[tuple[Any, ...]]:
    sums = ", ".join(f"sum({m})" for m in rollup.MEASURES)
    with connection.cursor() as cur:
        cur.execute(f"SELECT hour, {sums} FROM {rollup.TOTALS_TABLE} GROUP BY hour ORDER BY hour")
        return [row for row in cur.fetchall() if any(row[1:])]


@pytest.mark.no_citus(
    "no fast backfill on Citus (Backfill.available() is false there): test_citus.py checks "
    "that an import of empty months takes the ordinary path"
)
@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_empty_months_load_as_partitions_with_every_duplicate_skipped(tmp_path, client_ro, fmt):
    (stored,) = create_cdrs(cdr_payload(id=encode_id(1001), started=_at(1, 10, 2022)))
    first = cdr_payload(started=_at(3, 5))
    payloads = [
        first,
        dict(first),  # the same CDR again (natural key)
        cdr_payload(id=encode_id(2001), started=_at(3, 6)),
        cdr_payload(id=encode_id(2001), started=_at(4, 7)),  # its id again, another month
        cdr_payload(id=encode_id(2001), started=_at(3, 8)),  # and the same month
        cdr_payload(id=encode_id(stored), started=_at(3, 9)),  # an id stored in 2022
        *[cdr_payload(started=_at(3, 1) + timedelta(hours=h * 90)) for h in range(24)],
        cdr_payload(started=_at(1, 20, 2022)),  # a month holding a CDR: the ordinary path
    ]
    out = _import(_write(tmp_path / f"history.{fmt}", payloads))
    assert "read 31, created 27, duplicates 4, rejected 0" in out
    assert "26 of them loaded as 3 new month partition(s)" in out
    assert Cdr.objects.count() == 28 == cdr_total()
    assert _scalar("SELECT count(*) FROM cdrs_cdr_id") == 28
    assert Cdr.objects.get(pk=2001).started_at == _at(3, 6)
    assert Cdr.objects.get(pk=stored).started_at == _at(1, 10, 2022)
    for month in ("2023_03", "2023_04", "2023_05"):
        name = f"cdrs_cdr_p{month}"
        assert _scalar(f"SELECT count(*) FROM {name}") > 0
        # Every index of the CDR table, adopted by the partition (none built twice).
        assert _scalar(
            "SELECT count(*) FROM pg_index WHERE indrelid = to_regclass(%s)", [name]
        ) == _scalar("SELECT count(*) FROM pg_index WHERE indrelid = 'cdrs_cdr'::regclass")
    assert _scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'cdrs_cdr_load%%'") == 0
    # Read back through the API, and the rollups are what a rebuild computes.
    response = client_ro.get(f"/api/cdrs/{encode_id(2001)}")
    assert response.status_code == 200
    kept = _rollups()
    with transaction.atomic():
        rollup.rebuild()
        assert _rollups() == kept
        transaction.set_rollback(True)
    # Importing the same file again: every row is a duplicate, nothing is backfilled.
    again = _import(tmp_path / f"history.{fmt}")
    assert "read 31, created 0, duplicates 31, rejected 0" in again
    assert "new month partition" not in again


def test_no_backfill_gives_the_same_counts(tmp_path):
    payloads = [cdr_payload(started=_at(6, 1) + timedelta(hours=h)) for h in range(40)]
    payloads.append(dict(payloads[3]))
    out = _import(_write(tmp_path / "a.ndjson", payloads), "--no-backfill")
    assert "read 41, created 40, duplicates 1, rejected 0" in out
    assert "new month partition" not in out
    assert Cdr.objects.count() == 40 == cdr_total()


def test_a_strict_import_with_an_invalid_row_leaves_nothing(tmp_path):
    payloads = [cdr_payload(started=_at(7, 1) + timedelta(hours=h)) for h in range(30)]
    payloads.append(cdr_payload(direction="SIDEWAYS"))
    with pytest.raises(SystemExit):
        _import(_write(tmp_path / "bad.ndjson", payloads))
    assert Cdr.objects.count() == 0 == cdr_total()
    assert _scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'cdrs_cdr_load%%'") == 0


@pytest.mark.no_citus(
    "no fast backfill on Citus (Backfill.available() is false there): test_citus.py checks "
    "that an import of empty months takes the ordinary path"
)
def test_a_month_that_fills_meanwhile_takes_the_ordinary_insert():
    months = Backfill()
    rows = [validate_cdr(cdr_payload(started=_at(8, 2) + timedelta(hours=h))) for h in range(10)]
    assert months.route(rows) == []  # all staged: August 2023 is empty
    create_cdrs(cdr_payload(started=_at(8, 20)))  # then a CDR of August arrives
    (result,) = months.finish()
    assert (result.attached, result.created, result.duplicates) == (False, 10, 0)
    assert Cdr.objects.count() == 11 == cdr_total()
    assert _scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'cdrs_cdr_load%%'") == 0


def test_the_export_trailer_check_still_refuses_a_cut_file(tmp_path):
    payloads = [cdr_payload(started=_at(9, 1) + timedelta(hours=h)) for h in range(5)]
    path = _write(tmp_path / "cut.ndjson", payloads)
    with pytest.raises(CommandError):
        call_command("import_cdrs", str(path), "--quiet", stdout=io.StringIO())
    assert Cdr.objects.count() == 0


def _stored() -> list[tuple[Any, ...]]:
    """Every stored CDR by natural key: the values, without the generated ids."""
    names = [f for f in ALL_FIELD_NAMES if f != "id"]
    return sorted(Cdr.objects.values_list("natural_key", *names))


@pytest.mark.no_citus(
    "no fast backfill on Citus (Backfill.available() is false there): test_citus.py checks "
    "that an import of empty months takes the ordinary path"
)
def test_a_csv_backfill_stores_what_the_ordinary_import_stores(tmp_path):
    """Rows in the export's form (COPY text) and in other valid forms (validate_cdr), mixed,
    with duplicates across the two: the same CDRs as --no-backfill, the first one kept."""
    base = _at(10, 1)
    canonical = [
        cdr_payload(started=base + timedelta(hours=h), cost="0.25", billed_account="acct-7")
        for h in range(30)
    ]
    offset = dict(canonical[4], started_at=(base + timedelta(hours=5)).isoformat())
    offset["call_id"] = "offset-form@pbx"  # +00:00 instead of Z: validate_cdr's path
    repeated_late = dict(canonical[2], duration=999)  # same natural key, later: skipped
    first_slow = dict(canonical[7], call_id="slow-first@pbx", status_code="0200")
    then_fast = dict(first_slow, status_code=200, duration=1)  # duplicate of the slow one
    payloads = [*canonical, offset, repeated_late, first_slow, then_fast]
    payloads.append(cdr_payload(started=_at(11, 3), cost="-1.5", answered_at=None))
    path = _write(tmp_path / "mixed.csv", payloads)
    out = _import(path)
    assert "read 35, created 33, duplicates 2, rejected 0" in out
    assert "33 of them loaded as 2 new month partition(s)" in out
    fast = _stored()
    assert Cdr.objects.get(call_id="slow-first@pbx").duration == 60  # the first one stayed
    assert Cdr.objects.get(call_id=canonical[2]["call_id"]).duration == 60
    assert Cdr.objects.get(call_id=payloads[-1]["call_id"]).cost == Decimal("-1.5")
    Cdr.objects.all().delete()
    plain = _import(path, "--no-backfill")
    assert "read 35, created 33, duplicates 2, rejected 0" in plain
    assert _stored() == fast


@pytest.mark.no_citus(
    "no fast backfill on Citus (Backfill.available() is false there): test_citus.py checks "
    "that an import of empty months takes the ordinary path"
)
def test_a_strict_csv_backfill_with_an_invalid_row_leaves_nothing(tmp_path):
    payloads = [cdr_payload(started=_at(12, 1) + timedelta(hours=h)) for h in range(20)]
    payloads.insert(5, cdr_payload(started=_at(12, 2), status_code=1000))
    with pytest.raises(SystemExit):
        _import(_write(tmp_path / "bad.csv", payloads))
    assert Cdr.objects.count() == 0 == cdr_total()
    assert _scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'cdrs_cdr_load%%'") == 0
