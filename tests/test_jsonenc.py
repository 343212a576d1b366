import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdrs.jsonenc import dumps


def test_decimals_keep_their_exact_digits():
    assert dumps({"cost": Decimal("0.123500")}) == b'{"cost":0.123500}'
    assert dumps([Decimal("-3.5"), Decimal("1E+3"), None]) == b"[-3.5,1000,null]"
    assert dumps({"items": [{"a": "x", "cost": Decimal("0.1235")}]}) == (
        b'{"items":[{"a":"x","cost":0.1235}]}'
    )


def test_non_finite_decimals_are_refused():
    with pytest.raises(TypeError):
        dumps({"cost": Decimal("NaN")})


def test_text_that_looks_like_the_mark_stays_text():
    obj = {"user_data": "DEC:1", "name": "\\u0000DEC:2", "k": ["x\x00DEC:3"]}
    assert json.loads(dumps(obj)) == obj


values = st.one_of(
    st.text(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.none(),
    st.decimals(allow_nan=False, allow_infinity=False, places=6),
)


@given(st.dictionaries(st.text(max_size=8), values, max_size=6))
def test_output_is_valid_json_with_exact_values(obj):
    parsed = json.loads(dumps(obj), parse_float=Decimal)
    assert parsed == obj  # Decimals compare by value, exactly: no float anywhere


# The old encoder wrote decimals as strings marked "\x00DEC:" and spliced the marks out
# afterwards; a key or value that began with the mark (an echoed query option name) came
# out as broken JSON. Decimals are orjson fragments now: no text can steer the output.
marked = st.text(max_size=12).map(lambda s: "\x00DEC:" + s)


@given(
    st.dictionaries(
        st.one_of(marked, st.text(max_size=8)),
        st.one_of(marked, values),
        max_size=6,
    )
)
def test_text_starting_with_the_old_decimal_mark_stays_json(obj):
    assert json.loads(dumps(obj), parse_float=Decimal) == obj


def test_echoed_option_name_with_the_old_mark_is_json():
    name = '\x00DEC:1,"admin":true'
    body = {"errors": [{"code": "VALIDATE_FAILED", "message": name, "detail": {"option": name}}]}
    assert json.loads(dumps(body)) == body
