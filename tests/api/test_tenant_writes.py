"""Tenant isolation on writes: a domain-limited token stores only CDRs of its domains, and no
answer to it tells whether a CDR outside its domains exists (README: Tenants and write tokens).

Every case goes through POST /api/cdrs with real tokens on the real database.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from django.db import connection

from cdrs.ids import decode_id, encode_id
from cdrs.models import Cdr
from tests.factories import cdr_payload
from tests.helpers import post_concurrently

pytestmark = pytest.mark.django_db

OWN = "acme.test"
FOREIGN = "globex.test"
FREE_ID = encode_id(700551909773148160)


def post(client: Any, data: Any) -> tuple[int, dict[str, Any]]:
    response = client.post("/api/cdrs", orjson.dumps(data), content_type="application/json")
    return response.status_code, orjson.loads(response.content)


def foreign(**overrides: Any) -> dict[str, Any]:
    return cdr_payload(caller_domain=FOREIGN, callee_domain=FOREIGN, **overrides)


def own(**overrides: Any) -> dict[str, Any]:
    return cdr_payload(caller_domain=OWN, callee_domain=OWN, **overrides)


def same_call(payload: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Another CDR with ``payload``'s natural key (call_id, started_at, caller, callee)."""
    keep = ("call_id", "started_at", "caller", "callee")
    return own(**{k: payload[k] for k in keep}, **overrides)


@pytest.fixture
def tenant(api_client):
    return api_client(scopes=("read", "write"), domains=(OWN,), username="acme-pbx")


@pytest.fixture
def operator(api_client):
    return api_client(scopes=("read", "write"), username="operator")


@pytest.fixture
def stored_foreign(operator) -> dict[str, Any]:
    """A CDR of another tenant, stored through an unlimited token; its payload and id."""
    payload = foreign()
    status, body = post(operator, payload)
    assert status == 201 and body["created"] == 1
    return {"payload": payload, "id": body["ids"][0]}


def shape(body: dict[str, Any]) -> dict[str, Any]:
    """An ingest answer without the values of its ids (which are new on every run)."""
    return {"created": body["created"], "duplicates": body["duplicates"], "n": len(body["ids"])}


# --- storing outside the token's domains -------------------------------------------------


def test_one_cdr_outside_the_domains_is_403_and_not_stored(tenant):
    status, body = post(tenant, foreign())
    assert status == 403
    error = body["errors"][0]
    assert error["code"] == "FORBIDDEN"
    assert "outside this token's domains" in error["message"] and OWN in error["message"]
    assert [entry["index"] for entry in error["detail"]["items"]] == [0]
    assert Cdr.objects.count() == 0


def test_a_mixed_batch_is_refused_whole_naming_each_foreign_item(tenant):
    items = [
        own(),
        foreign(),
        cdr_payload(caller_domain=FOREIGN, callee_domain=OWN.upper()),  # callee side is own
        cdr_payload(caller_domain="", callee_domain=FOREIGN),
        own(),
    ]
    status, body = post(tenant, {"items": items})
    assert status == 403
    error = body["errors"][0]
    assert error["code"] == "FORBIDDEN" and "2 of 5" in error["message"]
    assert [entry["index"] for entry in error["detail"]["items"]] == [1, 3]
    assert Cdr.objects.count() == 0


def test_either_side_in_the_domains_is_enough_in_any_case(tenant):
    items = [
        cdr_payload(caller_domain=OWN, callee_domain=FOREIGN),
        cdr_payload(caller_domain=FOREIGN, callee_domain="ACME.Test"),
    ]
    status, body = post(tenant, {"items": items})
    assert status == 201 and body["created"] == 2
    for cdr_id in body["ids"]:
        assert tenant.get(f"/api/cdrs/{cdr_id}").status_code == 200


def test_a_token_of_several_domains_may_write_to_each(api_client):
    client = api_client(scopes=("write",), domains=(OWN, "initech.test"))
    items = [own(), cdr_payload(caller_domain="initech.test", callee_domain="initech.test")]
    assert post(client, {"items": items})[0] == 201
    assert post(client, foreign())[0] == 403
    assert Cdr.objects.count() == 2


# --- duplicates must not reveal foreign CDRs -----------------------------------------------


def test_a_foreign_id_is_answered_as_a_free_id_is(tenant, stored_foreign):
    """Sending the id of a CDR it cannot see gets the same answer as sending an unused id:
    a new CDR with an id of the service's choosing; the foreign CDR is untouched."""
    foreign_id = stored_foreign["id"]
    status, with_foreign_id = post(tenant, own(id=foreign_id))
    status_free, with_free_id = post(tenant, own(id=FREE_ID))
    assert status == status_free == 201
    assert shape(with_foreign_id) == shape(with_free_id) == {"created": 1, "duplicates": 0, "n": 1}
    assert foreign_id not in with_foreign_id["ids"]
    assert FREE_ID not in with_free_id["ids"]
    # Nothing lost: the CDR is stored and the token reads it under the id it was given.
    assert tenant.get(f"/api/cdrs/{with_foreign_id['ids'][0]}").status_code == 200
    assert tenant.get(f"/api/cdrs/{foreign_id}").status_code == 404
    stored = Cdr.objects.get(pk=decode_id(foreign_id))
    assert stored.caller_domain == FOREIGN  # not overwritten


def test_resending_with_a_foreign_id_is_a_duplicate_of_its_own_cdr(tenant, stored_foreign):
    payload = own(id=stored_foreign["id"])
    first = post(tenant, payload)[1]
    again = post(tenant, payload)[1]
    assert again == {"created": 0, "duplicates": 1, "ids": first["ids"]}
    assert Cdr.objects.filter(call_id=payload["call_id"]).count() == 1


def test_own_ids_are_recognised_as_before(tenant):
    first = post(tenant, own())[1]
    again = post(tenant, own(id=first["ids"][0]))[1]  # same id, other content
    assert again == {"created": 0, "duplicates": 1, "ids": first["ids"]}


def test_an_own_id_is_recognised_whatever_the_case_of_its_domains(tenant):
    # The id check (selectors.visible_cdr_ids) applies the read side's domain rule.
    first = post(tenant, cdr_payload(caller_domain=FOREIGN, callee_domain=OWN.upper()))[1]
    again = post(tenant, own(id=first["ids"][0]))[1]  # same id, other content
    assert again == {"created": 0, "duplicates": 1, "ids": first["ids"]}


def test_a_foreign_natural_key_is_answered_as_a_new_call_is(tenant, stored_foreign):
    """Re-posting a foreign CDR's (call_id, started_at, caller, callee) with its own domains
    stores the token's CDR, exactly as when no such foreign CDR exists."""
    clash = same_call(stored_foreign["payload"])
    control = own()  # a call nobody has stored
    status, answer = post(tenant, clash)
    status_control, control_answer = post(tenant, control)
    assert status == status_control == 201
    assert shape(answer) == shape(control_answer) == {"created": 1, "duplicates": 0, "n": 1}
    assert stored_foreign["id"] not in answer["ids"]
    item = orjson.loads(tenant.get(f"/api/cdrs/{answer['ids'][0]}").content)["items"][0]
    assert item["call_id"] == clash["call_id"] and item["caller_domain"] == OWN
    # Re-sent (also with the foreign id in it), it is a duplicate of the token's own CDR.
    assert post(tenant, clash)[1] == {"created": 0, "duplicates": 1, "ids": answer["ids"]}
    again = post(tenant, dict(clash, id=stored_foreign["id"]))[1]
    assert again == {"created": 0, "duplicates": 1, "ids": answer["ids"]}
    assert Cdr.objects.filter(call_id=clash["call_id"]).count() == 2
    listed = orjson.loads(tenant.get("/api/cdrs").content)
    assert listed["count"] == 2 and stored_foreign["id"] not in {i["id"] for i in listed["items"]}


@pytest.mark.parametrize("probe", ["id", "natural_key", "both"])
def test_a_batch_of_probes_answers_the_same_whether_foreign_cdrs_exist(api_client, operator, probe):
    """Many probes in one batch: the answer has the same shape in a world with the foreign
    CDRs and in one without them, and carries none of their ids."""
    foreigns = [foreign() for _ in range(5)]
    foreign_ids = post(operator, {"items": foreigns})[1]["ids"]
    missing = [foreign() for _ in range(5)]  # never stored anywhere
    missing_ids = [encode_id(800000000000000000 + n) for n in range(5)]

    def probes(payloads: list[dict[str, Any]], ids: list[str]) -> list[dict[str, Any]]:
        out = []
        for payload, cdr_id in zip(payloads, ids, strict=True):
            base = same_call(payload) if probe in ("natural_key", "both") else own()
            out.append(dict(base, id=cdr_id) if probe in ("id", "both") else base)
        return out

    existing = post(
        api_client(scopes=("write",), domains=(OWN,)), {"items": probes(foreigns, foreign_ids)}
    )
    absent = post(
        api_client(scopes=("write",), domains=(OWN,)), {"items": probes(missing, missing_ids)}
    )
    assert existing[0] == absent[0] == 201
    assert shape(existing[1]) == shape(absent[1]) == {"created": 5, "duplicates": 0, "n": 5}
    assert not set(existing[1]["ids"]) & set(foreign_ids)


def test_in_batch_copies_of_a_clashing_cdr_are_stored_once(tenant, stored_foreign):
    clash = same_call(stored_foreign["payload"])
    body = post(tenant, {"items": [clash, clash, own(), clash]})[1]
    assert body["created"] == 2 and body["duplicates"] == 2
    assert body["ids"][0] == body["ids"][1] == body["ids"][3] != stored_foreign["id"]
    assert Cdr.objects.filter(call_id=clash["call_id"]).count() == 2  # the foreign one + ours


def test_the_same_call_with_other_own_domains_is_another_cdr(api_client):
    """For a domain-limited token the domains belong to a CDR's identity, whether or not a
    CDR of another tenant holds the call's key (otherwise the answers would differ)."""
    client = api_client(scopes=("read", "write"), domains=(OWN, "initech.test"))
    first = own()
    second = dict(first, callee_domain="initech.test")
    body = post(client, {"items": [first, second]})[1]
    assert body["created"] == 2 and body["ids"][0] != body["ids"][1]
    assert post(client, second)[1] == {"created": 0, "duplicates": 1, "ids": [body["ids"][1]]}


def test_unlimited_tokens_see_duplicates_as_before(operator, stored_foreign):
    payload = stored_foreign["payload"]
    by_key = post(operator, payload)[1]
    assert by_key == {"created": 0, "duplicates": 1, "ids": [stored_foreign["id"]]}
    by_id = post(operator, own(id=stored_foreign["id"]))[1]
    assert by_id == {"created": 0, "duplicates": 1, "ids": [stored_foreign["id"]]}
    by_key_other_domains = post(operator, same_call(payload))[1]
    assert by_key_other_domains == {"created": 0, "duplicates": 1, "ids": [stored_foreign["id"]]}
    assert Cdr.objects.count() == 1


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_of_a_clashing_cdr_store_exactly_one(api_client):
    assert connection.vendor == "postgresql"
    operator = api_client(scopes=("write",), username="operator")
    tenant = api_client(scopes=("read", "write"), domains=(OWN,), username="acme-pbx")
    held = foreign(call_id="race@tenants")
    foreign_id = post(operator, held)[1]["ids"][0]
    results = post_concurrently(tenant, orjson.dumps(same_call(held)))
    assert [r["status"] for r in results] == [201] * 6
    assert sum(r["created"] for r in results) == 1
    assert sum(r["duplicates"] for r in results) == 5
    assert len({r["ids"][0] for r in results}) == 1
    assert results[0]["ids"][0] != foreign_id
    assert Cdr.objects.filter(call_id="race@tenants").count() == 2
