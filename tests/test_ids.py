from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdrs.ids import ID_MAX, InvalidId, decode_id, encode_id, snowflake, snowflake_time


def test_contract_example_round_trips():
    assert encode_id(700551909773148160) == "NzAwNTUxOTA5NzczMTQ4MTYw"
    assert decode_id("NzAwNTUxOTA5NzczMTQ4MTYw") == 700551909773148160


def test_decode_accepts_missing_padding():
    public = encode_id(12)  # "MTI=" has padding
    assert public.endswith("=")
    assert decode_id(public.rstrip("=")) == 12


@given(st.integers(min_value=1, max_value=ID_MAX))
def test_round_trip_every_positive_64_bit_id(value):
    assert decode_id(encode_id(value)) == value


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "!!!!",
        "MA==",  # "0"
        "LTE=",  # "-1"
        "MDEy",  # "012": leading zero is not the decimal form of an id
        "YWJj",  # "abc"
        "OTIyMzM3MjAzNjg1NDc3NTgwOA==",  # 2^63: out of range
        "MTI==",  # wrong padding
        "MTJ=",  # non-canonical trailing bits
        "NzAw NTUx",
        "A" * 100,
    ],
)
def test_decode_rejects_anything_but_a_positive_decimal(bad):
    with pytest.raises(InvalidId):
        decode_id(bad)


def test_encode_rejects_out_of_range():
    for value in (0, -1, ID_MAX + 1):
        with pytest.raises(InvalidId):
            encode_id(value)


def test_snowflakes_are_time_ordered_and_recover_their_time():
    t1 = datetime(2024, 1, 1, tzinfo=UTC)
    t2 = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert snowflake(t1, 4194303) < snowflake(t2, 0)
    assert snowflake_time(snowflake(t2, 5)) == t2
    assert snowflake(t1, 1) != snowflake(t1, 2)
