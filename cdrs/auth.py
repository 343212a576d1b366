"""Bearer token authentication: ``Authorization: Bearer cdr_<prefix>_<secret>``.

Not DRF's authtoken: that stores keys in plain text. We store an HMAC of the token and
look it up by its public prefix, comparing digests in constant time.
"""

from __future__ import annotations

import hmac
import threading
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from cdrs.models import ApiToken
from cdrs.throttling import AuthFailureThrottle
from cdrs.tokens import split_token, token_digest, token_is_live

# Per-process cache: digest -> (token, cached_at). Saves one query per request on the hot
# path; bounded by CDR_TOKEN_CACHE_SECONDS, after which a revoked token stops working.
_cache: dict[str, tuple[ApiToken, float]] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 1024


def clear_token_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _lookup(plain: str) -> ApiToken | None:
    prefix = split_token(plain)
    if prefix is None:
        return None
    digest = token_digest(plain)
    ttl = settings.CDR_TOKEN_CACHE_SECONDS
    if ttl > 0:
        hit = _cache.get(digest)
        if hit is not None and time.monotonic() - hit[1] < ttl:
            return hit[0]
    token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
    if token is None or not hmac.compare_digest(token.digest, digest):
        return None
    if ttl > 0:
        with _cache_lock:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[digest] = (token, time.monotonic())
    return token


def _touch(token: ApiToken) -> None:
    """Record use at most once per interval, without a read and without racing writers."""
    now = timezone.now()
    interval = timedelta(seconds=settings.CDR_TOKEN_LAST_USED_INTERVAL)
    if token.last_used_at is not None and now - token.last_used_at < interval:
        return
    token.last_used_at = now
    ApiToken.objects.filter(pk=token.pk).exclude(last_used_at__gte=now - interval).update(
        last_used_at=now
    )


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Describes the Bearer token in the OpenAPI schema."""

    target_class = "cdrs.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer cdr_<prefix>_<secret> (manage.py create_token)",
        }


class BearerTokenAuthentication(BaseAuthentication):
    """Authenticates ``Authorization: Bearer <token>``; request.auth is the ApiToken."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken]:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            raise exceptions.NotAuthenticated("authentication required: send a Bearer token")
        scheme, _, plain = header.partition(" ")
        plain = plain.strip()
        if scheme.lower() != "bearer" or not plain or " " in plain:
            raise exceptions.AuthenticationFailed(
                "malformed Authorization header: expected 'Bearer <token>'"
            )
        failures = AuthFailureThrottle()
        if wait := failures.blocked_for(request):
            raise exceptions.Throttled(wait, "too many rejected tokens from this address.")
        token = _lookup(plain)
        if token is None:
            failures.record(request)
            raise exceptions.AuthenticationFailed("invalid token")
        if not token_is_live(token, timezone.now()):
            failures.record(request)
            raise exceptions.AuthenticationFailed("token is disabled or expired")
        _touch(token)
        request.META["cdr.token_prefix"] = token.prefix  # for the request log
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
