"""Token and data commands, run as an operator would (call_command with real arguments)."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from cdrs.ids import encode_id
from cdrs.models import ApiToken, Cdr
from tests.factories import cdr_payload, create_cdr

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_token_prints_only_the_token_on_the_last_line():
    out, err = run("create_token", "alice")
    token = out.strip().splitlines()[-1]
    assert token.startswith("cdr_") and " " not in token
    stored = ApiToken.objects.get(user__username="alice")
    assert stored.scopes == ["read"]  # the default: least privilege
    assert token not in err and stored.prefix in err
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/cdrs").status_code == 200


def test_create_token_without_scope_can_read_but_neither_see_costs_nor_write():
    out, err = run("create_token", "erin")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {out.strip().splitlines()[-1]}")
    assert "scopes read." in err or "scopes read," in err
    cdr = create_cdr(cost=Decimal("0.5"), billed_account="acct-1")
    item = orjson.loads(api.get(f"/api/cdrs/{encode_id(cdr)}").content)["items"][0]
    assert "cost" not in item and "billed_account" not in item
    assert api.get("/api/cdrs", {"filter": "cost gt 0"}).status_code == 400
    posted = api.post("/api/cdrs", cdr_payload(), content_type="application/json")
    assert posted.status_code == 403
    assert Cdr.objects.count() == 1


def test_create_token_grants_billing_and_write_only_when_named():
    run("create_token", "frank", "--scope", "read", "--scope", "billing", "--scope", "write")
    assert ApiToken.objects.get(user__username="frank").scopes == ["read", "billing", "write"]


def test_create_token_with_scopes_domains_and_expiry():
    out, _ = run(
        "create_token", "pbx", "--scope", "write", "--domain", "A.Example",
        "--domain", "b.example", "--expires-in", "30",
    )  # fmt: skip
    token = ApiToken.objects.get(user__username="pbx")
    assert token.scopes == ["write"]
    assert token.domains == ["a.example", "b.example"]
    assert token.expires_at is not None
    left = token.expires_at - timezone.now()
    assert timedelta(days=29, hours=23) < left <= timedelta(days=30)
    plain = out.strip().splitlines()[-1]
    # write-only: listing is forbidden
    assert Client().get("/api/cdrs", HTTP_AUTHORIZATION=f"Bearer {plain}").status_code == 403


@pytest.mark.parametrize(
    "args",
    [("--scope", "admin"), ("--expires-in", "0"), ("--expires-in", "-3")],
)
def test_create_token_rejects_bad_arguments(args):
    with pytest.raises((CommandError, SystemExit)):
        run("create_token", "bob", *args)
    assert not ApiToken.objects.exists()


def test_list_tokens_never_shows_a_secret():
    out, _ = run("create_token", "carol", "--domain", "c.example", "--scope", "read",
                 "--scope", "billing")  # fmt: skip
    plain = out.strip().splitlines()[-1]
    listing, _ = run("list_tokens")
    token = ApiToken.objects.get()
    assert token.prefix in listing and "carol" in listing and "c.example" in listing
    assert "read,billing" in listing and "enabled" in listing
    assert plain not in listing and plain.split("_", 2)[2] not in listing
    assert token.digest not in listing


def test_revoke_token_by_prefix_or_whole_token():
    out, _ = run("create_token", "dave")
    plain = out.strip().splitlines()[-1]
    prefix = ApiToken.objects.get().prefix
    run("revoke_token", prefix)
    assert not ApiToken.objects.get().enabled
    assert Client().get("/api/cdrs", HTTP_AUTHORIZATION=f"Bearer {plain}").status_code == 401
    ApiToken.objects.update(enabled=True)
    run("revoke_token", plain)
    assert not ApiToken.objects.get().enabled
    with pytest.raises(CommandError, match="no token"):
        run("revoke_token", "zzzzzzzzzz")


def test_generate_cdrs_is_deterministic_and_importable(tmp_path):
    def generate(seed: str, name: str) -> str:
        path = tmp_path / name
        run("generate_cdrs", "--rows", "40", "--seed", seed, "-o", str(path))
        return path.read_text()

    first, second, other = generate("5", "a.ndjson"), generate("5", "b.ndjson"), generate("6", "c")
    assert first == second != other
    *lines, trailer = first.splitlines()
    assert len(lines) == 40 and all("id" not in orjson.loads(line) for line in lines)
    assert orjson.loads(trailer) == {"export_complete": True, "rows": 40}  # as an export ends
    path = tmp_path / "gen.csv"
    run("generate_cdrs", "--rows", "40", "--seed", "5", "--format", "csv", "-o", str(path))
    out, _ = run("import_cdrs", str(path), "--quiet")
    assert "created 40" in out
    ndjson = tmp_path / "gen.ndjson"
    ndjson.write_text(first)
    out, _ = run("import_cdrs", str(ndjson), "--quiet")
    assert "created 0, duplicates 40" in out  # the same CDRs in the other format


def test_seed_demo_only_fills_an_empty_database():
    out, _ = run("seed_demo", "--if-empty", "--rows", "30")
    assert "Loaded 30 demo CDRs" in out and "curl -H 'Authorization: Bearer cdr_" in out
    # The demo token is the one that has every scope, and the output says so.
    assert "every scope (read, billing, write;" in out
    assert ApiToken.objects.get().scopes == ["read", "billing", "write"]
    assert Cdr.objects.count() == 30
    again, _ = run("seed_demo", "--if-empty", "--rows", "30")
    assert again == "" and Cdr.objects.count() == 30 and ApiToken.objects.count() == 1
