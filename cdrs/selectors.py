"""Every read of CDRs: scoping to the token, filtering, ordering, paging, counting.

The only module that builds CDR querysets for the API and the export.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import F, OrderBy, Q, QuerySet

from cdrs.expressions import Rfc3339
from cdrs.fields import TIMESTAMP_FIELD_NAMES, visible_field_names
from cdrs.models import ApiToken, Cdr, CdrCounter
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


def domain_q(token: ApiToken) -> Q:
    """CDRs a domain-limited token may see (caller or callee domain in its set)."""
    if not token.domains:
        return Q()
    domains = list(token.domains)
    return Q(caller_domain__lower__in=domains) | Q(callee_domain__lower__in=domains)


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


def cdr_page_queryset(
    token: ApiToken, options: ListOptions, filtered: QuerySet[Cdr] | None = None
) -> QuerySet[Cdr, Any]:
    """The query behind one list page (rows of LIST_FIELDS); one row more than ``top``."""
    qs = _filtered(token, options) if filtered is None else filtered
    if options.after is not None:
        qs = qs.filter(keyset_q(options.order, options.after))
    qs = qs.order_by(*_order_by(options.order)).values_list(*_columns(LIST_FIELDS))
    return qs[options.skip : options.skip + options.top + 1]


def cdr_list(token: ApiToken, options: ListOptions) -> CdrPage:
    """One page of CDRs for GET /api/cdrs, with the count and the next cursor."""
    filtered = _filtered(token, options)
    count = -1
    if options.count:
        count = cdr_total() if _unfiltered(token, options) else filtered.count()
    rows = list(_as_dicts(LIST_FIELDS, cdr_page_queryset(token, options, filtered)))
    next_cursor = None
    if len(rows) > options.top:
        rows = rows[: options.top]
        next_cursor = encode_cursor(options.fingerprint, options.order, rows[-1])
    return CdrPage(rows=rows, count=count, next_cursor=next_cursor)


def cdr_get(token: ApiToken, cdr_id: int) -> dict[str, Any] | None:
    """One CDR as a dict of the fields the token may see, or None (also outside its domains)."""
    fields = visible_field_names(billing=token.scope_billing)
    found = cdrs_for_token(token).filter(pk=cdr_id).values_list(*_columns(fields))[:1]
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
            yield from _as_dicts(fields, rows.iterator(chunk_size=chunk_size))

    return stream()
