"""Every read of CDRs: scoping to the token, filtering, ordering, paging, counting.

The only module that builds CDR querysets for the API and the export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Func, IntegerField, OrderBy, Q, QuerySet

from cdrs import timeouts
from cdrs.expressions import Rfc3339
from cdrs.fields import TIMESTAMP_FIELD_NAMES, visible_field_names
from cdrs.models import ApiToken, Cdr, CdrCounter
from cdrs.query import compiled
from cdrs.query.cursor import encode_cursor, keyset_q
from cdrs.query.options import ListOptions
from cdrs.query.orderby import OrderTerm


@dataclass(frozen=True)
class CdrPage:
    rows: list[dict[str, Any]]
    count: int
    next_cursor: str | None


def _columns(names: tuple[str, ...]) -> list[Any]:
    """What to select for ``names``: timestamps come out of the database as RFC 3339 text."""
    return [Rfc3339(n) if n in TIMESTAMP_FIELD_NAMES else n for n in names]


def _as_dicts(names: tuple[str, ...], rows: Any) -> Iterator[dict[str, Any]]:
    return (dict(zip(names, row, strict=True)) for row in rows)


def _domains_q(domains: Sequence[str]) -> Q:
    if not domains:
        return Q()
    return Q(caller_domain__lower__in=list(domains)) | Q(callee_domain__lower__in=list(domains))


def domain_q(token: ApiToken) -> Q:
    """CDRs a domain-limited token may see (caller or callee domain in its set)."""
    return _domains_q(token.domains or ())


def cdrs_for_token(token: ApiToken) -> QuerySet[Cdr]:
    """Every CDR the token may see."""
    return Cdr.objects.filter(domain_q(token))


def _order_by(order: tuple[OrderTerm, ...]) -> list[OrderBy]:
    # NULLs last in both directions, on every database, so keyset cursors can rely on it.
    terms = []
    for t in order:
        nulls = {"nulls_last": True} if t.nullable else {}
        terms.append(F(t.field).desc(**nulls) if t.desc else F(t.field).asc(**nulls))
    return terms


def _filtered(token: ApiToken, options: ListOptions) -> QuerySet[Cdr]:
    return cdrs_for_token(token).filter(options.where)


def _unfiltered(token: ApiToken, options: ListOptions) -> bool:
    return not token.domains and not options.where


def cdr_total() -> int:
    """Number of stored CDRs from the counter slots (no COUNT(*) over the table)."""
    # Plain SQL: this runs on every unfiltered list request; the ORM's aggregate() costs
    # more to compile than the query costs to run.
    with connection.cursor() as cur:
        cur.execute(f"SELECT COALESCE(SUM(rows), 0) FROM {CdrCounter._meta.db_table}")
        return int(cur.fetchone()[0])


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


def cdr_page_queryset(token: ApiToken, options: ListOptions) -> QuerySet[Cdr, Any]:
    """The query behind one list page (rows of LIST_FIELDS); one row more than ``top``."""
    return _page_queryset(token.domains or (), options.where, options, options.after)


def _shaped_rows(
    token: ApiToken,
    options: ListOptions,
    kind: tuple[Any, ...],
    make: Callable[[Sequence[str], Q, list[Any] | None], QuerySet[Cdr, Any]],
    *,
    keyset: bool,
) -> list[Any]:
    """Rows of ``make(domains, where, after)``, its SQL compiled once per query shape.

    ``kind`` names what ``make`` builds beyond the token's domains, the filter and (with
    ``keyset``) the cursor position, which are the values that vary between requests.
    """
    domains = list(token.domains or ())
    after_values = options.after if keyset else None
    where = compiled.q_shape(options.where)
    after = compiled.values_shape(after_values or [])
    if where is None or after is None:
        return list(make(domains, options.where, after_values))
    key = (kind, len(domains), where[0], after_values is None, after[0])
    n_domains, n_where = len(domains), len(where[1])

    def build(values: Sequence[Any]) -> QuerySet[Cdr, Any]:
        rest = iter(values[n_domains + n_where :])
        position = (
            None if after_values is None else [v if v is None else next(rest) for v in after_values]
        )
        filled = compiled.q_fill(options.where, iter(values[n_domains : n_domains + n_where]))
        return make(values[:n_domains], filled, position)

    return compiled.fetch_rows(key, build, [*domains, *where[1], *after[1]])


def _page_rows(token: ApiToken, options: ListOptions) -> list[Any]:
    """The rows of ``cdr_page_queryset``."""
    kind = ("page", LIST_FIELDS, tuple(map(str, options.order)), options.top, options.skip)
    return _shaped_rows(
        token,
        options,
        kind,
        lambda domains, where, after: _page_queryset(domains, where, options, after),
        keyset=True,
    )


class _CountAll(Func):
    """COUNT(*) as a plain select column: the filtered count, compiled like any values_list."""

    template = "COUNT(*)"
    output_field = IntegerField()

    def __init__(self) -> None:
        super().__init__()


def _filtered_count(token: ApiToken, options: ListOptions) -> int:
    """``_filtered(token, options).count()``."""

    def make(domains: Sequence[str], where: Q, _after: Any) -> QuerySet[Cdr, Any]:
        return Cdr.objects.filter(_domains_q(domains)).filter(where).values_list(_CountAll())

    rows = _shaped_rows(token, options, ("count",), make, keyset=False)
    return int(rows[0][0]) if rows else 0


def cdr_list(token: ApiToken, options: ListOptions) -> CdrPage:
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


def cdr_get(token: ApiToken, cdr_id: int) -> dict[str, Any] | None:
    """One CDR as a dict of the fields the token may see, or None (also outside its domains)."""
    fields = visible_field_names(billing=token.scope_billing)
    domains = list(token.domains or ())

    def build(values: Sequence[Any]) -> QuerySet[Cdr, Any]:
        qs = Cdr.objects.filter(_domains_q(values[1:])).filter(pk=values[0])
        return qs.values_list(*_columns(fields))[:1]

    found = compiled.fetch_rows(("detail", fields, len(domains)), build, [cdr_id, *domains])
    return next(_as_dicts(fields, found), None)


def cdr_export_rows(
    token: ApiToken, options: ListOptions, *, chunk_size: int = 2000
) -> Iterator[dict[str, Any]]:
    """Every matching CDR, streamed (server-side cursor on PostgreSQL)."""
    fields = visible_field_names(billing=token.scope_billing)
    qs = _filtered(token, options).order_by(*_order_by(options.order))
    rows = qs.values_list(*_columns(fields))

    def stream() -> Iterator[dict[str, Any]]:
        # In a transaction Django declares the server-side cursor WITHOUT HOLD, so PostgreSQL
        # hands rows over as they are fetched; outside one, a WITH HOLD cursor is computed in
        # full at its first commit, and the first byte would wait for the whole export.
        with transaction.atomic():
            timeouts.use_export_timeout()  # the export's own, longer limit, until it ends
            yield from _as_dicts(fields, rows.iterator(chunk_size=chunk_size))

    return stream()
