"""Rate limits: rejected tokens per client IP and requests per token, 429 THROTTLED with
Retry-After, counters shared by every process through Redis or the database's
counter table (cdrs_rate_counter)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import orjson
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import Client, override_settings

from tests.conftest import delete_redis_keys
from tests.test_ops import gunicorn, http_get, manage, production_env

BAD_TOKEN = "Bearer cdr_abcdefghij_" + "x" * 40
DATABASE_CACHE = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "cdr_cache",
    }
}


@pytest.fixture(params=["redis", "database"])
def cache_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test runs on Redis (the test settings) and on the database cache table."""
    if request.param == "redis":
        yield "redis"
        return
    with override_settings(CACHES=DATABASE_CACHE):
        yield "database"


@contextmanager
def rates(**scoped: str | None) -> Iterator[None]:
    framework: dict[str, Any] = dict(settings.REST_FRAMEWORK)
    framework["DEFAULT_THROTTLE_RATES"] = {**framework["DEFAULT_THROTTLE_RATES"], **scoped}
    with override_settings(REST_FRAMEWORK=framework):
        yield


def assert_counters_in(cache_backend: str, table: str = "cdrs_rate_counter") -> None:
    """The counters are where the backend under test keeps them (not some other cache): in
    the database, the rate limits' own table, or the admin lockout's cache table."""
    if cache_backend == "database":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {table}")
            assert cursor.fetchone()[0] > 0
    else:
        prefix = settings.CACHES["default"]["KEY_PREFIX"]
        with redis.Redis.from_url(settings.TEST_REDIS_URL) as client:
            assert next(client.scan_iter(match=f"{prefix}:*"), None) is not None


def assert_throttled(response) -> int:
    assert response.status_code == 429, response.content
    error = orjson.loads(response.content)["errors"][0]
    assert error["code"] == "THROTTLED"
    assert "Expected available in" in error["message"]
    retry_after = int(response["Retry-After"])
    assert retry_after >= 1
    return retry_after


@pytest.mark.django_db
def test_a_token_guesser_gets_429_within_a_few_dozen_tries(cache_backend, client_ro):
    """Default CDR_AUTH_FAILURE_RATE (30 per 10 minutes): the 31st rejected token is a 429,
    and from then on even a valid token from that address (a guess that hit) is refused."""
    guesser = Client(REMOTE_ADDR="203.0.113.50")
    for attempt in range(30):
        response = guesser.get("/api/cdrs", HTTP_AUTHORIZATION=BAD_TOKEN)
        assert response.status_code == 401, attempt
    retry_after = assert_throttled(guesser.get("/api/cdrs", HTTP_AUTHORIZATION=BAD_TOKEN))
    assert retry_after <= 600
    valid = f"Bearer {client_ro.plain_token}"
    assert_throttled(guesser.get("/api/cdrs", HTTP_AUTHORIZATION=valid))
    assert_counters_in(cache_backend)

    # Another address with the same token is not locked out by the guesser's failures.
    assert client_ro.get("/api/cdrs", REMOTE_ADDR="198.51.100.7").status_code == 200
    assert client_ro.get("/api/cdrs").status_code == 200  # 127.0.0.1


@pytest.mark.django_db
def test_expired_and_revoked_tokens_count_as_failures(cache_backend, api_client):
    expired = api_client(expires_in_days=1)
    expired.token.expires_at = expired.token.created_at
    expired.token.save(update_fields=["expires_at"])
    with rates(auth_failure="3/hour"):
        for _ in range(3):
            assert expired.get("/api/cdrs", REMOTE_ADDR="203.0.113.51").status_code == 401
        assert_throttled(expired.get("/api/cdrs", REMOTE_ADDR="203.0.113.51"))


@pytest.mark.django_db
def test_requests_per_token_are_limited(cache_backend, api_client):
    busy, other = api_client(scopes=("read",)), api_client(scopes=("read",))
    with rates(token="5/day"):
        for _ in range(5):
            assert busy.get("/api/cdrs").status_code == 200
        retry_after = assert_throttled(busy.get("/api/cdrs"))
        assert retry_after <= 86400
        assert_throttled(busy.get("/api/cdrs/export"))
        assert_counters_in(cache_backend)
        # Per token, not per address: another token from the same address goes on.
        assert other.get("/api/cdrs").status_code == 200
        # Health, readiness and metrics are never throttled, whatever header they carry.
        for path in ("/healthz", "/readyz", "/metrics", "/healthz", "/readyz", "/metrics"):
            assert busy.get(path).status_code == 200, path


@pytest.mark.django_db
def test_a_busy_token_gets_exactly_its_limit_with_counts_taken_in_blocks(cache_backend, api_client):
    """At 400 a day a process takes counts two at a time (throttling.RESERVE_SHARE): still
    exactly 400 requests pass, the 401st is refused, and the store holds exactly 400."""
    busy = api_client(scopes=("read",))
    with rates(token="400/day"):
        statuses = [busy.get("/api/cdrs?top=1&count=false").status_code for _ in range(400)]
        assert statuses == [200] * 400
        assert_throttled(busy.get("/api/cdrs?top=1"))
    key_part = f"throttle:token:{busy.token.prefix}:"
    if cache_backend == "database":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count FROM cdrs_rate_counter WHERE key LIKE %s", [f"%{key_part}%"]
            )
            assert [row[0] for row in cursor.fetchall()] == [402]  # 201 blocks of two
    else:
        with redis.Redis.from_url(settings.TEST_REDIS_URL) as client:
            keys = list(client.scan_iter(match=f"*{key_part}*"))
            assert [int(client.get(k)) for k in keys] == [402]


@pytest.mark.django_db
def test_the_limits_can_be_switched_off(client_ro):
    with rates(token=None, auth_failure=None):
        for _ in range(40):
            assert Client().get("/api/cdrs", HTTP_AUTHORIZATION=BAD_TOKEN).status_code == 401
        assert client_ro.get("/api/cdrs").status_code == 200


@pytest.mark.django_db
def test_an_unreachable_redis_does_not_stop_the_api(client_ro):
    """The limits fail open (logged): the rate limit store must not take PBX traffic down."""
    unreachable = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    with override_settings(CACHES=unreachable):
        assert client_ro.get("/api/cdrs").status_code == 200
        response = Client().get("/api/cdrs", HTTP_AUTHORIZATION=BAD_TOKEN)
        assert response.status_code == 401


# --- shared by every app server: two gunicorn processes, one store ---------------------


@pytest.mark.parametrize("store", ["redis", "database"])
def test_two_app_servers_share_the_counters(tmp_path, store):
    """Half the failures to one server, half to another: the next attempt on either is a
    429. Per-process counters would let each server see only its own half."""
    env = production_env(
        tmp_path,
        LOG_LEVEL="WARNING",
        CDR_AUTH_FAILURE_RATE="6/hour",
        CDR_TOKEN_RATE="4/day",
    )
    prefix = f"cdrtest-servers-{secrets.token_hex(6)}"
    if store == "redis":
        env.update(REDIS_URL=settings.TEST_REDIS_URL, REDIS_KEY_PREFIX=prefix)
    migrated = manage("migrate", "--no-input", "-v", "0", env=env)
    assert migrated.returncode == 0, migrated.stderr
    minted = manage("create_token", "pbx", "--scope", "read", env=env)
    assert minted.returncode == 0, minted.stderr
    good = {"Authorization": f"Bearer {minted.stdout.strip().splitlines()[-1]}"}
    bad = {"Authorization": BAD_TOKEN}

    try:
        with ExitStack() as stack:
            first = stack.enter_context(gunicorn(env, tmp_path))
            second = stack.enter_context(gunicorn(env, tmp_path))
            for base in (first, second, first, second):
                assert http_get(f"{base}/api/cdrs", good)[0] == 200
            status, headers, body = http_get(f"{second}/api/cdrs", good)
            assert status == 429, body
            assert orjson.loads(body)["errors"][0]["code"] == "THROTTLED"
            assert int(headers["Retry-After"]) >= 1

            for base in (first, second) * 3:
                assert http_get(f"{base}/api/cdrs", bad)[0] == 401
            for base in (first, second):
                status, headers, body = http_get(f"{base}/api/cdrs", bad)
                assert status == 429, body
                assert orjson.loads(body)["errors"][0]["code"] == "THROTTLED"
                assert int(headers["Retry-After"]) >= 1
    finally:
        if store == "redis":
            assert delete_redis_keys(settings.TEST_REDIS_URL, prefix) > 0


@pytest.mark.parametrize("rate", ["lots", "0/min", "10/0s", "5/week"])
def test_a_malformed_rate_stops_the_service_at_startup(tmp_path, rate):
    done = manage("check", env=production_env(tmp_path, CDR_TOKEN_RATE=rate))
    assert done.returncode != 0
    assert f"CDR_TOKEN_RATE: not a rate: {rate!r}" in done.stderr.strip().splitlines()[-1]
