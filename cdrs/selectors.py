"""Every read of CDRs: scoping to the token, filtering, ordering, paging, counting.

The only module that builds CDR querysets for the API and the export.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict, cast

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import F, Func, IntegerField, OrderBy, Q, QuerySet
from django.db.models.expressions import RawSQL

from cdrs import citus, routers, timeouts
from cdrs.expressions import Rfc3339
from cdrs.fields import TIMESTAMP_FIELD_NAMES, visible_field_names
from cdrs.ids import snowflake_time
from cdrs.models import ApiToken, Cdr, CdrCounter
from cdrs.partitions import REGISTRY, has_registry, month_of, month_start
from cdrs.query import compiled
from cdrs.query.cursor import encode_cursor, keyset_q
from cdrs.query.options import ListOptions, and_leaves
from cdrs.query.orderby import OrderTerm
from cdrs.rollup import TOTALS_TABLE


class CdrRow(TypedDict, total=False):
    """A CDR as the selectors return it: the fields the token may see, in spine order
    (``cdrs/fields.py``), timestamps as RFC 3339 text; the id still an integer."""

    id: int
    caller: str
    caller_domain: str
    caller_display_name: str
    callee: str
    callee_domain: str
    callee_display_name: str
    started_at: str
    rang_at: str | None
    answered_at: str | None
    ended_at: str
    call_id: str
    direction: str
    end_reason: str
    reroute_reason: str
    status_code: int
    destination: str
    outbound_caller_id: str
    did_cid: str
    trunk: str
    duration: int
    cost: Decimal | None  # billing scope only
    billed_account: str  # billing scope only
    service_number: str
    user_data: str


@dataclass(frozen=True)
class CdrPage:
    rows: list[CdrRow]
    count: int
    next_cursor: str | None


def _columns(names: tuple[str, ...]) -> list[Any]:
    """What to select for ``names``: timestamps come out of the database as RFC 3339 text."""
    return [Rfc3339(n) if n in TIMESTAMP_FIELD_NAMES else n for n in names]


def _as_dicts(names: tuple[str, ...], rows: Any) -> Iterator[CdrRow]:
    return (cast(CdrRow, dict(zip(names, row, strict=True))) for row in rows)


def _domains_q(domains: Sequence[str]) -> Q:
    if not domains:
        return Q()
    return Q(caller_domain__lower__in=list(domains)) | Q(callee_domain__lower__in=list(domains))


def domain_q(*, token: ApiToken) -> Q:
    """CDRs a domain-limited token may see (caller or callee domain in its set)."""
    return _domains_q(token.domains or ())


def cdrs_for_token(*, token: ApiToken) -> QuerySet[Cdr]:
    """Every CDR the token may see."""
    return Cdr.objects.filter(domain_q(token=token))


def _through_registry() -> bool:
    """Whether a write's check of stored CDRs by id goes through the id registry
    (partitioned PostgreSQL): it gives each id's started_at, so a CDR is probed in its one
    partition; ``id IN (...)`` alone plans and probes every partition."""
    return has_registry() and not citus.in_use()


def _registry_rows(
    ids: set[int], columns: str, where: str = "true", params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """``columns`` of the stored CDRs (``c``) of ``ids``, found through the id registry, on
    the primary; ``where`` (with ``params``) narrows them.

    One id (a webhook event) is matched with ``= %s``: PostgreSQL then plans the prepared
    statement once, generically. With ``= ANY(%s)`` it re-planned it for every call (a
    custom plan looks cheaper for an array of unknown length), 0.5-0.6 ms over 6 partitions,
    20 times the execution, and more with every month.
    """
    match, id_param = ("= %s", next(iter(ids))) if len(ids) == 1 else ("= ANY(%s)", sorted(ids))
    with connections[DEFAULT_DB_ALIAS].cursor() as cur:
        cur.execute(
            f"SELECT {columns} FROM {REGISTRY} r JOIN cdrs_cdr c "
            f"ON c.id = r.id AND c.started_at = r.started_at WHERE r.id {match} AND {where}",
            [id_param, *params],
        )
        return cur.fetchall()


def visible_cdr_ids(*, token: ApiToken, ids: set[int]) -> set[int]:
    """Which of ``ids`` are CDRs the token may see (a write's check, on the primary).

    Partitioned PostgreSQL: through the id registry (``_registry_rows``); the ORM's
    ``id IN (...)`` planned and probed every partition and was compiled each time (~0.4 ms
    of a tenant's webhook event).
    """
    if not ids:
        return set()
    if not _through_registry():
        return set(cdrs_for_token(token=token).filter(pk__in=ids).values_list("pk", flat=True))
    domains = sorted(token.domains or ())
    if not domains:
        return {pk for (pk,) in _registry_rows(ids, "c.id")}
    # As _domains_q: the lower-cased domain in the token's set.
    seen = "(lower(c.caller_domain) = ANY(%s) OR lower(c.callee_domain) = ANY(%s))"
    return {pk for (pk,) in _registry_rows(ids, "c.id", seen, [domains, domains])}


def stored_domains(ids: set[int]) -> dict[int, tuple[str, str]]:
    """The (caller_domain, callee_domain) of each stored CDR of ``ids``, lower-cased as the
    ingest lower-cases a new row's (a write's check, on the primary)."""
    if not ids:
        return {}
    if _through_registry():
        stored = _registry_rows(ids, "c.id, c.caller_domain, c.callee_domain")
    else:
        stored = list(
            Cdr.objects.filter(pk__in=ids).values_list("pk", "caller_domain", "callee_domain")
        )
    return {pk: (a.lower(), b.lower()) for pk, a, b in stored}


def _order_by(order: tuple[OrderTerm, ...]) -> list[OrderBy]:
    # NULLs last in both directions, on every database, so keyset cursors can rely on it.
    terms = []
    for t in order:
        nulls = {"nulls_last": True} if t.nullable else {}
        terms.append(F(t.field).desc(**nulls) if t.desc else F(t.field).asc(**nulls))
    return terms


def _filtered(token: ApiToken, options: ListOptions) -> QuerySet[Cdr]:
    return cdrs_for_token(token=token).filter(options.where)


def _unfiltered(token: ApiToken, options: ListOptions) -> bool:
    return not token.domains and not options.where


def cdr_total() -> int:
    """Number of stored CDRs from the counter slots (no COUNT(*) over the table)."""
    # Plain SQL: this runs on every unfiltered list request; the ORM's aggregate() costs
    # more to compile than the query costs to run.
    with connections[routers.read_alias()].cursor() as cur:
        cur.execute(f"SELECT COALESCE(SUM(rows), 0) FROM {CdrCounter._meta.db_table}")
        return int(cur.fetchone()[0])


_SNOWFLAKE_SLACK = timedelta(milliseconds=2)
LIST_FIELDS = visible_field_names(billing=False)
# Fields an index returns in order (each leads one): a page ordered by one of them is read
# off the index and the scan stops. Any other order sorts every matching row.
_INDEX_ORDERED = frozenset(
    {"id", *(i.fields[0].lstrip("-") for i in Cdr._meta.indexes if i.fields)}
)


def _ids_first(options: ListOptions) -> bool:
    """Whether a page is fetched by id first (see ``_page_queryset``)."""
    return options.skip > 0 or not options.order or options.order[0].field not in _INDEX_ORDERED


def _page_queryset(
    domains: Sequence[str], where: Q, options: ListOptions, after: list[Any] | None
) -> QuerySet[Cdr, Any]:
    qs = Cdr.objects.filter(_domains_q(domains)).filter(where)
    if after is not None:
        qs = qs.filter(keyset_q(options.order, after))
    order = _order_by(options.order)
    window = slice(options.skip, options.skip + options.top + 1)
    if _ids_first(options):
        # Deferred join: find the page's ids first, then read only those rows, so rows
        # skipped or sorted past are never read whole nor formatted (to_char three times
        # each): 1M rows, skip=100000: 415 -> 30 ms; orderby=duration desc: 2.8 -> 0.8 s.
        # The order is total (it ends with id): the page is the one a plain OFFSET gives.
        page_ids = qs.order_by(*order).values("pk")[window]
        return (
            Cdr.objects.filter(pk__in=page_ids).order_by(*order).values_list(*_columns(LIST_FIELDS))
        )
    return qs.order_by(*order).values_list(*_columns(LIST_FIELDS))[window]


def cdr_page_queryset(*, token: ApiToken, options: ListOptions) -> QuerySet[Cdr, Any]:
    """The query behind one list page (rows of LIST_FIELDS); one row more than ``top``."""
    return _page_queryset(token.domains or (), options.where, options, options.after)


def _page_rows(token: ApiToken, options: ListOptions) -> list[Any]:
    """The rows of ``cdr_page_queryset`` (on partitioned PostgreSQL, recent months first:
    see ``_probe_bound``)."""
    kind = ("page", LIST_FIELDS, tuple(map(str, options.order)), options.top, options.skip)

    # A page without a condition is planned alike for any values: its SQL keeps its LIMIT
    # and PostgreSQL plans it once per connection (see compiled._limit_as_parameter).
    filtered = not _unfiltered(token, options)

    def rows(where: Q) -> list[Any]:
        return compiled.fetch_shaped(
            kind,
            lambda domains, where, after: _page_queryset(domains, where, options, after),
            domains=token.domains or (),
            where=where,
            after=options.after,
            limit_as_parameter=filtered,
        )

    bound = _probe_bound(options)
    if bound is None:
        return rows(options.where)
    # Newest first: every row at or after the bound sorts before every row before it, so
    # when the recent months fill the page it is the whole answer; otherwise the page is
    # read as it would be without the probe. (Not "the rest, before the bound": PostgreSQL
    # may run that one on a plan made once for any caller, and for it that plan sorts all
    # of a caller's calls; the whole table's walks the caller's index in order.) The bound
    # is written into the SQL (it changes once a month), so PostgreSQL prunes by it before
    # planning.
    literal = RawSQL(f"'{bound.isoformat()}'::timestamptz", [])
    found = rows(options.where & Q(started_at__gte=literal))
    return found if len(found) > options.top else rows(options.where)


# A list page newest first, on partitioned PostgreSQL, first reads the months from the one
# before the newest stored CDR's (or the cursor's) onwards. Why: PostgreSQL plans a
# filtered page's statement anew for every request (its LIMIT is a parameter: a plan made
# once for any caller would walk the whole time index for a rare one), and planning costs
# about 0.1 ms for each partition the statement may touch: 4.4 ms for a caller's page over
# 43 months, against 0.3 ms on a plain table. A bound on started_at leaves the other months
# out before they are planned. (A page without a condition is planned once, but its run
# still locks and starts a scan of every partition it may touch: 0.1 ms more over 43.) A
# page the recent months do not fill (a rare caller) costs that statement more.
_NEWEST_TTL = 60.0  # seconds a process keeps the newest stored hour (a lower bound ages safely)
_newest_hour: dict[tuple[str, str], tuple[float, int | None]] = {}


def _newest_stored_hour(alias: str) -> int | None:
    """The newest UTC hour (epoch hours) holding a CDR that is not over a day ahead, from
    the hourly rollups (one index probe), cached per process for ``_NEWEST_TTL``.

    A cached hour only ever makes the probe's window wider or emptier than it could be:
    the bound stays a lower bound, so pages are the same either way."""
    conn = connections[alias]
    key = (alias, str(conn.settings_dict["NAME"]))
    now = time.monotonic()
    cached = _newest_hour.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    ahead = int(datetime.now(UTC).timestamp() // 3600) + 24
    with conn.cursor() as cur:
        cur.execute(f"SELECT max(hour) FROM {TOTALS_TABLE} WHERE hour <= %s", [ahead])
        hour = cur.fetchone()[0]
    _newest_hour[key] = (now + _NEWEST_TTL, hour)
    return None if hour is None else int(hour)


def forget_newest_stored_hour() -> None:
    """Drop the cached newest hour (tests that replace every CDR between requests)."""
    _newest_hour.clear()


def reads_recent_months_first() -> bool:
    """Whether a list page newest first reads the recent months first (see above): on
    partitioned PostgreSQL, Citus aside."""
    return _through_registry()


def _probe_bound(options: ListOptions) -> datetime | None:
    """Where a page's first read starts (see above), or None to read it in one go: not
    partitioned, not newest first, an offset, or a condition on started_at that the
    planner already prunes by (one reached through ANDs)."""
    if not reads_recent_months_first() or _ids_first(options):  # an offset: ids first
        return None
    first = options.order[0]
    if first.field != "started_at" or not first.desc:
        return None
    if any(key.partition("__")[0] == "started_at" for key, _ in and_leaves(options.where)[0]):
        return None
    hour = _newest_stored_hour(routers.read_alias())
    if hour is None:
        return None
    anchor = datetime.fromtimestamp(hour * 3600, UTC)
    if options.after is not None and options.after[0] is not None:
        anchor = min(anchor, options.after[0])
    # The first of the month before the anchor's.
    return month_start(month_of(month_start(month_of(anchor)) - timedelta(days=1)))


class _CountAll(Func):
    """COUNT(*) as a plain select column: the filtered count, compiled like any values_list."""

    template = "COUNT(*)"
    output_field = IntegerField()


def _filtered_count(token: ApiToken, options: ListOptions) -> int:
    """``_filtered(token, options).count()``."""

    def make(domains: Sequence[str], where: Q, _after: Any) -> QuerySet[Cdr, Any]:
        return Cdr.objects.filter(_domains_q(domains)).filter(where).values_list(_CountAll())

    rows = compiled.fetch_shaped(("count",), make, domains=token.domains or (), where=options.where)
    return int(rows[0][0]) if rows else 0


def cdr_list(*, token: ApiToken, options: ListOptions) -> CdrPage:
    """One page of CDRs for GET /api/cdrs, with the count and the next cursor."""
    count = -1
    if options.count:
        count = cdr_total() if _unfiltered(token, options) else _filtered_count(token, options)
    rows = list(_as_dicts(LIST_FIELDS, _page_rows(token, options)))
    next_cursor = None
    if len(rows) > options.top:
        rows = rows[: options.top]
        next_cursor = encode_cursor(options.fingerprint, options.order, rows[-1])
    return CdrPage(rows=rows, count=count, next_cursor=next_cursor)


def _snowflake_where(cdr_id: int) -> Q:
    """``cdr_id`` as an id we generated: its started_at is the time in its bits (a window
    of a few milliseconds around it, for float rounding), so the planner reads one month."""
    made = snowflake_time(cdr_id)
    return Q(
        pk=cdr_id,
        started_at__gte=made - _SNOWFLAKE_SLACK,
        started_at__lt=made + 2 * _SNOWFLAKE_SLACK,
    )


def cdr_id_where(cdr_id: int) -> Q | None:
    """The condition that finds the CDR ``cdr_id`` by its partition; None when no CDR has it.

    On partitioned PostgreSQL a condition on ``id`` alone makes PostgreSQL plan every
    partition (tens of milliseconds at 36 months) and probe each one's index. The id
    registry gives the CDR's started_at, which the condition then carries, so one month's
    partition is planned and read. (``cdr_get`` tries the snowflake's own time first.)
    """
    conn = connections[routers.read_alias()]  # the request's replica, or the primary
    if not has_registry(conn):
        return Q(pk=cdr_id)
    with conn.cursor() as cur:
        cur.execute(f"SELECT started_at FROM {REGISTRY} WHERE id = %s", [cdr_id])
        found = cur.fetchone()
    return None if found is None else Q(pk=cdr_id, started_at=found[0])


def cdr_get(*, token: ApiToken, cdr_id: int) -> CdrRow | None:
    """One CDR with the fields the token may see, or None (also outside its domains).

    Partitioned PostgreSQL: an id that may be one we generated is read first as such (a
    snowflake carries its time, so one statement reads one partition); any other id, or
    one not found so, through the id registry (a PBX's own ids): ``cdr_id_where``. (One
    statement with the registry lookup as a subquery measured slower than the two: the
    partitions are then pruned only after the executor has set up a scan of each.)
    """
    fields = visible_field_names(billing=token.scope_billing)

    def make(domains: Sequence[str], where: Q, _after: Any) -> QuerySet[Cdr, Any]:
        qs = Cdr.objects.filter(_domains_q(domains)).filter(where)
        return qs.values_list(*_columns(fields))[:1]

    def fetch(where: Q) -> CdrRow | None:
        # LIMIT 1 stays in the text: PostgreSQL then reuses one generic plan (which prunes
        # the partitions at run time) instead of planning the read anew every time.
        found = compiled.fetch_shaped(
            ("detail", fields),
            make,
            domains=token.domains or (),
            where=where,
            limit_as_parameter=False,
        )
        return next(_as_dicts(fields, found), None)

    conn = connections[routers.read_alias()]
    if not has_registry(conn):
        return fetch(Q(pk=cdr_id))
    # Which read goes first depends on the id's bits alone, and an id not found the first
    # way is looked up the second way, found or not: a domain-limited token cannot tell by
    # the time taken whether an id it may not see exists.
    if _maybe_generated(cdr_id):
        row = fetch(_snowflake_where(cdr_id))
        if row is not None:
            return row
    return fetch(cdr_id_where(cdr_id) or _snowflake_where(cdr_id))


# Ids we generate carry their CDR's started_at; one whose time is before this or after
# tomorrow is a PBX's own (a small sequential number, say) or a CDR far from now: its detail
# goes to the registry first. (PortSIP's ids are snowflakes of its own that read as 2006-07
# here: they still take the snowflake read first.)
_GENERATED_FROM = datetime(2001, 1, 1, tzinfo=UTC)


def _maybe_generated(cdr_id: int) -> bool:
    """Whether ``cdr_id`` may be an id we generated for a CDR of a likely time: it only
    picks the read that goes first (either finds every CDR)."""
    made = snowflake_time(cdr_id)
    return _GENERATED_FROM <= made <= datetime.now(UTC) + timedelta(days=1)


def cdr_export_rows(
    *, token: ApiToken, options: ListOptions, chunk_size: int = 2000
) -> Iterator[CdrRow]:
    """Every matching CDR, streamed (server-side cursor on PostgreSQL).

    From the database the request reads now (``routers.read_alias``), to the last row."""
    fields = visible_field_names(billing=token.scope_billing)
    alias = routers.read_alias()
    qs = _filtered(token, options).order_by(*_order_by(options.order))
    rows = qs.values_list(*_columns(fields)).using(alias)

    def stream() -> Iterator[CdrRow]:
        # In a transaction Django declares the server-side cursor WITHOUT HOLD, so PostgreSQL
        # hands rows over as they are fetched; outside one, a WITH HOLD cursor is computed in
        # full at its first commit, and the first byte would wait for the whole export.
        with transaction.atomic(using=alias):
            timeouts.use_export_timeout(alias)  # the export's own, longer limit, until it ends
            yield from _as_dicts(fields, rows.iterator(chunk_size=chunk_size))

    return stream()
