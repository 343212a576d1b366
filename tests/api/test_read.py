"""GET /api/cdrs and GET /api/cdrs/{id} through HTTP with real tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from cdrs.fields import ALL_FIELD_NAMES, PUBLIC_FIELD_NAMES
from cdrs.ids import encode_id
from cdrs.selectors import reads_recent_months_first
from tests.factories import cdr_payload, create_cdr, create_cdrs

pytestmark = pytest.mark.django_db

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def body(response):
    return orjson.loads(response.content)


def test_list_shape_matches_the_contract(client_ro):
    create_cdr(cost=Decimal("0.5"), billed_account="ACC-1")
    response = client_ro.get("/api/cdrs")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    data = body(response)
    assert set(data) == {"count", "items", "next_cursor"}
    assert data["count"] == 1
    item = data["items"][0]
    assert tuple(item) == PUBLIC_FIELD_NAMES  # every field, in PortSIP's order, no private ones
    assert "cost" not in item and "billed_account" not in item


def test_list_is_newest_first_with_top_and_skip(client_ro):
    ids = create_cdrs(*[cdr_payload(started=T0 + timedelta(minutes=i)) for i in range(7)])
    newest_first = [encode_id(i) for i in reversed(ids)]
    data = body(client_ro.get("/api/cdrs"))
    assert [i["id"] for i in data["items"]] == newest_first
    page = body(client_ro.get("/api/cdrs?top=3&skip=2"))
    assert [i["id"] for i in page["items"]] == newest_first[2:5]
    assert page["count"] == 7  # matching rows, not the page size
    assert body(client_ro.get("/api/cdrs?skip=50"))["items"] == []


def test_ties_on_started_at_are_broken_by_id_desc(client_ro):
    ids = create_cdrs(*[cdr_payload(started=T0) for _ in range(4)])
    data = body(client_ro.get("/api/cdrs"))
    assert [i["id"] for i in data["items"]] == [encode_id(i) for i in sorted(ids, reverse=True)]


def test_default_page_size_is_100(client_ro):
    create_cdrs(*[cdr_payload() for _ in range(105)])
    data = body(client_ro.get("/api/cdrs"))
    assert len(data["items"]) == 100
    assert data["count"] == 105


@pytest.mark.parametrize(
    ("query", "option"),
    [
        ("top=0", "top"),
        ("top=1001", "top"),
        ("top=abc", "top"),
        ("top=", "top"),
        ("skip=-1", "skip"),
        ("skip=1.5", "skip"),
        ("top=5&top=6", "top"),
        ("count=maybe", "count"),
        ("limit=5", "limit"),
        ("$top=5", "$top"),
    ],
)
def test_bad_options_are_400_naming_the_option(client_ro, query, option):
    response = client_ro.get(f"/api/cdrs?{query}")
    assert response.status_code == 400
    error = body(response)["errors"][0]
    assert error["code"] == "VALIDATE_FAILED"
    assert error["message"].startswith(f"{option}:")


def test_detail_shape_with_billing(api_client):
    cdr_id = create_cdr(cost=Decimal("0.1235"), billed_account="ACC-7")
    client = api_client(scopes=("read", "billing"))
    response = client.get(f"/api/cdrs/{encode_id(cdr_id)}")
    assert response.status_code == 200
    data = body(response)
    assert list(data) == ["items"] and len(data["items"]) == 1
    item = data["items"][0]
    assert tuple(item) == ALL_FIELD_NAMES
    assert item["id"] == encode_id(cdr_id)
    assert item["billed_account"] == "ACC-7"
    # The exact decimal, as a JSON number: never through a float.
    assert b'"cost":0.123500' in response.content


def test_detail_without_billing_has_no_private_keys(client_ro):
    cdr_id = create_cdr(cost=Decimal("2"), billed_account="ACC-7")
    item = body(client_ro.get(f"/api/cdrs/{encode_id(cdr_id)}"))["items"][0]
    assert "cost" not in item and "billed_account" not in item
    assert tuple(item) == PUBLIC_FIELD_NAMES


def test_cost_precision_survives_storage(api_client):
    client = api_client(scopes=("read", "billing"))
    for text in ("0.1235", "123456789.123456", "0.000001", "-3.5"):
        cdr_id = create_cdr(cost=Decimal(text))
        raw = client.get(f"/api/cdrs/{encode_id(cdr_id)}").content
        # Read the number's digits as text, so the check itself involves no float.
        digits = raw.split(b'"cost":', 1)[1].split(b",", 1)[0].decode()
        assert Decimal(digits) == Decimal(text)


def test_unrated_cost_is_null(api_client):
    cdr_id = create_cdr()
    item = body(api_client().get(f"/api/cdrs/{encode_id(cdr_id)}"))["items"][0]
    assert item["cost"] is None


def test_timestamps_are_rfc3339_utc_seconds_and_nulls_stay_null(client_ro):
    cdr_id = create_cdr(
        started_at="2017-07-21T19:32:28.734+02:00",
        rang_at=None,
        answered_at=None,
        ended_at="2017-07-21T17:33:00Z",
    )
    item = body(client_ro.get(f"/api/cdrs/{encode_id(cdr_id)}"))["items"][0]
    assert item["started_at"] == "2017-07-21T17:32:28Z"
    assert item["ended_at"] == "2017-07-21T17:33:00Z"
    assert item["rang_at"] is None and item["answered_at"] is None


def test_unicode_and_newlines_in_strings_round_trip(client_ro):
    name = 'Chloé "Zoë" O\'Brien\n第二行 ☎️'
    cdr_id = create_cdr(caller_display_name=name, user_data="a,b\r\nc\\d")
    item = body(client_ro.get(f"/api/cdrs/{encode_id(cdr_id)}"))["items"][0]
    assert item["caller_display_name"] == name
    assert item["user_data"] == "a,b\r\nc\\d"


def test_unknown_strings_are_empty_never_null(client_ro):
    cdr_id = create_cdr(caller_display_name=None, trunk=None)
    item = body(client_ro.get(f"/api/cdrs/{encode_id(cdr_id)}"))["items"][0]
    assert item["caller_display_name"] == "" and item["trunk"] == ""


@pytest.mark.parametrize("bad_id", ["nope", "MA==", encode_id(999999), "%20", "LTE="])
def test_unknown_or_malformed_id_is_404(client_ro, bad_id):
    create_cdr()
    response = client_ro.get(f"/api/cdrs/{bad_id}")
    assert response.status_code == 404
    assert body(response)["errors"][0]["code"] == "NOT_FOUND"


def test_detail_accepts_id_without_padding(client_ro):
    cdr_id = create_cdr()
    public = encode_id(cdr_id)
    assert client_ro.get(f"/api/cdrs/{public.rstrip('=')}").status_code == 200


def test_domain_limited_token_sees_only_its_domains(api_client):
    mine = create_cdr(caller_domain="a.example", callee_domain="x.example")
    also_mine = create_cdr(caller_domain="y.example", callee_domain="A.Example")
    other = create_cdr(caller_domain="b.example", callee_domain="b.example")
    client = api_client(scopes=("read",), domains=("a.example",))
    data = body(client.get("/api/cdrs"))
    assert data["count"] == 2
    assert {i["id"] for i in data["items"]} == {encode_id(mine), encode_id(also_mine)}
    assert client.get(f"/api/cdrs/{encode_id(other)}").status_code == 404
    assert client.get(f"/api/cdrs/{encode_id(mine)}").status_code == 200


def test_list_uses_a_fixed_number_of_queries(client_ro, django_assert_num_queries):
    create_cdrs(*[cdr_payload() for _ in range(40)])
    # token lookup, last-used update, count (counter slots), page; on partitioned
    # PostgreSQL also the newest stored hour, which a process then keeps for a minute (the
    # page reads from the month before it, which holds the 31 rows it needs).
    with django_assert_num_queries(5 if reads_recent_months_first() else 4):
        assert len(body(client_ro.get("/api/cdrs?top=30"))["items"]) == 30
    # last_used_at was just written: it is not written again within the minute
    with django_assert_num_queries(3):
        client_ro.get("/api/cdrs?top=30")
    with django_assert_num_queries(2):
        client_ro.get("/api/cdrs?top=30&count=false")


def test_detail_uses_two_queries(client_ro, django_assert_num_queries):
    cdr_id = create_cdr()
    client_ro.get("/api/cdrs?top=1")  # last-used written once
    with django_assert_num_queries(2):  # token, row
        assert client_ro.get(f"/api/cdrs/{encode_id(cdr_id)}").status_code == 200


def test_unfiltered_count_comes_from_the_counter_and_stays_exact(client_ro):
    payloads = [cdr_payload() for _ in range(12)]
    create_cdrs(*payloads)
    create_cdrs(*payloads[:5])  # re-sent: duplicates must not be counted
    from cdrs.models import Cdr

    assert Cdr.objects.count() == 12
    assert body(client_ro.get("/api/cdrs"))["count"] == 12


def test_detail_accepts_the_decimal_id_spelling_and_answers_base64(client_ro):
    (cdr_id,) = create_cdrs(cdr_payload())
    public = encode_id(cdr_id)
    by_decimal = client_ro.get(f"/api/cdrs/{cdr_id}")  # PortSIP's newer guide: "8781..."
    assert by_decimal.status_code == 200
    assert body(by_decimal)["items"][0]["id"] == public  # responses keep base64
    assert body(by_decimal) == body(client_ro.get(f"/api/cdrs/{public}"))


@pytest.mark.parametrize(
    "bad",
    ["0", "007", str(2**63), "9" * 40, "1٢3", "12a", "-5", "+5", "1.5"],
)
def test_detail_rejects_malformed_decimal_ids_as_not_found(client_ro, bad):
    response = client_ro.get(f"/api/cdrs/{bad}")
    assert response.status_code == 404
    assert body(response)["errors"][0]["code"] == "NOT_FOUND"
