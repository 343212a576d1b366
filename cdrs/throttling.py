"""Rate limits whose counters every worker and every app server share.

Two limits, both answered with 429 THROTTLED and ``Retry-After``:

- ``TokenRateThrottle`` (DRF throttle, rate ``token``: CDR_TOKEN_RATE): requests per token.
  Only DRF views run it, so /healthz, /readyz and /metrics are never limited.
- ``AuthFailureThrottle`` (rate ``auth_failure``: CDR_AUTH_FAILURE_RATE): rejected tokens per
  client IP. ``cdrs.auth`` records each rejected token, and once an address is over the limit
  every token it presents is refused with 429, a valid one too (a guesser must not learn that
  a guess was right).

An accepted token costs one round trip to the store (``admit``): it counts the request
against the token's rate and reads the address's rejected-token counters together; the
throttle then compares the count it was given. Counters live in Redis when REDIS_URL is set
(one pipeline), in the ``cdrs_rate_counter`` table otherwise (one ``INSERT ... ON CONFLICT
... RETURNING``, exact across workers). Windows are fixed and aligned to the clock; the
failure limit also weighs the previous window by the part of it still within one window's
length, so a burst across a window boundary is not let through twice. If Redis cannot be
reached the API goes on unlimited (logged) rather than refusing PBX traffic.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from django.http import HttpRequest, HttpResponse
from redis.exceptions import RedisError
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from cdrs import net
from cdrservice.env import parse_rate

log = logging.getLogger("cdrs.throttling")

_STORE_ERROR_LOG_INTERVAL = 10.0  # seconds between two "store unavailable" lines per process
_last_store_error_logged = 0.0
# Where admit() leaves the token's count for TokenRateThrottle (an HttpRequest attribute).
_TOKEN_HITS = "cdr_token_hits"


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


def _count_and_read(
    hit_key: str | None, timeout: int, read_keys: Sequence[str], by: int = 1
) -> tuple[int, list[int]]:
    """Add ``by`` hits under ``hit_key`` (kept ``timeout`` seconds; none when None) and read
    the counters ``read_keys`` (0 when absent), in one round trip: (new count, counts)."""
    store = caches["default"]
    if isinstance(store, RedisCache):
        return _redis_count_and_read(store, hit_key, timeout, read_keys, by)
    return _table_count_and_read(hit_key, timeout, read_keys, by)


def _redis_count_and_read(
    store: RedisCache, hit_key: str | None, timeout: int, read_keys: Sequence[str], by: int
) -> tuple[int, list[int]]:
    # One pipeline, atomic (MULTI/EXEC): create the key with its expiry if it is new, INCR,
    # MGET. Django's own incr costs two round trips and a client object each (redis-py
    # builds ~170 response callbacks per client: 0.3 ms measured).
    full_keys = [store.make_and_validate_key(k) for k in read_keys]
    full_hit = store.make_and_validate_key(hit_key) if hit_key is not None else None
    any_key = full_hit if full_hit is not None else full_keys[0]
    client = store._cache.get_client(any_key, write=True)  # type: ignore[attr-defined]
    with client.pipeline() as pipe:
        if full_hit is not None:
            pipe.set(full_hit, 0, ex=timeout, nx=True)
            pipe.incrby(full_hit, by)
        if full_keys:
            pipe.mget(full_keys)
        results = pipe.execute()
    count = int(results[1]) if full_hit is not None else 0
    values = results[-1] if full_keys else []
    return count, [int(v) if v is not None else 0 for v in values]


_UPSERT = (
    "INSERT INTO cdrs_rate_counter (key, count, expires_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET count = cdrs_rate_counter.count + EXCLUDED.count "
    "RETURNING count"
)
_READ_ONE = "(SELECT count FROM cdrs_rate_counter WHERE key = %s)"


def _table_count_and_read(
    hit_key: str | None, timeout: int, read_keys: Sequence[str], by: int
) -> tuple[int, list[int]]:
    now = int(time.time())
    reads = ", ".join([_READ_ONE] * len(read_keys))
    with connection.cursor() as cursor:
        if hit_key is None:
            cursor.execute(f"SELECT {reads}", list(read_keys))
            return 0, [int(v or 0) for v in cursor.fetchone()]
        if connection.vendor == "postgresql" and read_keys:
            # One statement: the reads see the table as it was before this INSERT, which
            # is right, as they read other keys.
            cursor.execute(
                f"WITH hit AS ({_UPSERT}) SELECT (SELECT count FROM hit), {reads}",
                [hit_key, by, now + timeout, *read_keys],
            )
            row = cursor.fetchone()
            count, values = int(row[0]), [int(v or 0) for v in row[1:]]
        else:  # SQLite has no INSERT in a WITH; its statements cost no round trip
            cursor.execute(_UPSERT, [hit_key, by, now + timeout])
            count = int(cursor.fetchone()[0])
            values = []
            if read_keys:
                cursor.execute(f"SELECT {reads}", list(read_keys))
                values = [int(v or 0) for v in cursor.fetchone()]
        if count == by:  # a new window began for this key: forget the ended ones
            cursor.execute("DELETE FROM cdrs_rate_counter WHERE expires_at < %s", [now])
    return count, values


class _WindowThrottle(SimpleRateThrottle):
    """A counter per client and fixed window in the shared store (not DRF's request history:
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


class TokenRateThrottle(_WindowThrottle):
    """At most CDR_TOKEN_RATE requests per token and window (fixed windows)."""

    scope = "token"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        token = request.auth
        return getattr(token, "prefix", None)

    def current_key(self, prefix: str) -> tuple[str, int, float]:
        """(counter key, seconds to keep it, seconds since the window started)."""
        assert self.duration
        index, elapsed = self._window()
        return self._key(prefix, index), self.duration + 1, elapsed

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:
            return True
        prefix = self.get_cache_key(request, view)
        if prefix is None:  # public views (schema, docs)
            return True
        assert self.num_requests
        key, timeout, elapsed = self.current_key(prefix)
        count = getattr(request._request, _TOKEN_HITS, None)  # counted by admit()
        if count is None:
            try:
                count, _ = _count_and_read(key, timeout, ())
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

    def keys(self, request: Any) -> tuple[list[str], float]:
        """The address's counters (previous window, this one), seconds into this window."""
        index, elapsed = self._window()
        ip = client_ip(request)
        return [self._key(ip, index - 1), self._key(ip, index)], elapsed

    def blocked_for_counts(self, previous: int, current: int, elapsed: float) -> int | None:
        """Seconds until an address with these counts may try again, or None when it may."""
        assert self.num_requests and self.duration
        limit, duration = self.num_requests, self.duration
        if previous * (1 - elapsed / duration) + current < limit:
            return None
        if current < limit:  # until the previous window weighs little enough
            seconds = duration * (1 - (limit - current) / previous) - elapsed
        else:  # until this window ends, then until it weighs little enough in the next
            seconds = duration - elapsed + duration * (1 - limit / current)
        return max(1, math.ceil(seconds))

    def blocked_for(self, request: Any) -> int | None:
        """Seconds until ``request``'s address may try again, or None when it may now."""
        if self.rate is None:
            return None
        keys, elapsed = self.keys(request)
        try:
            _, (previous, current) = _count_and_read(None, 0, keys)
        except RedisError as exc:
            _store_unavailable(exc)
            return None
        wait = self.blocked_for_counts(previous, current, elapsed)
        # What admit() would read next for this address: remembered like its own reads.
        _mark_address(client_ip(request), clean=wait is None)
        return wait

    def record(self, request: Any) -> None:
        if self.rate is None:
            return
        assert self.duration
        keys, _ = self.keys(request)
        _mark_address(client_ip(request), clean=False)  # read its counters next time
        try:
            # Kept two windows: the next one still weighs this one.
            _count_and_read(keys[1], 2 * self.duration + 1, ())
        except RedisError as exc:
            _store_unavailable(exc)


# --- the accepted-token path: few round trips under heavy use of one token ------------------
#
# One integrator's token can carry a thousand requests a second, and every one of them used to
# update the same counter row (in the table: row lock waits and a new row version each).
# Instead a process takes a *block* of counts at once (``count += n``) and hands them out to
# its own requests: a request's number is still exact (the store's counts are the sum of the
# blocks taken), so no more than the limit is ever let through; what a process has taken but
# not used counts against the others until the window ends, so a busy token can be refused
# up to RESERVE_SHARE of its limit per process early. Small limits (under RESERVE_SHARE's
# inverse) take blocks of one: every request counted in the store, as before.
RESERVE_SHARE = 1 / 200
# An address whose rejected tokens were read as under the limit is not read again for this
# long, unless this process records a rejection from it first (``record``).
CLEAN_ADDRESS_SECONDS = 1.0
_RESERVED_MAX = 4096  # entries kept per process before both maps are emptied

_reserved: dict[str, tuple[int, int]] = {}  # counter key -> (last handed out, last taken)
_clean_until: dict[str, float] = {}  # address -> monotonic time its counters were fine until
_local_lock = threading.Lock()


def _take_reserved(key: str) -> int | None:
    """The next count of this process's block for ``key``, or None when it has none left."""
    with _local_lock:
        handed, taken = _reserved.get(key, (0, 0))
        if handed >= taken:
            return None
        _reserved[key] = (handed + 1, taken)
        return handed + 1


def _keep_reserved(key: str, first: int, last: int) -> None:
    """Counts ``first``..``last`` were taken for ``key``; ``first`` is being handed out now."""
    with _local_lock:
        if len(_reserved) > _RESERVED_MAX:
            _reserved.clear()
        _reserved[key] = (first, last)


def _address_clean(ip: str) -> bool:
    return _clean_until.get(ip, 0.0) > time.monotonic()


def _mark_address(ip: str, clean: bool) -> None:
    with _local_lock:
        if not clean:
            _clean_until.pop(ip, None)
            return
        if len(_clean_until) > _RESERVED_MAX:
            _clean_until.clear()
        _clean_until[ip] = time.monotonic() + CLEAN_ADDRESS_SECONDS


def admit(request: Request, prefix: str) -> None:
    """For an accepted token: count the request against the token's rate and check the
    address's rejected tokens, in at most one round trip (none while this process holds
    counts for the token and knows the address to be fine); Throttled if the address is
    over its limit.

    The token's count is left on the request for TokenRateThrottle, which DRF runs after the
    permission checks: a request refused there has been counted too.
    """
    tokens, failures = TokenRateThrottle(), AuthFailureThrottle()
    hit_key, timeout, block = None, 0, 0
    count: int | None = None
    if tokens.rate is not None:
        assert tokens.num_requests
        hit_key, timeout, _ = tokens.current_key(prefix)
        count = _take_reserved(hit_key)
        if count is None:
            block = max(1, int(tokens.num_requests * RESERVE_SHARE))
    read_keys: list[str] = []
    elapsed = 0.0
    ip = client_ip(request)
    if failures.rate is not None and not _address_clean(ip):
        read_keys, elapsed = failures.keys(request)
    if block or read_keys:
        try:
            total, counts = _count_and_read(hit_key if block else None, timeout, read_keys, block)
        except RedisError as exc:
            _store_unavailable(exc)
            return
        if block:
            assert hit_key is not None
            count = total - block + 1
            _keep_reserved(hit_key, count, total)
        if read_keys:
            wait = failures.blocked_for_counts(counts[0], counts[1], elapsed)
            _mark_address(ip, clean=wait is None)
            if wait:
                raise Throttled(wait, "too many rejected tokens from this address.")
    if count is not None:
        setattr(request._request, _TOKEN_HITS, count)


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
