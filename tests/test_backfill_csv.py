"""The canonical-CSV fast path of the backfill (cdrs/backfill_csv.py) against validate_cdr.

The fast path may decline any row (it then takes validate_cdr), but a row it accepts must be
one validate_cdr accepts, with the same values once PostgreSQL has parsed the COPY text. The
import-level checks (same rows stored as the ordinary path) are in tests/test_backfill.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdrs.backfill_csv import CanonicalCsv, FastRow
from cdrs.fields import ALL_FIELD_NAMES, CDR_FIELDS, FIELDS_BY_NAME, Kind
from cdrs.ids import encode_id
from cdrs.validation import STARTED_AT_MAX, CdrInvalid, validate_cdr
from cdrs.values import format_ts
from cdrs.wire import csv_escape

HEADER = list(ALL_FIELD_NAMES)
CANONICAL = CanonicalCsv.for_header(HEADER)


def _cells(**overrides: str) -> list[str]:
    """A valid row in the export's form (every cell a string, csv_escape applied)."""
    values = {
        "id": encode_id(123456789),
        "caller": "+4930123",
        "caller_domain": "pbx.example.com",
        "caller_display_name": "Dmitri O'Brien",
        "callee": "102",
        "callee_domain": "pbx.example.com",
        "callee_display_name": "",
        "started_at": "2025-03-31T23:59:59Z",
        "rang_at": "2025-04-01T00:00:01Z",
        "answered_at": "",
        "ended_at": "2025-04-01T00:00:30Z",
        "call_id": "abc@pbx",
        "direction": "INBOUND_CALL",
        "end_reason": "CANCELLED",
        "reroute_reason": "",
        "status_code": "487",
        "destination": "102",
        "outbound_caller_id": "",
        "did_cid": "+4930999",
        "trunk": "twilio",
        "duration": "0",
        "cost": "-0.125",
        "billed_account": "",
        "service_number": "",
        "user_data": "",
    }
    values.update(overrides)
    return [csv_escape(values[name]) for name in HEADER]


def _unescaped(cells: list[str]) -> dict[str, str]:
    return {h: c[1:] if c[:1] == "'" else c for h, c in zip(HEADER, cells, strict=True)}


def _copy_values(row: FastRow) -> dict[str, Any]:
    """What PostgreSQL stores from the COPY text (text format: \\N is NULL)."""
    texts = row.text.split("\t")
    values: dict[str, Any] = {"id": row.id}
    for name, text in zip(row.source.columns[1:], texts, strict=True):
        if text == r"\N":
            values[name] = None
            continue
        kind = FIELDS_BY_NAME[name].kind if name in FIELDS_BY_NAME else None
        if kind is Kind.TIMESTAMP:
            values[name] = datetime.fromisoformat(text)
        elif kind is Kind.INTEGER:
            values[name] = int(text)
        elif kind is Kind.DECIMAL:
            values[name] = Decimal(text)
        else:
            values[name] = text
    return values


def _assert_same_as_validate_cdr(cells: list[str]) -> FastRow | None:
    assert CANONICAL is not None
    row = CANONICAL.parse(list(cells))
    try:
        expected = validate_cdr(_unescaped(cells), text=True)
    except CdrInvalid:
        assert row is None, f"the fast path accepted a row validate_cdr rejects: {cells}"
        return None
    if row is not None:
        assert _copy_values(row) == expected
        assert row.started_at == expected["started_at"]
        assert row.month == expected["started_at"].date().replace(day=1)
        assert validate_cdr(row.as_item(), text=True) == expected
    return row


def test_an_exported_row_takes_the_fast_path_with_the_same_values():
    row = _assert_same_as_validate_cdr(_cells())
    assert row is not None
    assert row.id == 123456789
    assert row.month.isoformat() == "2025-03-01"  # the UTC month of started_at


def test_a_row_without_id_gets_none_and_keeps_every_other_value():
    row = _assert_same_as_validate_cdr(_cells(id=""))
    assert row is not None and row.id is None


@pytest.mark.parametrize(
    "field, cell",
    [
        ("started_at", "2025-02-29T10:00:00Z"),  # not a leap year
        ("ended_at", "2024-04-31T10:00:00Z"),
        ("started_at", "2025-03-01T10:00:00+01:00"),  # valid, but not the canonical form
        ("started_at", "2025-03-01T10:00:00.5Z"),
        ("started_at", "1969-12-31T23:59:59Z"),
        ("started_at", "2999-01-01T00:00:00Z"),  # past the last snowflake second
        ("rang_at", "2025-03-01 10:00:00Z"),
        ("status_code", "0487"),
        ("status_code", "1000"),
        ("duration", "2147483648"),
        ("duration", "1e3"),
        ("duration", ""),
        ("cost", "1.1234567"),
        ("cost", "1234567890.5"),
        ("cost", "1E+2"),
        ("direction", "inbound_call"),
        ("end_reason", ""),
        ("caller", "x" * 129),
        ("caller", "tab\there"),
        ("caller", "back\\slash"),
        ("user_data", "line\nbreak"),
        ("user_data", "nul\x00byte"),
        ("id", "not base64!"),
        ("id", "MTI"),  # base64 of "12" without padding: valid, and canonical
        ("id", "MTI="),
    ],
)
def test_other_forms_are_left_to_validate_cdr_or_agree_with_it(field, cell):
    row = _assert_same_as_validate_cdr(_cells(**{field: cell}))
    if field == "id" and cell.startswith("MTI"):
        assert row is not None and row.id == 12


def test_a_header_without_every_field_turns_the_fast_path_off():
    assert CanonicalCsv.for_header([n for n in HEADER if n != "cost"]) is None
    assert CanonicalCsv.for_header([n for n in HEADER if n != "id"]) is not None


def _cell_strategy(name: str) -> st.SearchStrategy[str]:
    f = FIELDS_BY_NAME[name]
    odd = st.sampled_from(["", " ", "\t", "\\", "'", "'-1", "=1", "\x00", "é", "\n"])
    if f.kind is Kind.ID:
        good = st.integers(1, 2**63 - 1).map(encode_id)
        return st.one_of(good, st.just(""), st.text(max_size=12))
    if f.kind is Kind.TIMESTAMP:
        # Around both ends of the accepted range (1970, the last snowflake second in 2069).
        moments = st.datetimes(
            min_value=datetime(1969, 6, 1), max_value=datetime(2070, 6, 1), timezones=st.just(UTC)
        )
        edges = st.one_of(
            st.datetimes(min_value=datetime(1969, 12, 31), max_value=datetime(1970, 1, 2)),
            st.datetimes(
                min_value=STARTED_AT_MAX.replace(tzinfo=None) - timedelta(seconds=5),
                max_value=STARTED_AT_MAX.replace(tzinfo=None) + timedelta(seconds=5),
            ),
        ).map(lambda d: d.replace(tzinfo=UTC))
        good = st.one_of(moments, edges).map(lambda d: format_ts(d.replace(microsecond=0)) or "")
        days = st.tuples(st.integers(1969, 2071), st.integers(0, 13), st.integers(27, 32))
        bad_days = days.map(lambda t: f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T00:00:00Z")
        offsets = moments.map(lambda d: d.isoformat())
        return st.one_of(good, bad_days, offsets, odd)
    if f.kind is Kind.ENUM:
        choices = st.sampled_from([c for c in f.choices] + [c.lower() for c in f.choices if c])
        return st.one_of(choices, odd)
    if f.kind is Kind.INTEGER:
        numbers = st.integers(-5, 2**32).map(str)
        return st.one_of(numbers, st.sampled_from(["00", "1.0", "1e2", "+1", " 7"]), odd)
    if f.kind is Kind.DECIMAL:
        amounts = st.decimals(allow_nan=False, allow_infinity=False, places=7).map(
            lambda d: format(d, "f")
        )
        return st.one_of(amounts, st.sampled_from(["-0", "0.10", ".5", "5.", "1e2"]), odd)
    assert f.max_length is not None
    return st.one_of(st.text(max_size=f.max_length + 2), odd)


# A base row with one to four cells replaced by drawn ones: most rows stay close enough to
# the canonical form that the interesting boundary is what gets exercised.
ROWS = st.dictionaries(
    st.sampled_from([f.name for f in CDR_FIELDS]),
    st.none(),
    min_size=1,
    max_size=4,
).flatmap(lambda picked: st.fixed_dictionaries({n: _cell_strategy(n) for n in picked}))


TIMESTAMPS = st.fixed_dictionaries(
    {f.name: _cell_strategy(f.name) for f in CDR_FIELDS if f.kind is Kind.TIMESTAMP}
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS)
def test_whatever_the_fast_path_accepts_validate_cdr_accepts_with_the_same_values(cells):
    _assert_same_as_validate_cdr(_cells(**cells))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TIMESTAMPS)
def test_timestamps_near_the_range_ends_and_month_ends_agree_with_validate_cdr(cells):
    _assert_same_as_validate_cdr(_cells(**cells))


def test_a_header_without_the_id_column_gives_the_same_values():
    header = [n for n in HEADER if n != "id"]
    canonical = CanonicalCsv.for_header(header)
    assert canonical is not None
    cells = dict(zip(HEADER, _cells(answered_at="", cost=""), strict=True))
    del cells["id"]
    row = canonical.parse(list(cells.values()))
    assert row is not None and row.id is None
    expected = validate_cdr(_unescaped(_cells(id="", answered_at="", cost="")), text=True)
    assert _copy_values(row) == expected
