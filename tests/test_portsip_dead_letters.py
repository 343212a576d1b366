"""PortSIP dead letters: read-only in the admin, stored later by replay_portsip_events."""

from __future__ import annotations

import io
import json
from pathlib import Path

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from cdrs import portsip
from cdrs.models import Cdr, PortsipDeadLetter

pytestmark = pytest.mark.django_db

URL = "/api/webhooks/portsip"
EVENT = json.loads(
    (Path(__file__).resolve().parent / "fixtures" / "portsip" / "newest.event.json").read_text()
)


def dead_letter(client: Client, **overrides: object) -> PortsipDeadLetter:
    body = orjson.dumps({**EVENT, **overrides})
    response = client.post(URL, body, content_type="application/json")
    assert response.status_code == 200
    return PortsipDeadLetter.objects.get(pk=orjson.loads(response.content)["dead_letter"])


def replay(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("replay_portsip_events", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def admin_client(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


def test_admin_lists_and_shows_dead_letters_read_only(client_full, admin_client):
    letter = dead_letter(client_full, direction="sideways", caller="<script>x</script>")
    listing = admin_client.get("/admin/cdrs/portsipdeadletter/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert letter.token_prefix in page and "call_cdr could not be mapped" in page
    detail = admin_client.get(f"/admin/cdrs/portsipdeadletter/{letter.pk}/change/")
    assert detail.status_code == 200
    html = detail.content.decode()
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x</script>" not in html
    assert "sideways" in html
    assert 'name="_save"' not in html  # no form to change it
    # No adding, changing or deleting, even for a superuser.
    assert admin_client.get("/admin/cdrs/portsipdeadletter/add/").status_code == 403
    change = admin_client.post(f"/admin/cdrs/portsipdeadletter/{letter.pk}/change/")
    assert change.status_code == 403
    delete = admin_client.post(
        f"/admin/cdrs/portsipdeadletter/{letter.pk}/delete/", {"post": "yes"}
    )
    assert delete.status_code == 403
    assert PortsipDeadLetter.objects.filter(pk=letter.pk, body=letter.body).exists()


def test_replay_by_id_stores_it_and_a_second_replay_does_nothing(client_full, monkeypatch):
    letter = dead_letter(client_full, direction="sideways")
    other = dead_letter(client_full, direction="backwards", call_id="other@pbx")
    monkeypatch.setitem(portsip.DIRECTIONS, "sideways", "EXTENSION_CALL")
    out, _ = replay("--id", str(letter.pk))
    assert f"#{letter.pk}: stored (created" in out
    assert Cdr.objects.count() == 1
    letter.refresh_from_db()
    assert letter.replayed_at is not None and letter.replay_attempts == 1
    other.refresh_from_db()
    assert other.replayed_at is None and other.replay_attempts == 0  # not touched
    out, _ = replay("--id", str(letter.pk))
    assert "already stored" in out and Cdr.objects.count() == 1


def test_replay_all_reports_the_ones_still_refused_and_exits_1(client_full, monkeypatch):
    fixed = dead_letter(client_full, direction="sideways")
    still = dead_letter(client_full, direction="backwards", call_id="other@pbx")
    monkeypatch.setitem(portsip.DIRECTIONS, "sideways", "EXTENSION_CALL")
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("replay_portsip_events", "--all", stdout=io.StringIO(), stderr=err)
    assert caught.value.returncode == 1
    assert f"#{still.pk}: still refused" in err.getvalue()
    fixed.refresh_from_db()
    still.refresh_from_db()
    assert fixed.replayed_at is not None
    assert still.replayed_at is None and still.replay_attempts == 1
    assert "direction" in still.error["message"]
    assert Cdr.objects.count() == 1


def test_a_replayed_duplicate_is_not_stored_twice(client_full, monkeypatch):
    letter = dead_letter(client_full, direction="sideways")
    monkeypatch.setitem(portsip.DIRECTIONS, "sideways", "EXTENSION_CALL")
    # Meanwhile the PBX (or an import) delivered the same call in a form we accepted.
    accepted = client_full.post(
        URL, orjson.dumps({**EVENT, "direction": "ext"}), content_type="application/json"
    )
    assert orjson.loads(accepted.content)["created"] == 1
    out, _ = replay("--all")
    assert "duplicate of" in out
    assert Cdr.objects.count() == 1
    letter.refresh_from_db()
    assert letter.replay_result is not None
    assert letter.replay_result["duplicates"] == 1


def test_replay_keeps_the_senders_domain_limit(api_client, monkeypatch):
    tenant = api_client(scopes=("write",), domains=("acme.example.com",))
    # Invalid and for another tenant's domain: dead-lettered before the domain check.
    letter = dead_letter(
        tenant,
        direction="sideways",
        callee_domain="globex.example.net",
        caller_domain="192.0.2.1",
    )
    assert letter.token_domains == ["acme.example.com"]
    tenant.token.delete()  # whatever became of the token since
    monkeypatch.setitem(portsip.DIRECTIONS, "sideways", "EXTENSION_CALL")
    with pytest.raises(CommandError):
        replay("--id", str(letter.pk))
    letter.refresh_from_db()
    assert letter.replayed_at is None and letter.error["code"] == "FORBIDDEN"
    assert not Cdr.objects.exists()


@pytest.mark.parametrize("args", [(), ("--id", "1", "--all"), ("--id", "999")])
def test_replay_needs_exactly_one_existing_target(args):
    with pytest.raises((CommandError, SystemExit)):
        replay(*args)
