"""POST /api/cdrs: validation, all-or-nothing batches, de-duplication, concurrency."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from django.db import connection

from cdrs.ids import decode_id, encode_id, snowflake_time
from cdrs.models import Cdr
from cdrs.values import parse_rfc3339
from tests.factories import cdr_payload
from tests.helpers import post_concurrently

pytestmark = pytest.mark.django_db


def post(client, data, **extra):
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return client.post("/api/cdrs", raw, content_type="application/json", **extra)


def test_single_object_is_stored_with_a_snowflake_id(client_full):
    payload = cdr_payload(started_at="2024-06-01T10:00:00Z")
    response = post(client_full, payload)
    assert response.status_code == 201
    data = orjson.loads(response.content)
    assert data["created"] == 1 and data["duplicates"] == 0
    cdr_id = decode_id(data["ids"][0])
    # A snowflake: its high bits are the started_at time.
    assert snowflake_time(cdr_id) == parse_rfc3339("2024-06-01T10:00:00Z")
    item = orjson.loads(client_full.get(f"/api/cdrs/{data['ids'][0]}").content)["items"][0]
    assert item["caller"] == payload["caller"] and item["call_id"] == payload["call_id"]


def test_batch_keeps_input_order_and_given_ids(client_full):
    given = encode_id(700551909773148160)
    items = [cdr_payload(), cdr_payload(id=given), cdr_payload()]
    data = orjson.loads(post(client_full, {"items": items}).content)
    assert data["created"] == 3
    assert data["ids"][1] == given
    assert client_full.get(f"/api/cdrs/{given}").status_code == 200


def test_cost_is_stored_exactly(client_full):
    data = orjson.loads(
        post(
            client_full, b'{"items": [' + orjson.dumps(cdr_payload())[:-1] + b',"cost":0.1235}]}'
        ).content
    )
    stored = Cdr.objects.get(pk=decode_id(data["ids"][0])).cost
    assert stored == Decimal("0.1235")


def test_one_bad_item_stores_nothing_and_lists_every_bad_item(client_full):
    items = [
        cdr_payload(),
        cdr_payload(caller="x" * 257),
        cdr_payload(),
        cdr_payload(direction="SIDEWAYS", duration=-1),
        cdr_payload(started_at="yesterday"),
    ]
    response = post(client_full, {"items": items})
    assert response.status_code == 400
    error = orjson.loads(response.content)["errors"][0]
    assert error["code"] == "VALIDATE_FAILED"
    bad = {entry["index"]: entry["errors"] for entry in error["detail"]["items"]}
    assert set(bad) == {1, 3, 4}
    assert "caller" in bad[1] and {"direction", "duration"} <= set(bad[3])
    assert "started_at" in bad[4]
    assert Cdr.objects.count() == 0


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"unknown_field": 1}, "unknown_field"),
        ({"status_code": 1000}, "status_code"),
        ({"status_code": "200"}, "status_code"),
        ({"duration": 2**31}, "duration"),
        ({"duration": True}, "duration"),
        ({"reroute_reason": "BOGUS"}, "reroute_reason"),
        ({"end_reason": None}, "end_reason"),
        ({"started_at": None}, "started_at"),
        ({"ended_at": "2024-01-01 10:00"}, "ended_at"),
        ({"started_at": "2024-02-30T10:00:00Z"}, "started_at"),
        ({"outbound_caller_id": "9" * 65}, "outbound_caller_id"),
        ({"user_data": "x" * 8193}, "user_data"),
        ({"caller": "nul\x00byte"}, "caller"),
        ({"caller": 101}, "caller"),
        ({"cost": "0.5"}, "cost"),
        ({"cost": 0.1234567}, "cost"),
        ({"cost": 12345678901.5}, "cost"),
        ({"id": "not-an-id"}, "id"),
        ({"id": "MA=="}, "id"),
    ],
)
def test_invalid_fields_are_rejected_not_truncated(client_full, override, field):
    response = post(client_full, cdr_payload(**override))
    assert response.status_code == 400
    error = orjson.loads(response.content)["errors"][0]
    assert field in error["detail"]["items"][0]["errors"]
    assert Cdr.objects.count() == 0


def test_missing_required_field_is_400(client_full):
    payload = cdr_payload()
    del payload["direction"]
    response = post(client_full, payload)
    assert response.status_code == 400
    assert "direction" in orjson.loads(response.content)["errors"][0]["message"]


@pytest.mark.parametrize(
    "body",
    [b"[]", b'"text"', b"42", b'{"items": []}', b'{"items": [1]}', b"null", b"{,}", b"\xff\xfe"],
)
def test_bodies_that_are_not_cdrs_are_400(client_full, body):
    response = post(client_full, body)
    assert response.status_code == 400
    assert orjson.loads(response.content)["errors"][0]["code"] == "VALIDATE_FAILED"


def test_more_than_1000_items_is_400(client_full):
    response = post(client_full, {"items": [cdr_payload() for _ in range(1001)]})
    assert response.status_code == 400
    assert Cdr.objects.count() == 0


def test_body_over_the_limit_is_413(client_full, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = post(client_full, {"items": [cdr_payload(user_data="x" * 8000) for _ in range(3)]})
    assert response.status_code == 413
    assert orjson.loads(response.content)["errors"][0]["code"] == "PAYLOAD_TOO_LARGE"


def test_resending_is_recognised_by_id_and_by_natural_key(client_full):
    with_id = cdr_payload(id=encode_id(42))
    without_id = cdr_payload()
    first = orjson.loads(post(client_full, {"items": [with_id, without_id]}).content)
    assert first["created"] == 2
    again = orjson.loads(post(client_full, {"items": [without_id, with_id]}).content)
    assert again == {"created": 0, "duplicates": 2, "ids": [first["ids"][1], first["ids"][0]]}
    assert Cdr.objects.count() == 2
    # Same id with different content is still the stored CDR (the id identifies it).
    changed = dict(with_id, caller="999")
    third = orjson.loads(post(client_full, changed).content)
    assert third["duplicates"] == 1 and third["ids"] == [encode_id(42)]


def test_duplicates_within_one_batch(client_full):
    a = cdr_payload()
    data = orjson.loads(post(client_full, {"items": [a, a, cdr_payload(), a]}).content)
    assert data["created"] == 2 and data["duplicates"] == 2
    assert data["ids"][0] == data["ids"][1] == data["ids"][3]
    assert Cdr.objects.count() == 2


def test_legs_sharing_a_call_id_are_distinct(client_full):
    leg1 = cdr_payload(call_id="shared", caller="101", callee="102")
    leg2 = dict(leg1, callee="103")
    data = orjson.loads(post(client_full, {"items": [leg1, leg2]}).content)
    assert data["created"] == 2


def test_write_scope_is_needed(api_client):
    response = post(api_client(scopes=("read", "billing")), cdr_payload())
    assert response.status_code == 403
    assert Cdr.objects.count() == 0


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_of_the_same_cdr_store_exactly_one(api_client):
    assert connection.vendor == "postgresql"
    client = api_client(scopes=("read", "write"))
    results = post_concurrently(client, orjson.dumps(cdr_payload(call_id="race@x")))
    assert [r["status"] for r in results] == [201] * 6
    assert sum(r["created"] for r in results) == 1
    assert sum(r["duplicates"] for r in results) == 5
    assert len({r["ids"][0] for r in results}) == 1
    assert Cdr.objects.filter(call_id="race@x").count() == 1
    listed = orjson.loads(client.get("/api/cdrs").content)
    assert listed["count"] == 1  # the counter moved once


def test_unknown_field_names_are_echoed_safely(client_full):
    payload = cdr_payload(**{"\x00DEC:1": 1, "b\x00DEC:2": 2, "\x00DEC:3": 3})
    response = post(client_full, payload)
    assert response.status_code == 400
    errors = orjson.loads(response.content)["errors"][0]["detail"]["items"][0]["errors"]
    assert set(errors) == {"\\x00DEC:1", "b\\x00DEC:2", "\\x00DEC:3"}
