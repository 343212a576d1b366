"""The filter compiler without a database: errors, positions, limits and the Q it builds."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Q
from hypothesis import given, settings
from hypothesis import strategies as st

from cdrs.ids import encode_id
from cdrs.query.filter import MAX_DEPTH, MAX_FILTER_LENGTH, FilterError, compile_filter

TS = "2022-01-01T00:00:00Z"
JAN1 = datetime(2022, 1, 1, tzinfo=UTC)


def error(text: str, *, billing: bool = False) -> FilterError:
    with pytest.raises(FilterError) as info:
        compile_filter(text, billing=billing)
    return info.value


def only_value(q: Q) -> Any:
    """The value of a Q that is a single ``field=value`` condition."""
    (child,) = q.children
    assert isinstance(child, tuple)
    return child[1]


def shape(node: Any) -> Any:
    """A Q as nested tuples, single-child wrappers removed, so tests can compare structure."""
    if not isinstance(node, Q):
        return node
    children = [shape(child) for child in node.children]
    inner = children[0] if len(children) == 1 else (node.connector.lower(), *children)
    return ("not", inner) if node.negated else inner


# --- what valid expressions compile to -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("caller eq '101'", Q(caller="101")),
        ("caller ne '101'", ~Q(caller="101")),
        ("duration gt 5", Q(duration__gt=5)),
        ("duration ge -5", Q(duration__gte=-5)),
        ("status_code lt 200", Q(status_code__lt=200)),
        ("status_code le 999", Q(status_code__lte=999)),
        ("caller eq 'O''Brien'", Q(caller="O'Brien")),
        ("caller eq ''''", Q(caller="'")),
        ("caller eq ''", Q(caller="")),
        ("caller eq 'a''''b'", Q(caller="a''b")),
        ("answered_at eq null", Q(answered_at__isnull=True)),
        ("answered_at ne null", Q(answered_at__isnull=False)),
        ("rang_at eq null", Q(rang_at__isnull=True)),
        (f"started_at gt '{TS}'", Q(started_at__gt=JAN1)),
        ("started_at eq '2022-01-01T02:00:00+02:00'", Q(started_at=JAN1)),
        ("started_at eq '2021-12-31T19:00:00-05:00'", Q(started_at=JAN1)),
        (f"answered_at ne '{TS}'", ~Q(answered_at=JAN1)),
        ("direction eq 'INBOUND_CALL'", Q(direction="INBOUND_CALL")),
        ("end_reason ne 'CANCELLED'", ~Q(end_reason="CANCELLED")),
        ("reroute_reason eq ''", Q(reroute_reason="")),
        ("id eq 'NzAwNTUxOTA5NzczMTQ4MTYw'", Q(id=700551909773148160)),
        ("id lt 'NzAwNTUxOTA5NzczMTQ4MTYw'", Q(id__lt=700551909773148160)),
        ("id ge 'MQ=='", Q(id__gte=1)),
        ("contains(caller,'10')", Q(caller__ccontains="10")),
        ("startswith(callee, 'a%_b')", Q(callee__cstartswith="a%_b")),
        ("endswith( trunk , 'x''y' )", Q(trunk__cendswith="x'y")),
        ("not contains(caller,'1')", ~Q(caller__ccontains="1")),
        ("duration eq 9223372036854775807", Q(duration=2**63 - 1)),
        ("duration eq -9223372036854775808", Q(duration=-(2**63))),
        ("duration eq 007", Q(duration=7)),
        ("  \t caller\neq\r'1'  ", Q(caller="1")),
    ],
)
def test_compiles_to_q(text: str, expected: Q) -> None:
    assert compile_filter(text, billing=False) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cost eq 0.1235", Q(cost=Decimal("0.1235"))),
        ("cost gt 1", Q(cost__gt=Decimal(1))),
        ("cost lt -0.5", Q(cost__lt=Decimal("-0.5"))),
        ("cost eq null", Q(cost__isnull=True)),
        ("cost ne null", Q(cost__isnull=False)),
        ("cost le 123456789.123456", Q(cost__lte=Decimal("123456789.123456"))),
        ("cost eq 000000000000000000001.5", Q(cost=Decimal("1.5"))),
        ("billed_account eq 'acct'", Q(billed_account="acct")),
        ("contains(billed_account,'a')", Q(billed_account__ccontains="a")),
    ],
)
def test_private_fields_with_billing(text: str, expected: Q) -> None:
    assert compile_filter(text, billing=True) == expected


def test_decimal_keeps_exact_value() -> None:
    value = only_value(compile_filter("cost eq 0.10", billing=True))
    assert isinstance(value, Decimal) and str(value) == "0.10"


def test_timestamps_are_utc() -> None:
    value = only_value(
        compile_filter("started_at eq '2022-06-01T12:30:45.123456+05:30'", billing=False)
    )
    assert value == datetime(2022, 6, 1, 7, 0, 45, 123456, tzinfo=UTC)
    assert value.utcoffset().total_seconds() == 0


def test_precedence_not_and_or() -> None:
    a, b, c = ("caller", "1"), ("callee", "2"), ("trunk", "3")
    text_a, text_b, text_c = "caller eq '1'", "callee eq '2'", "trunk eq '3'"

    def s(text: str) -> Any:
        return shape(compile_filter(text, billing=False))

    assert s(f"{text_a} or {text_b} and {text_c}") == ("or", a, ("and", b, c))
    assert s(f"{text_a} and {text_b} or {text_c}") == ("or", ("and", a, b), c)
    assert s(f"({text_a} or {text_b}) and {text_c}") == ("and", ("or", a, b), c)
    assert s(f"not {text_a} and {text_b}") == ("and", ("not", a), b)
    assert s(f"not ({text_a} and {text_b})") == ("not", ("and", a, b))
    assert s(f"not not {text_a}") == a
    assert s(f"{text_a} or {text_b} or {text_c}") == ("or", a, b, c)
    assert s(f"(({text_a}))") == a


# --- errors and their positions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("calle eq '1'", "unknown field 'calle'", 0),
        ("caller eq '1' and calle eq '1'", "unknown field 'calle'", 18),
        ("Caller eq '1'", "unknown field 'Caller'", 0),
        ("NOT caller eq '1'", "unknown field 'NOT' (keywords are lower case)", 0),
        ("caller EQ '1'", "unknown operator 'EQ' (operators are lower case)", 7),
        ("caller eq '1' AND callee eq '2'", "expected 'and', 'or' or the end, got 'AND'", 14),
        ("caller is '1'", "expected an operator (eq, ne, gt, ge, lt, le) after 'caller'", 7),
        ("caller = '1'", "unexpected character '='", 7),
        ("caller eq '1' && callee eq '2'", "unexpected character '&'", 14),
        ('caller eq "1"', "unexpected character '\"'", 10),
        ("caller eq '1'\u00a0", "unexpected character U+00A0", 13),
        ("caller eq '1' \x01", "unexpected character U+0001", 14),
        ("caller eq '101' and", "unexpected end of expression", 19),
        ("caller eq '101' and   ", "unexpected end of expression", 22),
        ("caller", "unexpected end of expression", 6),
        ("caller eq", "unexpected end of expression", 9),
        ("", "unexpected end of expression", 0),
        ("   ", "unexpected end of expression", 3),
        ("not", "unexpected end of expression", 3),
        ("()", "expected a field name, 'not', '(' or a function, got ')'", 1),
        ("(caller eq '1'", "missing ')' for the '(' opened", 0),
        ("caller eq '1')", "unbalanced ')'", 13),
        ("(caller eq '1' callee", "expected ')', 'and' or 'or', got 'callee'", 15),
        ("caller eq '1' callee eq '2'", "expected 'and', 'or' or the end, got 'callee'", 14),
        ("caller eq '1' or", "unexpected end of expression", 16),
        ("and caller eq '1'", "expected a field name, got keyword 'and'", 0),
        ("caller eq eq", "expected a value ('text', a number or null) after 'eq', got 'eq'", 10),
        ("caller eq callee", "expected a value ('text', a number or null) after 'eq'", 10),
        ("'1' eq caller", "got string '1' (the field goes on the left)", 0),
        ("1 eq duration", "got integer 1 (the field goes on the left)", 0),
        # strings
        ("caller eq 'abc", "unterminated string", 10),
        ("caller eq 'O''Brien", "unterminated string", 10),
        ("caller eq '", "unterminated string", 10),
        ("caller eq 'a\x00b'", "string contains an invalid character U+0000", 12),
        ("caller eq 'a\ud800'", "string contains an invalid character U+D800", 12),
        # numbers
        ("duration eq 1.2.3", "invalid number '1.2.3'", 12),
        ("duration eq 12abc", "invalid number '12abc'", 12),
        ("duration eq 1.", "invalid number '1.'", 12),
        ("duration eq 1e5", "invalid number '1e5'", 12),
        ("duration eq -", "unexpected character '-'", 12),
        ("duration eq - 1", "unexpected character '-'", 12),
        ("duration eq .5", "unexpected character '.'", 12),
        ("duration eq 9223372036854775808", "integer 9223372036854775808 is out of range", 12),
        ("duration eq -9223372036854775809", "is out of range for 'duration'", 12),
        ("duration eq NaN", "expected a value ('text', a number or null)", 12),
        # kinds
        ("caller eq 1", "expected a string for 'caller', got integer", 10),
        ("caller eq 1.5", "expected a string for 'caller', got decimal", 10),
        ("started_at gt 5", "expected a timestamp for 'started_at', got integer", 14),
        ("duration eq '5'", "expected an integer for 'duration', got string", 12),
        ("duration eq 1.5", "expected an integer for 'duration', got decimal", 12),
        ("status_code eq '200'", "expected an integer for 'status_code', got string", 15),
        ("direction eq 1", "expected one of its values as a string for 'direction'", 13),
        ("id eq 700551909773148160", "expected an id string for 'id', got integer", 6),
        ("id eq 'NzAw!'", "invalid id 'NzAw!'", 6),
        ("id eq ''", "invalid id ''", 6),
        ("id eq 'MA=='", "invalid id 'MA=='", 6),  # base64 of "0"
        # null
        ("caller eq null", "field 'caller' is never null", 10),
        ("started_at eq null", "field 'started_at' is never null", 14),
        ("duration ne null", "field 'duration' is never null", 12),
        ("direction eq null", "field 'direction' is never null", 13),
        ("id eq null", "field 'id' is never null", 6),
        ("answered_at gt null", "null can only be compared with eq or ne", 12),
        ("rang_at le null", "null can only be compared with eq or ne", 8),
        ("answered_at eq NULL", "expected a value ('text', a number or null)", 15),
        # enums
        ("direction eq 'INBOUND'", "unknown value 'INBOUND' for 'direction' (one of:", 13),
        ("direction eq 'inbound_call'", "unknown value 'inbound_call'", 13),
        ("end_reason eq ''", "unknown value '' for 'end_reason'", 14),
        ("direction gt 'INBOUND_CALL'", "enum field 'direction' can only be compared", 10),
        ("reroute_reason le ''", "enum field 'reroute_reason' can only be compared", 15),
        # timestamps
        ("started_at gt 'yesterday'", "invalid timestamp 'yesterday' for 'started_at'", 14),
        ("started_at gt '2022-01-01'", "invalid timestamp '2022-01-01'", 14),
        ("started_at gt '2022-01-01T00:00:00'", "invalid timestamp", 14),  # no offset
        ("started_at gt '2022-02-30T00:00:00Z'", "invalid timestamp", 14),
        ("started_at gt '2022-01-01T25:00:00Z'", "invalid timestamp", 14),
        ("answered_at lt '0001-01-01T00:00:00+01:00'", "invalid timestamp", 15),  # < year 1
        ("answered_at lt '9999-12-31T23:59:59-01:00'", "invalid timestamp", 15),  # > 9999
        # functions
        ("contains(caller, 1)", "expected a string as the second argument of contains()", 17),
        ("contains(caller, null)", "second argument of contains(), got 'null'", 17),
        ("contains(duration, '1')", "contains() needs a string field, 'duration' is an integer", 9),
        ("startswith(direction, 'I')", "'direction' is an enum", 11),
        ("endswith(started_at, 'Z')", "'started_at' is a timestamp", 9),
        ("contains('x', caller)", "expected a field name, got string 'x'", 9),
        ("contains(caller 'x')", "expected ',' after 'caller', got string 'x'", 16),
        ("contains caller", "expected '(' after 'contains', got 'caller'", 9),
        ("contains(caller, 'x'", "unexpected end of expression", 20),
        ("contains(caller, 'x', 'y')", "expected ')' to close contains(), got ','", 20),
        ("contains(calle, 'x')", "unknown field 'calle'", 9),
        ("Contains(caller, 'x')", "unknown field 'Contains' (keywords are lower case)", 0),
        ("contains(caller, 'x') eq true", "expected 'and', 'or' or the end, got 'eq'", 22),
        # injection attempts are just bad syntax
        ("caller eq '1'; DROP TABLE cdrs_cdr; --'", "unexpected character ';'", 13),
        ("caller eq '1' or 1=1", "expected a field name, 'not', '(' or a function, got", 17),
        ("caller eq '' OR ''=''", "expected 'and', 'or' or the end, got 'OR'", 13),
        ("caller eq '1' -- comment", "unexpected character '-'", 14),
        ("caller eq '1' /* x */", "unexpected character '/'", 14),
        ("caller eq '1' union select 1", "expected 'and', 'or' or the end, got 'union'", 14),
    ],
)
def test_error_message_and_position(text: str, message: str, position: int) -> None:
    exc = error(text)
    assert message in str(exc)
    assert exc.position == position
    assert str(exc).endswith(f" at position {position}")


@pytest.mark.parametrize("text", ["cost eq 1", "cost eq null", "billed_account eq 'a'"])
def test_private_field_needs_billing(text: str) -> None:
    name = text.split()[0]
    exc = error(text)
    assert str(exc) == f"field '{name}' requires the billing scope at position 0"
    compile_filter(text, billing=True)


def test_private_field_in_function_needs_billing() -> None:
    exc = error("caller eq '1' or contains(billed_account, 'x')")
    assert str(exc) == "field 'billed_account' requires the billing scope at position 26"


def test_exact_messages() -> None:
    assert str(error("calle eq '1'")) == "unknown field 'calle' at position 0"
    assert (
        str(error(f"started_at gt 5 and caller eq '{TS}'"))
        == "expected a timestamp for 'started_at', got integer at position 14"
    )
    assert str(error("caller eq '1' and callee")) == "unexpected end of expression at position 24"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cost eq '1'", "expected a number for 'cost', got string"),
        ("cost eq 1234567890123456", "has more than 15 digits"),
        ("cost eq 1234567890.123456", "has more than 15 digits"),
        ("cost eq 0.1234567890123456", "has more than 15 digits"),
        ("cost gt 'NaN'", "expected a number for 'cost', got string"),
        ("cost gt Infinity", "expected a value ('text', a number or null)"),
        ("cost gt 1e3", "invalid number '1e3'"),
        ("contains(cost, '1')", "contains() needs a string field, 'cost' is a decimal"),
    ],
)
def test_decimal_errors(text: str, message: str) -> None:
    assert message in str(error(text, billing=True))


def test_decimal_digit_limit_counts_significant_digits() -> None:
    compile_filter("cost eq 123456789.123456", billing=True)  # 15 digits
    compile_filter("cost eq 0.000000000000001", billing=True)  # 15 fraction digits
    compile_filter("cost eq -000123.5", billing=True)


def test_enum_error_lists_values() -> None:
    message = str(error("reroute_reason eq 'NOPE'"))
    assert "'', 'TRANSFER', 'OVERFLOW'" in message
    assert "'FORWARDING_NIGHT_MODE'" in message


def test_long_values_are_cut_in_messages() -> None:
    message = str(error("calle" + "x" * 500 + " eq '1'"))
    assert len(message) < 120


def test_error_is_a_value_error_and_picklable() -> None:
    import pickle

    exc = error("calle eq '1'")
    assert isinstance(exc, ValueError)
    copy = pickle.loads(pickle.dumps(exc))
    assert (str(copy), copy.position) == (str(exc), exc.position)


# --- limits ----------------------------------------------------------------------------------


def test_length_limit() -> None:
    clause = "caller eq '1'"
    text = " or ".join([clause] * 200)[:MAX_FILTER_LENGTH]
    text = text[: text.rindex(" or ")]
    compile_filter(text, billing=False)  # long but within the limit
    padded = text + " " * (MAX_FILTER_LENGTH - len(text))
    assert len(padded) == MAX_FILTER_LENGTH
    compile_filter(padded, billing=False)
    exc = error(padded + " ")
    assert str(exc) == "filter is longer than 2000 characters"
    assert exc.position == MAX_FILTER_LENGTH


def test_length_limit_checked_before_parsing() -> None:
    exc = error(";" * 5000)
    assert str(exc) == "filter is longer than 2000 characters"


def test_depth_limit_parentheses() -> None:
    ok = "(" * MAX_DEPTH + "caller eq '1'" + ")" * MAX_DEPTH
    assert compile_filter(ok, billing=False) == Q(caller="1")
    too_deep = "(" * (MAX_DEPTH + 1) + "caller eq '1'" + ")" * (MAX_DEPTH + 1)
    exc = error(too_deep)
    assert str(exc) == f"filter is nested deeper than 32 levels at position {MAX_DEPTH}"


def test_depth_limit_not() -> None:
    # An even number of nots cancels out.
    assert compile_filter("not " * MAX_DEPTH + "caller eq '1'", billing=False) == Q(caller="1")
    exc = error("not " * (MAX_DEPTH + 1) + "caller eq '1'")
    assert exc.position == 4 * MAX_DEPTH
    assert "nested deeper than 32 levels" in str(exc)


def test_depth_counts_not_and_parentheses_together() -> None:
    half = MAX_DEPTH // 2
    assert compile_filter("not (" * half + "caller eq '1'" + ")" * half, billing=False) == Q(
        caller="1"
    )
    text = "not (" * half + "not caller eq '1'" + ")" * half
    assert "nested deeper" in str(error(text))


def test_sequential_groups_do_not_add_up() -> None:
    group = "(" * 20 + "caller eq '1'" + ")" * 20
    q = compile_filter(" and ".join([group] * 5), billing=False)
    assert q.connector == Q.AND and q.children == [Q(caller="1")] * 5


@pytest.mark.parametrize(
    "text",
    [
        "(" * 10_000,
        "not " * 10_000,
        "(" * (MAX_FILTER_LENGTH - 1) + "x",
        "not " * (MAX_FILTER_LENGTH // 4),
        "not (" * 400,
    ],
)
def test_deep_input_never_recurses(text: str) -> None:
    exc = error(text)
    assert "longer than" in str(exc) or "nested deeper" in str(exc)


def test_flat_chains_are_fine() -> None:
    text = " and ".join(["duration gt 1"] * 100)
    assert len(compile_filter(text, billing=False).children) == 100


def test_non_string_input() -> None:
    with pytest.raises(FilterError):
        compile_filter(None, billing=False)  # type: ignore[arg-type]


# --- fuzzing: nothing but FilterError, positions inside the text --------------------------

TOKENS = [
    "(",
    ")",
    ",",
    "'",
    "''",
    "not",
    "and",
    "or",
    "eq",
    "ne",
    "gt",
    "ge",
    "lt",
    "le",
    "null",
    "contains",
    "startswith",
    "endswith",
    "caller",
    "callee",
    "cost",
    "billed_account",
    "duration",
    "status_code",
    "started_at",
    "answered_at",
    "rang_at",
    "direction",
    "reroute_reason",
    "id",
    "'101'",
    "'O''Brien'",
    "'%'",
    f"'{TS}'",
    "'2022-01-01T02:00:00+02:00'",
    "'INBOUND_CALL'",
    "''",
    "'NzAwNTUxOTA5NzczMTQ4MTYw'",
    f"'{encode_id(1)}'",
    "0",
    "-1",
    "1.5",
    "99999999999999999999",
    "0.1235",
    "-",
    ".",
    "1e3",
    "AND",
    "NOT",
    "Eq",
    "\x00",
    "é",
    ";",
]


def _check_only_filter_error(text: str, billing: bool) -> None:
    try:
        result = compile_filter(text, billing=billing)
    except FilterError as exc:
        assert isinstance(exc.position, int)
        assert 0 <= exc.position <= max(len(text), MAX_FILTER_LENGTH)
        assert str(exc)
    else:
        assert isinstance(result, Q)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300), st.booleans())
def test_random_text_only_raises_filter_error(text: str, billing: bool) -> None:
    _check_only_filter_error(text, billing)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.sampled_from(TOKENS), max_size=40),
    st.sampled_from([" ", "", "  "]),
    st.booleans(),
)
def test_token_soup_only_raises_filter_error(tokens: list[str], sep: str, billing: bool) -> None:
    _check_only_filter_error(sep.join(tokens), billing)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="()not andcaller eq'1'", max_size=MAX_FILTER_LENGTH + 50))
def test_nesting_soup_only_raises_filter_error(text: str) -> None:
    _check_only_filter_error(text, False)
