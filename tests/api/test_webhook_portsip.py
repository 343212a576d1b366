"""POST /api/webhooks/portsip: PortSIP's Push CDR events, over real HTTP (test client) and DB.

Event shapes follow docs/portsip-push-cdr.md (§4: the newest and the older call_cdr
examples); values are our own. tests/fixtures/portsip/ holds whole events and the CDR the
API must then return for each.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.test import Client

from cdrs import portsip
from cdrs.ids import decode_id, encode_id, snowflake_time
from cdrs.models import Cdr, PortsipDeadLetter
from cdrs.values import parse_rfc3339
from tests.factories import cdr_payload, create_cdr

pytestmark = pytest.mark.django_db

URL = "/api/webhooks/portsip"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "portsip"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def call_cdr(**overrides: Any) -> dict[str, Any]:
    """The newest call_cdr shape (no cdr_id), with overrides; None removes a key."""
    event = load("newest.event.json")
    for key, value in overrides.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def post(client: Client, event: Any, **extra: Any):
    body = event if isinstance(event, bytes) else orjson.dumps(event)
    extra.setdefault("content_type", "application/json")
    return client.post(URL, body, **extra)


def answer(response) -> dict[str, Any]:
    assert response.status_code == 200, response.content
    return orjson.loads(response.content)


def stored(client: Client, public_id: str) -> dict[str, Any]:
    response = client.get(f"/api/cdrs/{public_id}")
    assert response.status_code == 200, response.content
    return orjson.loads(response.content)["items"][0]


def error(response) -> dict[str, Any]:
    return orjson.loads(response.content)["errors"][0]


# --- fixture-driven end to end ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["newest", "older"])
def test_fixture_event_is_served_back_as_the_mapped_cdr(client_full, name):
    expected = load(f"{name}.cdr.json")
    data = answer(post(client_full, load(f"{name}.event.json")))
    assert data["created"] == 1 and data["duplicates"] == 0 and len(data["ids"]) == 1
    item = stored(client_full, data["ids"][0])
    if "id" in expected:  # cdr_id sent: it is the CDR's id
        assert data["ids"] == [expected["id"]]
    else:  # no cdr_id (both PortSIP examples): a snowflake from start_time
        expected["id"] = data["ids"][0]
        assert snowflake_time(decode_id(item["id"])) == parse_rfc3339(expected["started_at"])
    assert item == expected


# --- variants of call_cdr -----------------------------------------------------------------------


def test_unanswered_call_has_no_answer_time_and_is_cancelled(client_full):
    event = call_cdr(
        answered_time="0",
        call_status="noanswer",
        ended_reason="None",
        talk_duration=0,
        status_code="487",
    )
    item = stored(client_full, answer(post(client_full, event))["ids"][0])
    assert item["answered_at"] is None
    assert item["rang_at"] == "2025-12-02T10:40:02Z"
    assert item["end_reason"] == "CANCELLED"
    assert item["duration"] == 0 and item["status_code"] == 487


def test_failed_call_that_never_rang_keeps_its_sip_status(client_full):
    event = call_cdr(
        answered_time="0",
        ring_time="0",
        call_status="fail",
        ended_reason=None,
        talk_duration="0",
        status_code="486",
        call_targets=[],
    )
    item = stored(client_full, answer(post(client_full, event))["ids"][0])
    assert item["rang_at"] is None and item["answered_at"] is None
    assert item["status_code"] == 486 and item["end_reason"] == "CANCELLED"


@pytest.mark.parametrize(
    ("sent", "direction"),
    [
        ("in", "INBOUND_CALL"),
        ("inbound", "INBOUND_CALL"),
        ("out", "OUTBOUND_CALL"),
        ("outbound", "OUTBOUND_CALL"),
        ("ext", "EXTENSION_CALL"),
        ("internal", "EXTENSION_CALL"),
        ("in2out", "INBOUND_OUTBOUND_CALL"),
        ("inbound_outbound", "INBOUND_OUTBOUND_CALL"),
        ("IN2OUT", "INBOUND_OUTBOUND_CALL"),
        ("Inbound", "INBOUND_CALL"),
    ],
)
def test_every_direction_spelling(client_full, sent, direction):
    item = stored(client_full, answer(post(client_full, call_cdr(direction=sent)))["ids"][0])
    assert item["direction"] == direction


@pytest.mark.parametrize(
    ("sent", "end_reason"),
    [
        ("caller_disconnect", "CALLER_DISCONNECTED"),
        ("caller_disconnected", "CALLER_DISCONNECTED"),
        ("callee_disconnect", "CALLEE_DISCONNECTED"),
        ("callee_disconnected", "CALLEE_DISCONNECTED"),
        ("blind_transfer_complete", "BLIND_TRANSFER_COMPLETED"),
        ("attended_transfer_complete", "CONSULT_TRANSFER_COMPLETED"),
        ("replaced", "REPLACED"),
        ("referred", "REFERRED"),
        ("redirected", "REDIRECTED"),
        ("cancelled", "CANCELLED"),
        ("CALLER_DISCONNECT", "CALLER_DISCONNECTED"),
        ("CONSULT_TRANSFER_COMPLETED", "CONSULT_TRANSFER_COMPLETED"),
    ],
)
@pytest.mark.parametrize("key", ["ended_reason", "end_reason"])
def test_every_end_reason_spelling_under_either_key(client_full, sent, end_reason, key):
    event = call_cdr(**{"ended_reason": None, key: sent})
    item = stored(client_full, answer(post(client_full, event))["ids"][0])
    assert item["end_reason"] == end_reason


def test_did_cid_key_is_the_did_too(client_full):
    event = call_cdr(did=None, did_cid="18005550199")
    assert stored(client_full, answer(post(client_full, event))["ids"][0])["did_cid"] == (
        "18005550199"
    )


@pytest.mark.parametrize(
    "numbers",
    [
        {"status_code": "0", "talk_duration": 57, "start_time": "1764672000"},
        {"status_code": 0, "talk_duration": "57", "start_time": 1764672000},
        {"status_code": "0", "talk_duration": 57.0, "start_time": "1764672000"},
    ],
)
def test_numbers_as_numbers_or_strings_store_the_same_cdr(client_full, numbers):
    item = stored(client_full, answer(post(client_full, call_cdr(**numbers)))["ids"][0])
    assert item["status_code"] == 0 and item["duration"] == 57
    assert item["started_at"] == "2025-12-02T10:40:00Z"


@pytest.mark.parametrize("cdr_id", ["937186431561728001", 937186431561728001])
def test_cdr_id_as_string_or_number_is_the_id(client_full, cdr_id):
    data = answer(post(client_full, call_cdr(cdr_id=cdr_id)))
    assert data["ids"] == [encode_id(937186431561728001)]
    assert Cdr.objects.filter(pk=937186431561728001).exists()


def test_redelivered_event_is_a_duplicate_with_the_same_id(client_full):
    with_id = call_cdr(cdr_id="937186431561728001")
    without_id = call_cdr(call_id="other-call@pbx")
    first = [answer(post(client_full, e)) for e in (with_id, without_id)]
    again = [answer(post(client_full, e)) for e in (with_id, without_id)]
    for before, after in zip(first, again, strict=True):
        assert before["created"] == 1
        assert after == {"created": 0, "duplicates": 1, "ids": before["ids"]}
    assert Cdr.objects.count() == 2


def test_unknown_keys_and_malformed_call_targets_are_ignored(client_full):
    event = call_cdr(call_targets="not a list", cli="+15550000", brand_new_key={"x": [1]})
    assert answer(post(client_full, event))["created"] == 1


# --- dead letters ---------------------------------------------------------------------------------


def test_unknown_enum_is_dead_lettered_then_replayed_once_the_mapping_accepts_it(
    client_full, monkeypatch
):
    from django.core.management import call_command

    event = call_cdr(direction="sideways")
    body = orjson.dumps(event)
    data = answer(post(client_full, body))
    assert data["created"] == 0 and data["ids"] == []
    assert data["errors"][0]["code"] == "VALIDATE_FAILED"
    assert "direction" in data["errors"][0]["detail"]["fields"]
    letter = PortsipDeadLetter.objects.get(pk=data["dead_letter"])
    assert letter.body == body.decode()  # kept whole, byte for byte
    assert letter.token_prefix == client_full.token.prefix
    assert letter.event_type == "call_cdr"
    assert not Cdr.objects.exists()
    # A retry by the PBX fails the same way and is kept too; nothing is lost or stored.
    assert "dead_letter" in answer(post(client_full, body))

    # The fix: the mapping learns the new value. The replay stores the call exactly once.
    monkeypatch.setitem(portsip.DIRECTIONS, "sideways", "EXTENSION_CALL")
    call_command("replay_portsip_events", "--all")
    assert Cdr.objects.count() == 1
    assert Cdr.objects.get().direction == "EXTENSION_CALL"
    letter.refresh_from_db()
    assert letter.replay_result is not None
    assert letter.replayed_at is not None and letter.replay_result["created"] == 1


def test_answered_call_without_an_end_reason_is_dead_lettered(client_full):
    data = answer(post(client_full, call_cdr(ended_reason="None")))
    assert "ended_reason" in data["errors"][0]["detail"]["fields"]
    assert PortsipDeadLetter.objects.filter(pk=data["dead_letter"]).exists()
    assert not Cdr.objects.exists()


@pytest.mark.parametrize(
    ("event", "why"),
    [
        ([{"event_type": "call_cdr"}], "one JSON object"),
        ("call_cdr", "one JSON object"),
        ({"cdr": {"caller": "101"}}, "event_type is missing"),
        (call_cdr(start_time="0"), "started_at"),
        (call_cdr(ended_time="1764672065000"), "ended_time"),
        (call_cdr(caller="9" * 300), "caller"),
        (call_cdr(status_code="busy"), "status_code"),
        (call_cdr(cdr_id="-5"), "cdr_id"),
        (call_cdr(caller_domain=["a"]), "caller_domain"),
    ],
)
def test_events_that_cannot_be_stored_are_kept_and_answered_200(client_full, event, why):
    data = answer(post(client_full, event))
    assert why in json.dumps(data["errors"][0])
    assert PortsipDeadLetter.objects.filter(pk=data["dead_letter"]).exists()
    assert not Cdr.objects.exists()


# --- other event types ----------------------------------------------------------------------------


def _metric(client: Client, event_type: str, outcome: str) -> float:
    text = client.get("/metrics").content.decode()
    labels = f'event_type="{event_type}",outcome="{outcome}"'
    pattern = r"^cdr_portsip_events_total\{" + re.escape(labels) + r"\} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(
    "event_type",
    [
        "call_start",
        "call_update_info",
        "cdr_target_add",
        "cdr_target_ringing",
        "cdr_target_answer",
        "cdr_target_noanswer",
        "cdr_target_fail",
        "cdr_target_end",
    ],
)
def test_other_event_types_are_acknowledged_ignored_and_counted(client_full, event_type):
    before = _metric(Client(), event_type, "ignored")
    event = {
        "event_type": event_type,
        "call_id": "Q0sXhDgxnowmQp1P9swHLw..",
        "caller": "sip:101@acme.example.com",
        "callee": "sip:102@acme.example.com",
        "cdr_id": "798119942409949185",
        "direction": "ext",
        "session_id": "798119942409949184",
        "tenant_id": "798119491077668864",
        "time": "1705051422",
    }
    data = answer(post(client_full, event))
    assert data == {"created": 0, "duplicates": 0, "ids": [], "ignored": event_type}
    assert not Cdr.objects.exists() and not PortsipDeadLetter.objects.exists()
    assert _metric(Client(), event_type, "ignored") == before + 1


def test_stored_and_dead_lettered_events_are_counted(client_full):
    created = _metric(Client(), "call_cdr", "created")
    duplicate = _metric(Client(), "call_cdr", "duplicate")
    dead = _metric(Client(), "call_cdr", "dead_lettered")
    post(client_full, call_cdr())
    post(client_full, call_cdr())
    post(client_full, call_cdr(direction="sideways"))
    assert _metric(Client(), "call_cdr", "created") == created + 1
    assert _metric(Client(), "call_cdr", "duplicate") == duplicate + 1
    assert _metric(Client(), "call_cdr", "dead_lettered") == dead + 1


# --- authentication and authorisation -------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("user", ["portsip", "", "anything at all"])
def test_basic_auth_with_the_token_as_password(api_client, user):
    token = api_client(scopes=("write",)).plain_token
    response = post(Client(), call_cdr(), HTTP_AUTHORIZATION=basic(user, token))
    assert answer(response)["created"] == 1


def test_bearer_auth(api_client):
    token = api_client(scopes=("write",)).plain_token
    response = post(Client(), call_cdr(), HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer(response)["created"] == 1


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer cdr_abcdefghij_xxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "Basic " + base64.b64encode(b"portsip:cdr_abcdefghij_xxxxxxxxxxxxxxxxxxxxxxxxx").decode(),
        "Basic " + base64.b64encode(b"portsip:").decode(),
        "Basic " + base64.b64encode(b"no-colon-at-all").decode(),
        "Basic !!!not-base64!!!",
        'Digest username="portsip", realm="api", nonce="x", uri="/", response="y"',
    ],
)
def test_missing_or_wrong_credentials_are_401_with_both_challenges(header):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    response = post(Client(), call_cdr(), **extra)
    assert response.status_code == 401
    assert error(response)["code"] == "UNAUTHORIZED"
    challenge = response["WWW-Authenticate"]
    assert challenge.startswith("Bearer") and 'Basic realm="api"' in challenge
    assert not Cdr.objects.exists() and not PortsipDeadLetter.objects.exists()


def test_basic_with_a_revoked_token_is_401(api_client):
    client = api_client(scopes=("write",))
    client.token.enabled = False
    client.token.save()
    response = post(Client(), call_cdr(), HTTP_AUTHORIZATION=basic("x", client.plain_token))
    assert response.status_code == 401


def test_a_token_without_the_write_scope_is_403(api_client):
    response = post(api_client(scopes=("read", "billing")), call_cdr())
    assert response.status_code == 403
    assert "write" in error(response)["message"]
    assert not Cdr.objects.exists()


def test_basic_is_only_for_the_webhook(api_client):
    token = api_client(scopes=("read",)).plain_token
    response = Client().get("/api/cdrs", HTTP_AUTHORIZATION=basic("x", token))
    assert response.status_code == 401


def test_domain_limited_token_stores_only_its_own_domains(api_client):
    tenant = api_client(scopes=("read", "write"), domains=("acme.example.com",))
    foreign = call_cdr(callee_domain="globex.example.net", caller_domain="192.0.2.1")
    response = post(tenant, foreign)
    assert response.status_code == 403
    assert error(response)["code"] == "FORBIDDEN"
    assert not Cdr.objects.exists() and not PortsipDeadLetter.objects.exists()
    own = answer(post(tenant, call_cdr()))  # callee_domain acme.example.com
    assert own["created"] == 1
    assert stored(tenant, own["ids"][0])["callee_domain"] == "acme.example.com"


def test_a_duplicate_of_another_tenants_cdr_does_not_reveal_its_id(api_client):
    event = call_cdr()
    # Another tenant's CDR with the same natural key (call_id, start, caller, callee).
    foreign_id = create_cdr(
        **cdr_payload(
            call_id=event["call_id"],
            started_at="2025-12-02T10:40:00Z",
            caller=event["caller"],
            callee=event["callee"],
            caller_domain="globex.example.net",
            callee_domain="globex.example.net",
        )
    )
    tenant = api_client(scopes=("read", "write"), domains=("acme.example.com",))
    # Answered as if the foreign CDR did not exist (README, "Tenants and write tokens"):
    # stored once for this tenant, under an id of its own; the foreign CDR is untouched.
    data = answer(post(tenant, event))
    assert data["created"] == 1 and data["duplicates"] == 0
    assert data["ids"][0] != encode_id(foreign_id)
    assert stored(tenant, data["ids"][0])["callee_domain"] == "acme.example.com"
    again = answer(post(tenant, event))  # PortSIP's retry: a duplicate of the tenant's own CDR
    assert again["duplicates"] == 1 and again["ids"] == data["ids"]
    assert Cdr.objects.filter(call_id=event["call_id"]).count() == 2


# --- HTTP details PortSIP does not document -------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
)
def test_any_content_type_and_accept_header_is_answered_with_json(client_full, content_type):
    response = post(client_full, call_cdr(), content_type=content_type, HTTP_ACCEPT="text/html")
    assert answer(response)["created"] == 1
    assert response["Content-Type"] == "application/json"


def test_trailing_slash_is_served_without_a_redirect(client_full):
    response = client_full.post(
        URL + "/", orjson.dumps(call_cdr()), content_type="application/json"
    )
    assert answer(response)["created"] == 1


def test_other_methods_are_405_never_404(client_full):
    for method in (client_full.get, client_full.put, client_full.delete):
        assert method(URL).status_code == 405


@pytest.mark.parametrize(
    "body", [b"", b"   ", b"not json", b"{,}", b'{"a": NaN}', b"\xff\xfe", b"[" * 100_000]
)
def test_a_body_that_is_not_json_is_400_and_logged(client_full, body, caplog):
    with caplog.at_level(logging.WARNING, logger="cdrs.webhook"):
        response = post(client_full, body)
    assert response.status_code == 400
    assert error(response)["code"] == "VALIDATE_FAILED"
    assert not PortsipDeadLetter.objects.exists()
    assert any("body rejected" in r.getMessage() for r in caplog.records)
    assert any(r.token_prefix == client_full.token.prefix for r in caplog.records)


def test_a_body_over_the_limit_is_413_and_logged(client_full, settings, caplog):
    settings.CDR_WEBHOOK_MAX_BODY_BYTES = 4096
    with caplog.at_level(logging.WARNING, logger="cdrs.webhook"):
        response = post(client_full, call_cdr(user_data="x" * 5000))
    assert response.status_code == 413
    assert error(response)["code"] == "PAYLOAD_TOO_LARGE"
    assert not Cdr.objects.exists() and not PortsipDeadLetter.objects.exists()
    assert any("size limit" in r.getMessage() for r in caplog.records)
