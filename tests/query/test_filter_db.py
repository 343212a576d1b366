"""The filter compiler against the database: every operator, function and null rule.

Runs on SQLite and PostgreSQL. The property test at the end compares the database with a
small OData evaluator in Python over a fixed random dataset.
"""

from __future__ import annotations

import operator
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdrs.fields import FIELDS_BY_NAME, Kind
from cdrs.ids import encode_id
from cdrs.models import Cdr
from cdrs.query.filter import MAX_DEPTH, compile_filter

pytestmark = pytest.mark.django_db

T0 = datetime(2022, 1, 1, tzinfo=UTC)


def make(id: int, **fields: Any) -> Cdr:
    started = fields.pop("started_at", T0)
    values: dict[str, Any] = {
        "started_at": started,
        "ended_at": started + timedelta(seconds=60),
        "direction": "INBOUND_CALL",
        "end_reason": "CALLER_DISCONNECTED",
        **fields,
    }
    return Cdr.objects.create(id=id, natural_key=uuid.uuid4(), **values)


def ids(text: str, *, billing: bool = False) -> set[int]:
    return set(
        Cdr.objects.filter(compile_filter(text, billing=billing)).values_list("id", flat=True)
    )


# --- operators -----------------------------------------------------------------------------


@pytest.fixture
def durations() -> None:
    for i, duration in enumerate([0, 10, 20], start=1):
        make(i, duration=duration, status_code=200 + i)


@pytest.mark.usefixtures("durations")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("duration eq 10", {2}),
        ("duration ne 10", {1, 3}),
        ("duration gt 10", {3}),
        ("duration ge 10", {2, 3}),
        ("duration lt 10", {1}),
        ("duration le 10", {1, 2}),
        ("duration gt -1", {1, 2, 3}),
        ("status_code eq 202", {2}),
        ("duration lt 9223372036854775807", {1, 2, 3}),
        ("duration gt -9223372036854775808", {1, 2, 3}),
        ("duration gt 9223372036854775807", set()),
        ("duration eq 4294967306", set()),  # 2**32 + 10: no wrap-around
        ("status_code ne 5000000000", {1, 2, 3}),
    ],
)
def test_integer_operators(text: str, expected: set[int]) -> None:
    assert ids(text) == expected


@pytest.fixture
def strings() -> None:
    callers = ["101", "102", "O'Brien", "o'brien", "ABC", "abc", "a%b", "a_b", "axb", "100%"]
    callers += ["a\\b", ""]
    for i, caller in enumerate(callers, start=1):
        make(i, caller=caller)


# ids of the `strings` fixture rows, by caller
S = {
    "101": 1, "102": 2, "O'Brien": 3, "o'brien": 4, "ABC": 5, "abc": 6, "a%b": 7, "a_b": 8,
    "axb": 9, "100%": 10, "a\\b": 11, "": 12,
}  # fmt: skip
ALL_S = set(S.values())


def s_ids(*callers: str) -> set[int]:
    return {S[c] for c in callers}


@pytest.mark.usefixtures("strings")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("caller eq '101'", s_ids("101")),
        ("caller ne '101'", ALL_S - s_ids("101")),
        ("caller eq 'O''Brien'", s_ids("O'Brien")),
        ("caller eq 'o''brien'", s_ids("o'brien")),
        ("caller eq ''", s_ids("")),
        ("caller eq 'ABC'", s_ids("ABC")),
        ("caller gt 'a'", s_ids("abc", "a%b", "a_b", "axb", "a\\b", "o'brien")),
        ("caller lt 'A'", s_ids("101", "102", "100%", "")),
        ("caller ge 'o''brien'", s_ids("o'brien")),
        ("caller le '101'", s_ids("101", "100%", "")),
        # functions: case-sensitive, % and _ and \ literal
        ("contains(caller, 'B')", s_ids("ABC", "O'Brien")),
        ("contains(caller, 'b')", s_ids("abc", "a%b", "a_b", "axb", "o'brien", "a\\b")),
        ("contains(caller, '%')", s_ids("a%b", "100%")),
        ("contains(caller, '_')", s_ids("a_b")),
        ("contains(caller, '\\')", s_ids("a\\b")),
        ("contains(caller, '''')", s_ids("O'Brien", "o'brien")),
        ("contains(caller, '')", ALL_S),
        ("contains(caller, 'abcd')", set()),
        ("startswith(caller, 'a%')", s_ids("a%b")),
        ("startswith(caller, 'a_')", s_ids("a_b")),
        ("startswith(caller, 'A')", s_ids("ABC")),
        ("startswith(caller, 'a')", s_ids("abc", "a%b", "a_b", "axb", "a\\b")),
        ("startswith(caller, 'O''')", s_ids("O'Brien")),
        ("startswith(caller, '')", ALL_S),
        ("startswith(caller, '1010')", set()),
        ("endswith(caller, '%')", s_ids("100%")),
        ("endswith(caller, '_b')", s_ids("a_b")),
        ("endswith(caller, 'C')", s_ids("ABC")),
        ("endswith(caller, 'c')", s_ids("abc")),
        ("endswith(caller, 'brien')", s_ids("o'brien")),
        ("endswith(caller, '')", ALL_S),
        ("endswith(caller, 'xabc')", set()),
        ("endswith(caller, '101')", s_ids("101")),
        ("not contains(caller, 'b')", ALL_S - s_ids("abc", "a%b", "a_b", "axb", "o'brien", "a\\b")),
        ("not startswith(caller, '')", set()),
    ],
)
def test_strings_and_functions(text: str, expected: set[int]) -> None:
    assert ids(text) == expected


@pytest.mark.usefixtures("strings")
def test_injection_literal_is_just_data() -> None:
    assert ids("caller eq '1''; DROP TABLE cdrs_cdr; --'") == set()
    assert ids("contains(caller, ''' OR 1=1 --')") == set()
    assert Cdr.objects.count() == len(S)


# --- precedence ----------------------------------------------------------------------------


@pytest.fixture
def grid() -> None:
    """Eight rows: every combination of caller a/b, callee a/b, trunk a/b."""
    for i in range(8):
        make(
            i + 1,
            caller="ab"[i & 1],
            callee="ab"[(i >> 1) & 1],
            trunk="ab"[(i >> 2) & 1],
        )


def grid_ids(predicate: Callable[[str, str, str], bool]) -> set[int]:
    return {
        i + 1 for i in range(8) if predicate("ab"[i & 1], "ab"[(i >> 1) & 1], "ab"[(i >> 2) & 1])
    }


A, B, C = "caller eq 'a'", "callee eq 'a'", "trunk eq 'a'"


@pytest.mark.usefixtures("grid")
@pytest.mark.parametrize(
    ("text", "predicate"),
    [
        (f"{A} or {B} and {C}", lambda a, b, c: a == "a" or (b == "a" and c == "a")),
        (f"{A} and {B} or {C}", lambda a, b, c: (a == "a" and b == "a") or c == "a"),
        (f"({A} or {B}) and {C}", lambda a, b, c: (a == "a" or b == "a") and c == "a"),
        (f"not {A} and {B}", lambda a, b, c: a != "a" and b == "a"),
        (f"not ({A} and {B})", lambda a, b, c: not (a == "a" and b == "a")),
        (f"not {A} or {B}", lambda a, b, c: a != "a" or b == "a"),
        (f"not not {A}", lambda a, b, c: a == "a"),
        (f"{A} and not ({B} or {C})", lambda a, b, c: a == "a" and not (b == "a" or c == "a")),
        (f"{A} or {B} or {C}", lambda a, b, c: "a" in (a, b, c)),
        (f"{A} and {B} and {C}", lambda a, b, c: a == b == c == "a"),
    ],
)
def test_precedence(text: str, predicate: Callable[[str, str, str], bool]) -> None:
    assert ids(text) == grid_ids(predicate)


# --- nulls and timestamps ------------------------------------------------------------------


@pytest.fixture
def answered() -> None:
    make(1, answered_at=None)
    make(2, answered_at=T0)
    make(3, answered_at=T0 + timedelta(hours=1))


@pytest.mark.usefixtures("answered")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("answered_at eq null", {1}),
        ("answered_at ne null", {2, 3}),
        ("not (answered_at eq null)", {2, 3}),
        ("not (answered_at ne null)", {1}),
        ("answered_at eq '2022-01-01T00:00:00Z'", {2}),
        ("answered_at ne '2022-01-01T00:00:00Z'", {1, 3}),
        ("answered_at gt '2022-01-01T00:00:00Z'", {3}),
        ("answered_at ge '2022-01-01T00:00:00Z'", {2, 3}),
        ("answered_at lt '2022-01-01T01:00:00Z'", {2}),
        ("not (answered_at gt '2022-01-01T00:00:00Z')", {1, 2}),
        ("not (answered_at ne '2022-01-01T00:00:00Z')", {2}),
        ("answered_at lt '2022-01-01T00:00:00Z' or answered_at eq null", {1}),
        # offsets: all name the same instant, 2022-01-01T00:00:00Z
        ("answered_at eq '2022-01-01T02:00:00+02:00'", {2}),
        ("answered_at eq '2021-12-31T19:00:00-05:00'", {2}),
        ("answered_at eq '2022-01-01t00:00:00z'", {2}),
        ("answered_at eq '2022-01-01 05:30:00+05:30'", {2}),
        ("answered_at gt '2022-01-01T02:00:00+02:00'", {3}),
        ("answered_at eq '2022-01-01T00:00:00.000Z'", {2}),
        ("answered_at gt '2022-01-01T00:00:00.5Z'", {3}),
        ("answered_at lt '2022-01-01T00:00:00.5Z'", {2}),
    ],
)
def test_nulls_and_timestamps(text: str, expected: set[int]) -> None:
    assert ids(text) == expected


# --- enums, cost, ids ----------------------------------------------------------------------


@pytest.fixture
def billing_rows() -> None:
    make(1, cost=None, direction="INBOUND_CALL", reroute_reason="", billed_account="acct")
    make(2, cost=Decimal("0.1235"), direction="OUTBOUND_CALL", reroute_reason="TRANSFER")
    make(3, cost=Decimal("0.5"), direction="OUTBOUND_CALL", billed_account="ACCT")
    make(4, cost=Decimal("1"), end_reason="CANCELLED", reroute_reason="OVERFLOW")
    make(5, cost=Decimal("-0.000001"))


@pytest.mark.usefixtures("billing_rows")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cost eq 0.1235", {2}),
        ("cost eq 0.123500", {2}),
        ("cost eq 0.1234", set()),
        ("cost gt 0.1235", {3, 4}),
        ("cost ge 0.1235", {2, 3, 4}),
        ("cost lt 0.1235", {5}),
        ("cost le 0.5", {2, 3, 5}),
        ("cost ne 0.1235", {1, 3, 4, 5}),
        ("cost eq 1", {4}),
        ("cost eq 1.0", {4}),
        ("cost lt 0", {5}),
        ("cost eq -0.000001", {5}),
        ("cost eq null", {1}),
        ("cost ne null", {2, 3, 4, 5}),
        ("not (cost gt 0.2)", {1, 2, 5}),
        ("cost gt 0.12349999999999", {2, 3, 4}),
        ("billed_account eq 'acct'", {1}),
        ("contains(billed_account, 'A')", {3}),
        ("direction eq 'OUTBOUND_CALL'", {2, 3}),
        ("direction ne 'OUTBOUND_CALL'", {1, 4, 5}),
        ("end_reason eq 'CANCELLED'", {4}),
        ("reroute_reason eq ''", {1, 3, 5}),
        ("reroute_reason ne ''", {2, 4}),
        ("reroute_reason eq 'QUEUE_EXIT'", set()),
    ],
)
def test_enums_and_cost(text: str, expected: set[int]) -> None:
    assert ids(text, billing=True) == expected


@pytest.fixture
def id_rows() -> list[int]:
    values = [1, 9, 10, 700551909773148160, 2**63 - 1]
    for value in values:
        make(value)
    return values


def test_id_comparisons(id_rows: list[int]) -> None:
    big = encode_id(700551909773148160)
    assert big == "NzAwNTUxOTA5NzczMTQ4MTYw"
    assert ids(f"id eq '{big}'") == {700551909773148160}
    assert ids(f"id ne '{big}'") == set(id_rows) - {700551909773148160}
    assert ids(f"id lt '{big}'") == {1, 9, 10}
    assert ids(f"id le '{big}'") == {1, 9, 10, 700551909773148160}
    assert ids(f"id gt '{big}'") == {2**63 - 1}
    # numeric order, not base64 order: "OQ==" (9) sorts after "MTA=" (10) as text
    assert ids(f"id gt '{encode_id(9)}'") == set(id_rows) - {1, 9}
    assert ids(f"id ge '{encode_id(10)}'") == set(id_rows) - {1, 9}
    assert ids("id eq 'MQ'") == {1}  # padding may be left out
    assert ids(f"id eq '{encode_id(2**63 - 1)}'") == {2**63 - 1}


def test_compiled_q_is_reusable_and_composable() -> None:
    make(1, caller="101", duration=5)
    make(2, caller="102", duration=50)
    q = compile_filter("duration gt 10", billing=False)
    assert set(Cdr.objects.filter(q).values_list("id", flat=True)) == {2}
    assert not Cdr.objects.filter(q, caller="101").exists()
    assert set(Cdr.objects.exclude(q).values_list("id", flat=True)) == {1}


# --- property: the database agrees with a Python OData evaluator --------------------------

STRING_VALUES = ["101", "102", "1010", "", "O'Brien", "o'brien", "ABC", "abc", "a%b", "a_b"]
STRING_VALUES += ["axb", "100%", "a\\b", "Zed"]
STRING_LITERALS = [*STRING_VALUES, "1", "a", "b", "Z", "O", "10"]
NEEDLES = ["", "1", "10", "0", "a", "A", "b", "B", "%", "_", "'", "O'", "\\", "x", "a%", "_b"]
NEEDLES += ["abc", "101"]
ACCOUNTS = ["", "acct-1", "ACCT-1", "acct-2"]
TIMES = [
    T0,
    T0 + timedelta(seconds=1),
    T0 - timedelta(seconds=1),
    datetime(2022, 6, 15, 12, 0, tzinfo=UTC),
]
TIME_LITERALS = [
    ("2022-01-01T00:00:00Z", T0),
    ("2022-01-01T02:00:00+02:00", T0),
    ("2021-12-31T19:00:00-05:00", T0),
    ("2022-01-01T00:00:01Z", T0 + timedelta(seconds=1)),
    ("2021-12-31T23:59:59Z", T0 - timedelta(seconds=1)),
    ("2022-01-01T00:00:00.5Z", T0 + timedelta(milliseconds=500)),
    ("2022-06-15T14:00:00+02:00", datetime(2022, 6, 15, 12, 0, tzinfo=UTC)),
    ("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
]
DURATIONS = [0, 1, 59, 60, 3600, 2**31 - 1]
DURATION_LITERALS = [*DURATIONS, -1, 2**31, 2**63 - 1, -(2**63)]
STATUS_CODES = [0, 200, 486, 999]
STATUS_LITERALS = [*STATUS_CODES, 1000, -5, 487]
COSTS = [None, Decimal("0"), Decimal("0.1235"), Decimal("0.5"), Decimal("1"), Decimal("-2")]
COSTS += [Decimal("12.000001")]
COST_LITERALS = ["0", "0.1235", "0.12350", "0.5", "1", "1.0", "12.000001", "12", "-2", "-1.5"]
COST_LITERALS += ["0.1234999", "999999999.999999"]
DIRECTIONS = ["INBOUND_CALL", "OUTBOUND_CALL", "EXTENSION_CALL", "INBOUND_OUTBOUND_CALL"]
END_REASONS = ["CALLER_DISCONNECTED", "CALLEE_DISCONNECTED", "CANCELLED"]
END_REASON_LITERALS = [*END_REASONS, "REPLACED"]
REROUTES = ["", "TRANSFER", "OVERFLOW"]
REROUTE_LITERALS = [*REROUTES, "QUEUE_EXIT"]

ROWS = 30


def _dataset() -> list[dict[str, Any]]:
    rng = random.Random(20220101)
    rows: list[dict[str, Any]] = []
    row_ids = [1, 2, 9, 10, 11, 100] + [rng.randrange(1, 2**63) for _ in range(ROWS - 6)]
    for row_id in row_ids:
        started = rng.choice(TIMES)
        rows.append(
            {
                "id": row_id,
                "caller": rng.choice(STRING_VALUES),
                "callee": rng.choice(STRING_VALUES),
                "trunk": rng.choice(STRING_VALUES[:5]),
                "billed_account": rng.choice(ACCOUNTS),
                "started_at": started,
                "ended_at": started + timedelta(seconds=30),
                "rang_at": rng.choice([None, *TIMES]),
                "answered_at": rng.choice([None, None, *TIMES]),
                "duration": rng.choice(DURATIONS),
                "status_code": rng.choice(STATUS_CODES),
                "cost": rng.choice(COSTS),
                "direction": rng.choice(DIRECTIONS),
                "end_reason": rng.choice(END_REASONS),
                "reroute_reason": rng.choice(REROUTES),
            }
        )
    return rows


DATASET = _dataset()
ID_LITERALS = [1, 2, 9, 10, 11, 12, 100, 2**63 - 1, DATASET[10]["id"], DATASET[20]["id"]]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Leaf:
    text: str
    field: str
    op: str  # eq ne gt ge lt le, or contains/startswith/endswith
    value: Any  # None for the null literal


# (literal text, python value) per field
def _literals(name: str) -> list[tuple[str, Any]]:
    if name in ("caller", "callee", "trunk"):
        return [(_quote(s), s) for s in STRING_LITERALS]
    if name == "billed_account":
        return [(_quote(s), s) for s in [*ACCOUNTS, "acct"]]
    if name in ("started_at", "ended_at", "rang_at", "answered_at"):
        return [(_quote(text), value) for text, value in TIME_LITERALS]
    if name == "duration":
        return [(str(n), n) for n in DURATION_LITERALS]
    if name == "status_code":
        return [(str(n), n) for n in STATUS_LITERALS]
    if name == "cost":
        return [(text, Decimal(text)) for text in COST_LITERALS]
    if name == "direction":
        return [(_quote(s), s) for s in DIRECTIONS]
    if name == "end_reason":
        return [(_quote(s), s) for s in END_REASON_LITERALS]
    if name == "reroute_reason":
        return [(_quote(s), s) for s in REROUTE_LITERALS]
    if name == "id":
        return [(_quote(encode_id(n)), n) for n in ID_LITERALS]
    raise AssertionError(name)


FIELDS = [
    "caller", "callee", "trunk", "billed_account", "started_at", "ended_at", "rang_at",
    "answered_at", "duration", "status_code", "cost", "direction", "end_reason",
    "reroute_reason", "id",
]  # fmt: skip
STRING_FIELDS = ["caller", "callee", "trunk", "billed_account"]


@st.composite
def comparisons(draw: st.DrawFn) -> Leaf:
    name = draw(st.sampled_from(FIELDS))
    spec = FIELDS_BY_NAME[name]
    ordered = spec.kind is not Kind.ENUM
    choices = _literals(name)
    if spec.nullable and draw(st.integers(0, 4)) == 0:
        op = draw(st.sampled_from(["eq", "ne"]))
        return Leaf(f"{name} {op} null", name, op, None)
    op = draw(st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"] if ordered else ["eq", "ne"]))
    text, value = draw(st.sampled_from(choices))
    return Leaf(f"{name} {op} {text}", name, op, value)


@st.composite
def functions(draw: st.DrawFn) -> Leaf:
    name = draw(st.sampled_from(STRING_FIELDS))
    function = draw(st.sampled_from(["contains", "startswith", "endswith"]))
    needle = draw(st.sampled_from(NEEDLES))
    return Leaf(f"{function}({name}, {_quote(needle)})", name, function, needle)


Node = Leaf | tuple[Any, ...]


def expressions() -> st.SearchStrategy[Node]:
    return st.recursive(
        st.one_of(comparisons(), functions()),
        lambda kids: st.one_of(
            st.tuples(st.just("and"), kids, kids),
            st.tuples(st.just("or"), kids, kids),
            st.tuples(st.just("not"), kids),
            st.tuples(st.just("paren"), kids),
        ),
        max_leaves=10,
    )


_PREC = {"or": 1, "and": 2, "not": 3, "paren": 4}


def render(node: Node, min_prec: int = 0) -> tuple[str, int]:
    """Source text with only the parentheses precedence needs (plus `paren` nodes); depth."""
    if isinstance(node, Leaf):
        return node.text, 0
    tag = node[0]
    if tag == "or":
        (left, dl), (right, dr) = render(node[1], 1), render(node[2], 2)
        text, depth = f"{left} or {right}", max(dl, dr)
    elif tag == "and":
        (left, dl), (right, dr) = render(node[1], 2), render(node[2], 3)
        text, depth = f"{left} and {right}", max(dl, dr)
    elif tag == "not":
        inner, d = render(node[1], 3)
        text, depth = f"not {inner}", d + 1
    else:
        inner, d = render(node[1], 0)
        text, depth = f"({inner})", d + 1
    if _PREC[tag] < min_prec:
        return f"({text})", depth + 1
    return text, depth


_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


def holds(node: Node, row: dict[str, Any]) -> bool:
    """OData semantics: comparisons with null are false, except eq/ne null and ne value."""
    if isinstance(node, Leaf):
        actual = row[node.field]
        if node.op == "contains":
            return bool(node.value in actual)
        if node.op == "startswith":
            return bool(actual.startswith(node.value))
        if node.op == "endswith":
            return bool(actual.endswith(node.value))
        if node.value is None:
            return (actual is None) == (node.op == "eq")
        if actual is None:
            return node.op == "ne"
        return _CMP[node.op](actual, node.value)
    tag = node[0]
    if tag == "and":
        return holds(node[1], row) and holds(node[2], row)
    if tag == "or":
        return holds(node[1], row) or holds(node[2], row)
    if tag == "not":
        return not holds(node[1], row)
    return holds(node[1], row)


@pytest.fixture
def dataset() -> list[dict[str, Any]]:
    for row in DATASET:
        Cdr.objects.create(natural_key=uuid.uuid4(), **row)
    return DATASET


def _expected(node: Node, rows: Iterable[dict[str, Any]]) -> set[int]:
    return {row["id"] for row in rows if holds(node, row)}


def test_dataset_is_varied(dataset: list[dict[str, Any]]) -> None:
    """The fixed dataset exercises what the property test is about."""
    assert Cdr.objects.count() == ROWS
    for name in ("rang_at", "answered_at", "cost"):
        values = [row[name] for row in dataset]
        assert None in values and any(v is not None for v in values), name
    assert len({row["caller"] for row in dataset}) < ROWS  # shared values, so eq matches
    matches = ids("caller eq '101'")
    assert matches and matches == _expected(Leaf("", "caller", "eq", "101"), dataset)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(node=expressions())
def test_database_agrees_with_odata_evaluator(dataset: list[dict[str, Any]], node: Node) -> None:
    text, depth = render(node)
    assume(depth <= MAX_DEPTH)
    expected = _expected(node, dataset)
    assert ids(text, billing=True) == expected, (text, connection.vendor)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(node=expressions())
def test_negation_partitions_rows(dataset: list[dict[str, Any]], node: Node) -> None:
    """`e` and `not (e)` split the table: nulls never make a row vanish from both."""
    text, depth = render(node)
    assume(depth + 1 <= MAX_DEPTH)
    matched = ids(text, billing=True)
    negated = ids(f"not ({text})", billing=True)
    assert matched.isdisjoint(negated)
    assert matched | negated == {row["id"] for row in dataset}
