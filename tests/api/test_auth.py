"""Bearer tokens: 401/403 rules, hashing, expiry, revocation, last use."""

from __future__ import annotations

import time
from datetime import timedelta

import orjson
import pytest
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone

from cdrs.auth import clear_token_cache
from cdrs.models import ApiToken
from tests.factories import cdr_payload

pytestmark = pytest.mark.django_db


def _error(response):
    return orjson.loads(response.content)["errors"][0]


def _assert_401(response):
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert _error(response)["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token cdr_abcdefghij_xxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "Bearer cdr_abcdefghij_xxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # well-formed, unknown
        "Bearer not-a-token",
        "Bearer a b",
    ],
)
def test_missing_malformed_or_unknown_token_is_401(header):
    client = Client()
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    for path in ("/api/cdrs", "/api/cdrs/NzAw", "/api/cdrs/export"):
        _assert_401(client.get(path, **extra))


def test_wrong_secret_with_a_real_prefix_is_401(api_client):
    client = api_client()
    plain = client.plain_token
    forged = plain[:-4] + ("AAAA" if not plain.endswith("AAAA") else "BBBB")
    _assert_401(Client().get("/api/cdrs", HTTP_AUTHORIZATION=f"Bearer {forged}"))


def test_expired_token_is_401(api_client):
    client = api_client()
    ApiToken.objects.filter(pk=client.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    _assert_401(client.get("/api/cdrs"))


def test_revoked_token_is_401(api_client):
    client = api_client()
    assert client.get("/api/cdrs").status_code == 200
    ApiToken.objects.filter(pk=client.token.pk).update(enabled=False)
    _assert_401(client.get("/api/cdrs"))


def test_missing_scope_is_403(api_client):
    no_read = api_client(scopes=("write",))
    response = no_read.get("/api/cdrs")
    assert response.status_code == 403
    assert _error(response)["code"] == "FORBIDDEN"
    assert "read" in _error(response)["message"]
    read_only = api_client(scopes=("read",))
    response = read_only.post("/api/cdrs", cdr_payload(), content_type="application/json")
    assert response.status_code == 403


def test_only_a_keyed_hash_is_stored(api_client):
    client = api_client()
    plain = client.plain_token
    secret = plain.split("_", 2)[2]
    with connection.cursor() as cur:
        cur.execute("SELECT * FROM cdrs_api_token")
        stored = repr(cur.fetchall())
    assert secret not in stored and plain not in stored
    token = ApiToken.objects.get(pk=client.token.pk)
    assert len(token.digest) == 64 and token.prefix in plain


def test_last_used_is_written_at_most_once_a_minute(api_client):
    client = api_client()
    assert ApiToken.objects.get(pk=client.token.pk).last_used_at is None
    client.get("/api/cdrs")
    first = ApiToken.objects.get(pk=client.token.pk).last_used_at
    assert first is not None
    client.get("/api/cdrs")
    assert ApiToken.objects.get(pk=client.token.pk).last_used_at == first
    ApiToken.objects.filter(pk=client.token.pk).update(last_used_at=first - timedelta(minutes=2))
    client.get("/api/cdrs")
    last = ApiToken.objects.get(pk=client.token.pk).last_used_at
    assert last is not None and last > first


@override_settings(CDR_TOKEN_CACHE_SECONDS=30)
def test_token_cache_saves_the_lookup_query(api_client, django_assert_num_queries):
    clear_token_cache()
    client = api_client()
    client.get("/api/cdrs?count=false")  # fills the cache, writes last_used
    with django_assert_num_queries(1):  # just the page
        assert client.get("/api/cdrs?count=false").status_code == 200
    clear_token_cache()


def test_error_bodies_never_echo_the_token(api_client):
    client = api_client()
    plain = client.plain_token
    bad = Client().get("/api/cdrs", HTTP_AUTHORIZATION=f"Bearer {plain}x")
    assert plain.encode() not in bad.content


def test_tokens_of_a_deactivated_user_are_401_on_every_endpoint(api_client, django_user_model):
    client = api_client()
    assert client.get("/api/cdrs").status_code == 200
    django_user_model.objects.filter(pk=client.token.user_id).update(is_active=False)
    for response in (
        client.get("/api/cdrs"),
        client.get("/api/cdrs/NzAwNTUxOTA5NzczMTQ4MTYw"),
        client.get("/api/cdrs/export"),
        client.post("/api/cdrs", cdr_payload(), content_type="application/json"),
    ):
        _assert_401(response)
        assert "inactive" in _error(response)["message"]


@override_settings(CDR_TOKEN_CACHE_SECONDS=1)
def test_a_deactivated_user_is_locked_out_once_the_token_cache_expires(
    api_client, django_user_model
):
    clear_token_cache()
    client = api_client()
    cached_at = time.monotonic()
    assert client.get("/api/cdrs?count=false").status_code == 200  # now cached
    django_user_model.objects.filter(pk=client.token.user_id).update(is_active=False)
    # Within the window the cached token still answers (the documented trade-off)...
    response = client.get("/api/cdrs?count=false")
    if time.monotonic() - cached_at < 0.9:  # not on a machine too busy to tell
        assert response.status_code == 200
    time.sleep(max(0.0, cached_at + 1.05 - time.monotonic()))
    # ...and once it has passed the user is out, like a revoked token.
    _assert_401(client.get("/api/cdrs?count=false"))
    clear_token_cache()


def test_rotating_the_pepper_keeps_tokens_working_and_rehashes_them_on_use(api_client):
    used = api_client(scopes=("read",))
    idle = api_client(scopes=("read",))
    old_digest = ApiToken.objects.get(pk=used.token.pk).digest
    # A new pepper alone invalidates every token...
    with override_settings(CDR_TOKEN_PEPPER="new-pepper", CDR_TOKEN_PEPPER_PREVIOUS=[]):
        _assert_401(used.get("/api/cdrs"))
    # ...the old one listed as previous keeps them working, and a used token moves over.
    with override_settings(
        CDR_TOKEN_PEPPER="new-pepper", CDR_TOKEN_PEPPER_PREVIOUS=["tests-only-pepper"]
    ):
        assert used.get("/api/cdrs").status_code == 200
    assert ApiToken.objects.get(pk=used.token.pk).digest != old_digest
    with override_settings(CDR_TOKEN_PEPPER="new-pepper", CDR_TOKEN_PEPPER_PREVIOUS=[]):
        assert used.get("/api/cdrs").status_code == 200
        # A token not used during the rotation window stops with the old pepper's removal.
        _assert_401(idle.get("/api/cdrs"))
