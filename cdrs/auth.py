"""Bearer token authentication: ``Authorization: Bearer cdr_<prefix>_<secret>``.

Not DRF's authtoken: that stores keys in plain text. We store an HMAC of the token and
look it up by its public prefix, comparing digests in constant time.
"""

from __future__ import annotations

import base64
import binascii
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

from cdrs import throttling
from cdrs.models import ApiToken
from cdrs.throttling import AuthFailureThrottle
from cdrs.tokens import previous_token_digests, split_token, token_digest, token_is_live

# Per-process cache: digest -> (token, cached_at). Saves one query per request on the hot
# path; bounded by CDR_TOKEN_CACHE_SECONDS, after which a revoked token, or one whose user
# was deactivated, stops working.
_cache: dict[str, tuple[ApiToken, float]] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 1024


def clear_token_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _cached(digest: str) -> ApiToken | None:
    """The token with this digest if this process looked it up within the cache's lifetime."""
    ttl = settings.CDR_TOKEN_CACHE_SECONDS
    if ttl > 0:
        hit = _cache.get(digest)
        if hit is not None and time.monotonic() - hit[1] < ttl:
            return hit[0]
    return None


def _lookup(plain: str, digest: str) -> ApiToken | None:
    prefix = split_token(plain)
    if prefix is None:
        return None
    ttl = settings.CDR_TOKEN_CACHE_SECONDS
    token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
    if token is None:
        return None
    if not hmac.compare_digest(token.digest, digest):
        if not any(hmac.compare_digest(token.digest, d) for d in previous_token_digests(plain)):
            return None
        # Stored under a pepper being rotated out: move it to the current one, once.
        ApiToken.objects.filter(pk=token.pk, digest=token.digest).update(digest=digest)
        token.digest = digest
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


class _HttpScheme(OpenApiAuthenticationExtension):
    """An HTTP authentication scheme in the OpenAPI schema (``scheme``, ``description``).

    Matches nothing itself (no ``target_class``); each subclass names its authentication.
    """

    scheme = ""
    description = ""

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": self.scheme, "description": self.description}


class BearerTokenScheme(_HttpScheme):
    """Describes the Bearer token in the OpenAPI schema."""

    target_class = "cdrs.auth.BearerTokenAuthentication"
    name = "bearerAuth"
    scheme = "bearer"
    description = "Authorization: Bearer cdr_<prefix>_<secret> (manage.py create_token)"


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
        return _authenticate_token(request, plain)

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


def _authenticate_token(request: Request, plain: str) -> tuple[Any, ApiToken]:
    """(user, token) for a live token, else 401; the same checks whatever carried it."""
    failures = AuthFailureThrottle()
    digest = token_digest(plain)
    token = _cached(digest)
    if token is None:
        # Before a database lookup, so a guesser over the limit costs no query (and cannot
        # tell a right guess either: throttling.admit refuses it below).
        if wait := failures.blocked_for(request):
            raise exceptions.Throttled(wait, "too many rejected tokens from this address.")
        token = _lookup(plain, digest)
    if token is None:
        failures.record(request)
        raise exceptions.AuthenticationFailed("invalid token")
    if not token_is_live(token, timezone.now()):
        failures.record(request)
        raise exceptions.AuthenticationFailed("token is disabled or expired")
    if not token.user.is_active:
        # A deactivated user's tokens stop like revoked ones: the cached token carries
        # the user as loaded, so this holds within CDR_TOKEN_CACHE_SECONDS.
        failures.record(request)
        raise exceptions.AuthenticationFailed("token is disabled: its user is inactive")
    _touch(token)
    request.META["cdr.token_prefix"] = token.prefix  # for the request log
    # One round trip: this request against the token's rate, the address's rejected tokens.
    throttling.admit(request, token.prefix)
    return token.user, token


class BasicTokenScheme(_HttpScheme):
    """Describes HTTP Basic with the token as the password in the OpenAPI schema."""

    target_class = "cdrs.auth.BasicTokenAuthentication"
    name = "basicAuth"
    scheme = "basic"
    description = (
        "HTTP Basic: any user name, an API token as the password "
        "(for PBXs that can only send Basic; the PortSIP webhook only)"
    )


class BasicTokenAuthentication(BaseAuthentication):
    """``Authorization: Basic base64(<anything>:<token>)``: the password is an API token.

    For senders that offer Basic but not Bearer (a PortSIP PBX's webhook settings offer
    both). Only the webhook view lists it, before BearerTokenAuthentication: it passes
    (returns None) on any other scheme, so Bearer still answers a missing or malformed
    header. Not used on the rest of the API, whose contract is Bearer only: a Basic
    challenge there would make browsers prompt for a password, and Basic credentials are
    easily pasted into URLs (``https://x:token@host/``) that end up in logs.
    """

    keyword = "Basic"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise exceptions.AuthenticationFailed(
                "malformed Authorization header: expected 'Basic base64(user:token)'"
            ) from exc
        _user, sep, plain = decoded.partition(":")  # the user name is ignored
        if not sep or not plain:
            raise exceptions.AuthenticationFailed(
                "Basic authentication: the password must be an API token"
            )
        return _authenticate_token(request, plain)

    def authenticate_header(self, request: Request) -> str:
        return 'Basic realm="api", charset="UTF-8"'
