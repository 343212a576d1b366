"""GET /api/cdrs query surface: filter, orderby, search, plain filters, cursors, count=false."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

import orjson
import pytest

from cdrs.ids import encode_id
from cdrs.models import Cdr
from tests.factories import cdr_payload, create_cdrs, create_generated

pytestmark = pytest.mark.django_db

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def get(client, **params):
    response = client.get("/api/cdrs?" + urlencode(params))
    return response.status_code, orjson.loads(response.content)


def ids_of(data):
    return [i["id"] for i in data["items"]]


def error_message(client, **params):
    status, data = get(client, **params)
    assert status == 400, data
    assert data["errors"][0]["code"] == "VALIDATE_FAILED"
    return data["errors"][0]["message"]


def test_filter_through_http(client_ro):
    ids = create_cdrs(
        cdr_payload(caller="101", started=T0),
        cdr_payload(caller="102", started=T0 + timedelta(days=1)),
        cdr_payload(caller="101", started=T0 + timedelta(days=2)),
    )
    status, data = get(client_ro, filter="caller eq '101' and started_at gt '2024-05-02T00:00:00Z'")
    assert status == 200 and ids_of(data) == [encode_id(ids[2])] and data["count"] == 1


def test_filter_errors_name_the_option_and_position(client_ro):
    assert error_message(client_ro, filter="calle eq '1'") == (
        "filter: unknown field 'calle' at position 0"
    )
    assert error_message(client_ro, filter="caller eq '1'; DROP TABLE cdrs_cdr; --").startswith(
        "filter:"
    )
    assert error_message(client_ro, filter="x" * 5000).startswith("filter:")
    assert error_message(client_ro, filter="(" * 500).startswith("filter:")


def test_private_fields_in_filter_need_billing(api_client):
    create_cdrs(cdr_payload(cost=Decimal("1.5")))
    no_billing = api_client(scopes=("read",))
    assert "billing" in error_message(no_billing, filter="cost gt 1")
    status, data = get(api_client(scopes=("read", "billing")), filter="cost gt 1")
    assert status == 200 and data["count"] == 1


def test_orderby_with_ties_broken_by_id(client_ro):
    ids = create_cdrs(
        cdr_payload(duration=30),
        cdr_payload(duration=10),
        cdr_payload(duration=30),
        cdr_payload(duration=20),
    )
    _, asc = get(client_ro, orderby="duration")
    assert ids_of(asc) == [encode_id(i) for i in (ids[1], ids[3], *sorted((ids[0], ids[2])))]
    _, desc = get(client_ro, orderby="duration desc")
    assert ids_of(desc) == [
        encode_id(i) for i in (*sorted((ids[0], ids[2]), reverse=True), ids[3], ids[1])
    ]
    _, multi = get(client_ro, orderby="duration desc, caller asc")
    assert len(multi["items"]) == 4


@pytest.mark.parametrize(
    "orderby",
    [
        "cost",
        "colour desc",
        "duration sideways",
        "duration,",
        "duration, duration",
        "",
        "user_data",
    ],
)
def test_bad_orderby_is_400(client_ro, orderby):
    assert error_message(client_ro, orderby=orderby).startswith("orderby:")


def test_search_is_case_insensitive_substring_over_the_contract_fields(client_ro):
    ids = create_cdrs(
        cdr_payload(caller_display_name="Alice Wonder"),
        cdr_payload(callee="5551234", caller_display_name="", callee_display_name=""),
        cdr_payload(call_id="abc-XYZ-789", caller_display_name="", callee_display_name=""),
        cdr_payload(trunk="wonderland", caller_display_name="", callee_display_name=""),
    )
    assert ids_of(get(client_ro, search="WONDER")[1]) == [encode_id(ids[0])]  # trunk not searched
    assert ids_of(get(client_ro, search="5123")[1]) == [encode_id(ids[1])]
    assert ids_of(get(client_ro, search="xyz-7")[1]) == [encode_id(ids[2])]
    assert get(client_ro, search="100%")[1]["count"] == 0  # % is literal, not a wildcard
    ids_accented = create_cdrs(cdr_payload(caller_display_name="José García"))
    assert ids_of(get(client_ro, search="garcía")[1]) == [encode_id(ids_accented[0])]
    assert error_message(client_ro, search="a\nb").startswith("search:")


def test_plain_filters(client_ro):
    ids = create_cdrs(
        cdr_payload(
            started=T0,
            caller="101",
            direction="INBOUND_CALL",
            duration=5,
            trunk="t1",
            answered_at=None,
            caller_domain="a.example",
        ),
        cdr_payload(
            started=T0 + timedelta(hours=1),
            caller="102",
            direction="OUTBOUND_CALL",
            duration=50,
            end_reason="CANCELLED",
            callee_domain="b.example",
        ),
        cdr_payload(started=T0 + timedelta(hours=2), caller="101", duration=500, call_id="c-3"),
    )
    e = [encode_id(i) for i in ids]

    def only(**params):
        status, data = get(client_ro, **params)
        assert status == 200, data
        return sorted(ids_of(data))

    start = T0.strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (T0 + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert only(started_after=start, started_before=later) == [e[0]]  # half-open
    assert only(started_after=later) == sorted(e[1:])
    assert only(caller="101") == sorted([e[0], e[2]])
    assert only(callee="102") == sorted(e)
    assert only(call_id="c-3") == [e[2]]
    assert only(direction="OUTBOUND_CALL") == [e[1]]
    assert only(end_reason="CANCELLED") == [e[1]]
    assert only(trunk="t1") == [e[0]]
    assert only(caller_domain="a.example") == [e[0]]
    assert only(callee_domain="b.example") == [e[1]]
    assert only(min_duration=50) == sorted(e[1:])
    assert only(max_duration=50) == sorted(e[:2])
    assert only(answered="false") == [e[0]]
    assert only(answered="true") == sorted(e[1:])
    # AND-ed with each other and with filter/search
    assert only(caller="101", min_duration=100) == [e[2]]
    assert only(caller="101", filter="duration lt 100") == [e[0]]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("started_after", "yesterday"),
        ("started_before", "2024-01-01"),
        ("direction", "SIDEWAYS"),
        ("end_reason", "x"),
        ("min_duration", "-1"),
        ("max_duration", "1.5"),
        ("min_duration", "abc"),
        ("answered", "maybe"),
        ("caller", "x" * 300),
    ],
)
def test_bad_plain_filter_values_are_400(client_ro, name, value):
    assert error_message(client_ro, **{name: value}).startswith(f"{name}:")


def test_count_false_skips_counting(client_ro, django_assert_num_queries):
    create_cdrs(*[cdr_payload() for _ in range(3)])
    status, data = get(client_ro, count="false")
    assert status == 200 and data["count"] == -1 and len(data["items"]) == 3


def walk(client, **params):
    """Every page by cursor; returns the ids in order and the number of pages."""
    seen, pages = [], 0
    status, data = get(client, **params)
    while True:
        assert status == 200, data
        pages += 1
        seen += ids_of(data)
        if data["next_cursor"] is None:
            return seen, pages
        status, data = get(client, **params, cursor=data["next_cursor"])


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"orderby": "duration desc"},
        {"orderby": "answered_at asc, caller desc"},
        {"orderby": "answered_at desc"},
        {"orderby": "caller, id desc"},
        {"filter": "direction eq 'OUTBOUND_CALL' or duration gt 100"},
        {"search": "a", "orderby": "started_at asc"},
    ],
)
def test_cursor_walk_returns_every_row_once_in_order(client_ro, params):
    create_generated(157, seed=5)
    expected = ids_of(get(client_ro, top=1000, **params)[1])
    seen, pages = walk(client_ro, top=10, **params)
    assert seen == expected
    assert len(seen) == len(set(seen))
    assert pages == max(1, -(-len(expected) // 10))  # no empty last page


def test_cursor_walk_ignores_rows_inserted_meanwhile(client_ro):
    create_cdrs(*[cdr_payload(started=T0 + timedelta(minutes=i)) for i in range(25)])
    expected = ids_of(get(client_ro, top=1000)[1])
    status, data = get(client_ro, top=10)
    assert status == 200
    seen = ids_of(data)
    while data["next_cursor"]:
        # A newer CDR arrives between pages: it belongs before the walk's start.
        create_cdrs(cdr_payload(started=T0 + timedelta(days=5)))
        status, data = get(client_ro, top=10, cursor=data["next_cursor"])
        assert status == 200
        seen += ids_of(data)
    assert seen == expected


def test_tampered_and_mismatched_cursors_are_400(client_ro):
    create_cdrs(*[cdr_payload() for _ in range(5)])
    cursor = get(client_ro, top=2)[1]["next_cursor"]
    assert cursor
    tampered = cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB")
    assert error_message(client_ro, top=2, cursor=tampered).startswith("cursor:")
    assert "different query" in error_message(client_ro, top=2, cursor=cursor, caller="101")
    assert "different query" in error_message(client_ro, cursor=cursor, orderby="duration")
    assert error_message(client_ro, cursor=cursor, skip=2).startswith("cursor:")
    assert error_message(client_ro, cursor="garbage").startswith("cursor:")
    # top may change between pages
    assert get(client_ro, top=3, cursor=cursor)[0] == 200


def test_next_cursor_is_null_on_the_last_page(client_ro):
    create_cdrs(*[cdr_payload() for _ in range(3)])
    assert get(client_ro, top=3)[1]["next_cursor"] is None
    assert get(client_ro, top=2)[1]["next_cursor"] is not None


def test_filtered_count_is_exact(client_ro):
    create_generated(80, seed=2)
    status, data = get(client_ro, filter="direction eq 'INBOUND_CALL'", top=1)
    assert status == 200
    assert data["count"] == Cdr.objects.filter(direction="INBOUND_CALL").count()
