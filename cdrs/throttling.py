"""Rate limits whose counters every worker and every app server share.

Two limits, both answered with 429 THROTTLED and ``Retry-After``:

- ``TokenRateThrottle`` (DRF throttle, rate ``token``: CDR_TOKEN_RATE): requests per token.
  Only DRF views run it, so /healthz, /readyz and /metrics are never limited.
- ``AuthFailureThrottle`` (rate ``auth_failure``: CDR_AUTH_FAILURE_RATE): rejected tokens per
  client IP. Authentication fails before DRF's throttles run, so ``cdrs.auth`` calls it: it
  records each rejected token, and once an address is over the limit every token it presents
  is refused with 429 before any lookup (a guesser must not learn that a guess was right).

Counters live in Django's default cache: Redis when REDIS_URL is set (INCR: exact across
workers), the database cache table otherwise (a get and a set: two workers counting the same
key at the same instant may lose a hit). Windows are fixed and aligned to the clock; the
failure limit also weighs the previous window by the part of it still within one window's
length, so a burst across a window boundary is not let through twice. If Redis cannot be
reached the API goes on unlimited (logged) rather than refusing PBX traffic.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.http import HttpRequest, HttpResponse
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from cdrs import net
from cdrservice.env import parse_rate

log = logging.getLogger("cdrs.throttling")

_STORE_ERROR_LOG_INTERVAL = 10.0  # seconds between two "store unavailable" lines per process
_last_store_error_logged = 0.0


def client_ip(request: Any) -> str:
    """The address failed logins and authentications are counted per: the peer, or behind a
    trusted proxy the client it names (``cdrs.net.client_ip``)."""
    return net.client_ip(request) or "unknown"


def _store_unavailable(exc: Exception) -> None:
    global _last_store_error_logged
    now = time.monotonic()
    if now - _last_store_error_logged >= _STORE_ERROR_LOG_INTERVAL:
        _last_store_error_logged = now
        log.error("rate limit store unavailable, not limiting: %s", type(exc).__name__)


class _WindowThrottle(SimpleRateThrottle):
    """A counter per client and fixed window in the shared cache (not DRF's request history:
    a list of every request's time would be read and rewritten on each of thousands a minute)."""

    # Set by SimpleRateThrottle.__init__ from parse_rate (not declared by the stubs).
    num_requests: int | None
    duration: int | None

    def get_rate(self) -> str | None:
        # Read at each request (DRF binds THROTTLE_RATES once, at import).
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope or "")
        return str(rate) if rate else None

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        return parse_rate(rate) if rate else (None, None)

    def _window(self) -> tuple[int, float]:
        """(index of the current window, seconds since it started)."""
        assert self.duration
        now = time.time()
        return int(now // self.duration), now % self.duration

    def _key(self, ident: str, index: int) -> str:
        return f"throttle:{self.scope}:{ident}:{index}"

    def _wait_until_window_ends(self, elapsed: float) -> int:
        assert self.duration
        return max(1, math.ceil(self.duration - elapsed))

    def _hit(self, key: str, timeout: int) -> int:
        """Count one hit under ``key`` (kept ``timeout`` seconds); the new count."""
        store = caches["default"]
        if isinstance(store, RedisCache):
            # One round trip, atomic (MULTI/EXEC): create the key with its expiry if it is
            # new, then INCR. Django's own incr costs two round trips and a client object
            # each (redis-py builds ~170 response callbacks per client: 0.3 ms measured).
            full_key = store.make_and_validate_key(key)
            client = store._cache.get_client(full_key, write=True)  # type: ignore[attr-defined]
            with client.pipeline() as pipe:
                pipe.set(full_key, 0, ex=timeout, nx=True)
                pipe.incr(full_key)
                return int(pipe.execute()[1])
        # Django's incr on other caches is a get and a set that resets the expiry.
        count = int(store.get(key, 0)) + 1
        store.set(key, count, timeout=timeout)
        return count


class TokenRateThrottle(_WindowThrottle):
    """At most CDR_TOKEN_RATE requests per token and window (fixed windows)."""

    scope = "token"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        token = request.auth
        return getattr(token, "prefix", None)

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:
            return True
        prefix = self.get_cache_key(request, view)
        if prefix is None:  # public views (schema, docs)
            return True
        assert self.num_requests and self.duration
        index, elapsed = self._window()
        try:
            count = self._hit(self._key(prefix, index), self.duration + 1)
        except RedisError as exc:
            _store_unavailable(exc)
            return True
        self._wait_seconds = self._wait_until_window_ends(elapsed)
        return count <= self.num_requests

    def wait(self) -> int:
        return self._wait_seconds


class AuthFailureThrottle(_WindowThrottle):
    """At most CDR_AUTH_FAILURE_RATE rejected tokens per client IP (used by cdrs.auth)."""

    scope = "auth_failure"

    def blocked_for(self, request: Any) -> int | None:
        """Seconds until ``request``'s address may try again, or None when it may now."""
        if self.rate is None:
            return None
        assert self.num_requests and self.duration
        ip = client_ip(request)
        index, elapsed = self._window()
        try:
            counts = caches["default"].get_many([self._key(ip, index - 1), self._key(ip, index)])
        except RedisError as exc:
            _store_unavailable(exc)
            return None
        previous = int(counts.get(self._key(ip, index - 1), 0))
        current = int(counts.get(self._key(ip, index), 0))
        limit, duration = self.num_requests, self.duration
        if previous * (1 - elapsed / duration) + current < limit:
            return None
        if current < limit:  # until the previous window weighs little enough
            seconds = duration * (1 - (limit - current) / previous) - elapsed
        else:  # until this window ends, then until it weighs little enough in the next
            seconds = duration - elapsed + duration * (1 - limit / current)
        return max(1, math.ceil(seconds))

    def record(self, request: Any) -> None:
        if self.rate is None:
            return
        assert self.duration
        index, _ = self._window()
        try:
            # Kept two windows: the next one still weighs this one.
            self._hit(self._key(client_ip(request), index), 2 * self.duration + 1)
        except RedisError as exc:
            _store_unavailable(exc)


_LOCKED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Too many login attempts</title></head>
<body><h1>Too many login attempts</h1>
<p>Logging in as this user from your address is locked for {minutes} minutes after
{failures} wrong passwords. Try again later.</p></body></html>
"""


def admin_lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """django-axes' answer to a locked-out admin login: 429 with Retry-After."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    minutes = max(1, round(seconds / 60))
    page = _LOCKED_PAGE.format(minutes=minutes, failures=settings.AXES_FAILURE_LIMIT)
    response = HttpResponse(page, status=429)
    response["Retry-After"] = str(seconds)
    return response
