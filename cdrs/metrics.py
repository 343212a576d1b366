"""Prometheus metrics: requests, latency and DB queries per endpoint, CDRs ingested; /metrics.

Series (all prefixed ``cdr_``):

- ``cdr_http_requests_total{endpoint,method,status}``
- ``cdr_http_request_duration_seconds{endpoint,method,status}`` (histogram)
- ``cdr_db_queries_total{endpoint}``: SQL statements run on the database (the primary and
  any read replicas)
- ``cdr_db_replica_failures_total{alias}``: reads a replica failed (unreachable, or an error
  of its own) and that ran again on the next replica or the primary (``cdrs/routers.py``)
- ``cdr_cdrs_ingested_total``: CDRs stored (API ingest and ``import_cdrs``), counted on commit
- ``cdr_portsip_events_total{event_type,outcome}``: PortSIP webhook events by type
  (``call_cdr``, ``call_start``..., ``other`` for a type PortSIP does not document, ``none``
  when missing) and outcome (``created``, ``duplicate``, ``ignored``, ``dead_lettered``,
  ``forbidden``)

``endpoint`` is the resolved URL name (``cdr-list``, ``cdr-detail``, ``admin:index``...),
``static`` for files WhiteNoise serves and ``unmatched`` for anything no route matched, so
ids in paths never become labels. For a streamed export, duration and queries cover the time
until the response starts.

gunicorn runs several worker processes, each with its own counters. With
``PROMETHEUS_MULTIPROC_DIR`` set (a directory for this service alone, created if missing)
every process writes its values to files there and /metrics adds them up, whichever worker
answers; without it /metrics shows only the answering worker's own numbers. A process that
exits (gunicorn recycles workers every GUNICORN_MAX_REQUESTS) folds its files into one
archive per metric type, so the directory and the scrape stay small; emptying the directory
while the service is stopped restarts the counters from zero. ``CDR_METRICS=false``
turns all of it off (/metrics is then 404). /metrics needs no token but answers only clients
in ``CDR_METRICS_ALLOW`` (comma-separated IPs or CIDR networks; default: loopback and
private ranges); everyone else gets 404. A request forwarded by a proxy is allowed only when
every address in its X-Forwarded-For / X-Real-IP / Forwarded headers is allowed too, so
public traffic relayed by a local proxy does not get in.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import ipaddress
import os
from collections.abc import Callable
from time import perf_counter
from typing import Any

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from cdrs.net import IPAddress, IPNetwork, parse_networks

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def fold_into_archive(directory: str, pid: int) -> None:
    """Merge process ``pid``'s counter and histogram files into ``<type>_archive.db``.

    Run at exit by every process in multiprocess mode. Without it each recycled gunicorn
    worker leaves its files behind and every scrape reads all of them (thousands within days
    at the default GUNICORN_MAX_REQUESTS). The new archive replaces the old one atomically
    and the process's own file goes right after, under an exclusive lock that every scrape
    takes shared (``_archive_lock``): no scrape sees both, so none counts a process twice.
    """
    with _archive_lock(directory, fcntl.LOCK_EX):  # processes exiting together take turns
        for kind in ("counter", "histogram"):
            own = os.path.join(directory, f"{kind}_{pid}.db")
            if not os.path.exists(own):
                continue
            archive = os.path.join(directory, f"{kind}_archive.db")
            totals: dict[str, list[float]] = {}
            for path in (archive, own):
                if os.path.exists(path):
                    for key, value, stamp, _ in MmapedDict.read_all_values_from_file(path):
                        total = totals.setdefault(key, [0.0, 0.0])
                        total[0] += value
                        total[1] = max(total[1], stamp)
            staging = os.path.join(directory, f"{kind}_archive.tmp")  # not *.db: never read
            with contextlib.suppress(FileNotFoundError):
                os.remove(staging)
            merged = MmapedDict(staging)
            try:
                for key, (value, stamp) in totals.items():
                    merged.write_value(key, value, stamp)
            finally:
                merged.close()
            os.replace(staging, archive)
            os.remove(own)


@contextlib.contextmanager
def _archive_lock(directory: str, mode: int) -> Any:
    with open(os.path.join(directory, "archive.lock"), "a") as lock:
        fcntl.flock(lock, mode)
        yield


def _fold_at_exit() -> None:
    with contextlib.suppress(OSError):
        fold_into_archive(MULTIPROC_DIR, os.getpid())


if MULTIPROC_DIR:
    # Values are memory-mapped files in there from the first metric on.
    os.makedirs(MULTIPROC_DIR, exist_ok=True)
    atexit.register(_fold_at_exit)  # os.getpid() at exit: right in forked workers too

DEFAULT_ALLOW = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "cdr_http_requests",
    "HTTP requests by endpoint (URL name), method and status.",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "cdr_http_request_duration_seconds",
    "Time to produce the response, by endpoint (URL name), method and status.",
    ["endpoint", "method", "status"],
    buckets=_BUCKETS,
)
DB_QUERIES = Counter(
    "cdr_db_queries",
    "SQL statements run on the database (primary and replicas) while handling requests.",
    ["endpoint"],
)
REPLICA_FAILURES = Counter(
    "cdr_db_replica_failures",
    "Reads a replica failed that ran again on the next replica or the primary, by alias.",
    ["alias"],
)
CDRS_INGESTED = Counter("cdr_cdrs_ingested", "CDRs stored (API ingest and import), on commit.")
PORTSIP_EVENTS = Counter(
    "cdr_portsip_events",
    "PortSIP webhook events received, by event type and outcome.",
    ["event_type", "outcome"],
)

# (endpoint, method, status) -> label children; saves the labels() lookup on the hot path.
_children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}


def _children_for(endpoint: str, method: str, status: int) -> tuple[Any, Any, Any]:
    key = (endpoint, method, status)
    found = _children.get(key)
    if found is None:
        code = str(status)
        found = (
            REQUESTS.labels(endpoint, method, code),
            LATENCY.labels(endpoint, method, code),
            DB_QUERIES.labels(endpoint),
        )
        _children[key] = found
    return found


def _endpoint(request: HttpRequest) -> str:
    match = request.resolver_match
    if match is not None:
        return match.view_name
    static_url = settings.STATIC_URL or "/static/"
    if request.path.startswith("/" + static_url.lstrip("/")):
        return "static"
    return "unmatched"


class _QueryCounter:
    """A ``connection.execute_wrapper`` that only counts."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, ctx: Any):
        self.count += 1
        return execute(sql, params, many, ctx)


_NOTHING = contextlib.nullcontext()


def _on_replicas(queries: _QueryCounter) -> contextlib.AbstractContextManager[Any]:
    """``queries`` counting on every read replica too (nothing to do without replicas)."""
    if not settings.CDR_REPLICA_ALIASES:
        return _NOTHING
    stack = contextlib.ExitStack()
    for alias in settings.CDR_REPLICA_ALIASES:
        stack.enter_context(connections[alias].execute_wrapper(queries))
    return stack


class MetricsMiddleware:
    """Counts requests, their latency and their SQL statements; unused when CDR_METRICS=false."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        if not getattr(settings, "CDR_METRICS", True):
            raise MiddlewareNotUsed
        allowed_networks()  # a malformed CDR_METRICS_ALLOW stops the worker at start
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        queries = _QueryCounter()
        started = perf_counter()
        with connections[DEFAULT_DB_ALIAS].execute_wrapper(queries), _on_replicas(queries):
            response = self.get_response(request)
        elapsed = perf_counter() - started
        method = request.method or ""
        if method not in _METHODS:
            method = "other"
        requests, latency, db_queries = _children_for(
            _endpoint(request), method, response.status_code
        )
        requests.inc()
        latency.observe(elapsed)
        if queries.count:
            db_queries.inc(queries.count)
        return response


def count_ingested(created: int) -> None:
    """Count ``created`` stored CDRs once the caller's transaction commits (now if none)."""
    if created > 0 and getattr(settings, "CDR_METRICS", True):
        transaction.on_commit(functools.partial(CDRS_INGESTED.inc, created))


def count_replica_failure(alias: str) -> None:
    """Count one read a replica failed (``cdrs/routers.py``); ``alias`` comes from settings."""
    if getattr(settings, "CDR_METRICS", True):
        REPLICA_FAILURES.labels(alias).inc()


def count_portsip_event(event_type: str, outcome: str) -> None:
    """Count one PortSIP webhook event; ``event_type`` must come from a fixed set (labels)."""
    if getattr(settings, "CDR_METRICS", True):
        PORTSIP_EVENTS.labels(event_type, outcome).inc()


# --- /metrics ---


@functools.lru_cache(maxsize=8)
def _parse_allow(raw: str) -> tuple[IPNetwork, ...]:
    return parse_networks(raw.split(","), setting="CDR_METRICS_ALLOW")


def allowed_networks() -> tuple[IPNetwork, ...]:
    """Networks whose clients may read /metrics (CDR_METRICS_ALLOW, or the default)."""
    return _parse_allow(os.environ.get("CDR_METRICS_ALLOW", "").strip() or DEFAULT_ALLOW)


def _address(text: str) -> IPAddress | None:
    """An address out of ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``"[::1]"``; else None."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _client_addresses(meta: dict[str, Any]) -> list[str]:
    """The peer and every address a proxy says the request came through or from."""
    found = [meta.get("REMOTE_ADDR", "")]
    if forwarded_for := meta.get("HTTP_X_FORWARDED_FOR"):
        found.extend(forwarded_for.split(","))
    if real_ip := meta.get("HTTP_X_REAL_IP"):
        found.append(real_ip)
    if forwarded := meta.get("HTTP_FORWARDED"):
        for element in forwarded.split(","):
            for pair in element.split(";"):
                key, _, value = pair.partition("=")
                if key.strip().lower() == "for":
                    found.append(value)
    return found


def client_allowed(request: HttpRequest) -> bool:
    networks = allowed_networks()
    for text in _client_addresses(request.META):
        address = _address(text)
        if address is None or not any(address in network for network in networks):
            return False
    return True


def _registry() -> CollectorRegistry:
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=MULTIPROC_DIR)
        return registry
    return REGISTRY


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition (text or OpenMetrics, as the scraper asks); 404 unless allowed."""
    if not getattr(settings, "CDR_METRICS", True) or not client_allowed(request):
        raise Http404("not found")
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    encoder, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    if MULTIPROC_DIR:
        # Shared: never between a folding worker's new archive and the removal of its file.
        with _archive_lock(MULTIPROC_DIR, fcntl.LOCK_SH):
            body = encoder(_registry())
    else:
        body = encoder(_registry())
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
