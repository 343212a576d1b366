"""cdrs.portsip: the call_cdr -> CDR mapping on its own (pure), every documented variant."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdrs.fields import DIRECTIONS, END_REASONS
from cdrs.ids import decode_id
from cdrs.portsip import PortsipMappingError, map_call_cdr
from cdrs.validation import CdrInvalid, validate_cdr

EVENT = json.loads(
    (Path(__file__).resolve().parent / "fixtures" / "portsip" / "newest.event.json").read_text()
)


def mapped(**overrides: Any) -> dict[str, Any]:
    event = dict(EVENT)
    for key, value in overrides.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return map_call_cdr(event)


def problems(**overrides: Any) -> dict[str, str]:
    with pytest.raises(PortsipMappingError) as caught:
        mapped(**overrides)
    return caught.value.errors


def test_the_newest_example_maps_to_a_valid_cdr():
    cdr = mapped()
    row = validate_cdr(cdr)  # what POST /api/cdrs accepts, unchanged
    assert row["id"] is None  # no cdr_id: ingest assigns one
    assert cdr["started_at"] == "2025-12-02T10:40:00Z"
    assert cdr["did_cid"] == "18005550100" and cdr["trunk"] == "17:936412345678901234"
    assert cdr["service_number"] == "8001" and cdr["duration"] == 57


def test_every_direction_and_end_reason_lands_in_the_contracts_enums():
    from cdrs import portsip

    assert set(portsip.DIRECTIONS.values()) == set(DIRECTIONS)
    assert set(portsip.END_REASONS.values()) == set(END_REASONS)


@pytest.mark.parametrize("zero", ["0", 0, "", None])
def test_zero_or_missing_optional_timestamps_are_null(zero):
    cdr = mapped(answered_time=zero, ring_time=zero, ended_reason="cancelled")
    assert cdr["answered_at"] is None and cdr["rang_at"] is None


@pytest.mark.parametrize(
    "value", [1764672000, "1764672000", " 1764672000 ", Decimal("1764672000.0")]
)
def test_unix_seconds_as_number_or_string(value):
    assert mapped(start_time=value)["started_at"] == "2025-12-02T10:40:00Z"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("start_time", "1764672000000"),  # milliseconds: never sent, never guessed
        ("start_time", "-1"),
        ("start_time", "2025-12-02T10:40:00Z"),
        ("start_time", True),
        ("talk_duration", "57s"),
        ("talk_duration", Decimal("57.5")),
        ("status_code", [0]),
        ("cdr_id", "9223372036854775808"),  # over 2^63 - 1
        ("cdr_id", "abc"),
        ("caller", {"number": "1"}),
        ("caller", 1.5),
        ("direction", "sideways"),
        ("direction", 1),
        ("ended_reason", "hung_up"),
        ("ended_reason", 3),
    ],
)
def test_values_that_cannot_be_mapped_name_the_key(key, value):
    assert key in problems(**{key: value})


def test_numbers_for_string_fields_are_taken_as_their_digits():
    cdr = mapped(caller=15551234567, did=18005550100)
    assert cdr["caller"] == "15551234567" and cdr["did_cid"] == "18005550100"


def test_did_wins_over_did_cid_only_when_not_empty():
    assert mapped(did="", did_cid="555")["did_cid"] == "555"
    assert mapped(did="444", did_cid="555")["did_cid"] == "444"


def test_ended_reason_wins_over_end_reason_only_when_not_empty():
    assert mapped(ended_reason="", end_reason="referred")["end_reason"] == "REFERRED"
    assert mapped(ended_reason="replaced", end_reason="referred")["end_reason"] == "REPLACED"


@pytest.mark.parametrize("reason", ["None", "none", "", None])
def test_unknown_end_reason_of_an_unanswered_call_is_cancelled(reason):
    cdr = mapped(answered_time="0", ended_reason=reason)
    assert cdr["end_reason"] == "CANCELLED"


def test_unknown_end_reason_of_an_answered_call_is_refused_not_invented():
    assert "ended_reason" in problems(ended_reason="None")
    assert "end_reason" in problems(ended_reason=None, end_reason="None")


def test_cdr_id_becomes_our_public_id():
    assert decode_id(mapped(cdr_id="798119942409949185")["id"]) == 798119942409949185
    assert "id" not in mapped(cdr_id="0") and "id" not in mapped(cdr_id="")


@pytest.mark.parametrize(
    ("user_data", "service_number"),
    [
        ("user-data=abc;service-number=1111", "1111"),
        ("service-number=2222", "2222"),
        ("Service-Number = 3333 ;user-data=x", "3333"),
        ("plain text", ""),
        ("", ""),
    ],
)
def test_service_number_is_read_from_user_data(user_data, service_number):
    cdr = mapped(user_data=user_data)
    assert cdr["service_number"] == service_number and cdr["user_data"] == user_data


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_keys = st.sampled_from(
    [*sorted(EVENT), "cdr_id", "did_cid", "end_reason", "callee_display_name", "x"]
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _json | st.sampled_from(["0", "1764672000", "in", "None"])))
def test_any_json_object_maps_or_is_refused_never_crashes(overrides):
    """Whatever a PBX sends, the mapping either succeeds or names what it refuses."""
    event = {**EVENT, **overrides}
    try:
        cdr = map_call_cdr(event)
    except PortsipMappingError as exc:
        assert exc.errors
        return
    try:
        validate_cdr(cdr)
    except CdrInvalid as exc:
        assert exc.errors
