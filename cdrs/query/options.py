"""Turn untrusted list/export query strings into typed, validated options (no I/O).

Every option is checked here; anything unknown, malformed or out of range raises
``OptionError(option, message)``, which the API turns into 400 VALIDATE_FAILED. The
result carries the rows' condition as one ``Q``, built from the filter language
(``query/filter.py``), the plain filters (``query/plain.py``) and the free-text search
expression (``cdrs/search.py``, which lives beside the index it must match).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Q

from cdrs.query.cursor import CursorError, decode_cursor
from cdrs.query.filter import FilterError, compile_filter
from cdrs.query.orderby import OrderbyError, OrderTerm, parse_orderby
from cdrs.query.plain import PLAIN_FILTER_NAMES, PlainFilterError, plain_filter_q
from cdrs.search import search_q
from cdrs.values import parse_integer

TOP_DEFAULT = 100
TOP_MAX = 1000
SEARCH_MAX = 200
LIST_OPTIONS = ("top", "skip", "orderby", "filter", "search", "count", "cursor")
EXPORT_OPTIONS = ("orderby", "filter", "search", "format")


class OptionError(ValueError):
    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


@dataclass
class ListOptions:
    """What GET /api/cdrs (or the export) was asked for, validated."""

    top: int = TOP_DEFAULT
    skip: int = 0
    count: bool = True
    order: tuple[OrderTerm, ...] = ()
    where: Q = field(default_factory=Q)  # filter, search and plain filters, AND-ed
    after: list[Any] | None = None  # keyset position from a cursor
    fingerprint: str = ""
    export_format: str = "ndjson"


def and_leaves(q: Q) -> tuple[list[tuple[str, Any]], bool]:
    """``(field__lookup, value)`` conditions reachable through non-negated ANDs, and
    whether they are all of ``q`` (no OR, NOT or lookup expression such as search's)."""
    if q.negated or (q.connector != Q.AND and len(q.children) > 1):
        return [], False
    leaves: list[tuple[str, Any]] = []
    whole = True
    for child in q.children:
        if isinstance(child, Q):
            inner, inner_whole = and_leaves(child)
            leaves.extend(inner)
            whole = whole and inner_whole
        elif isinstance(child, tuple) and len(child) == 2 and isinstance(child[0], str):
            leaves.append(child)
        else:
            whole = False
    return leaves, whole


def single_value(params: Mapping[str, list[str]], name: str) -> str | None:
    """The one value of option ``name`` (None if absent); OptionError if repeated."""
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise OptionError(name, "given more than once")
    return values[0]


def _int(params: Mapping[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    raw = single_value(params, name)
    if raw is None:
        return default
    try:
        value = parse_integer(raw.strip())  # ASCII digits only, bounded before converting
    except ValueError:
        raise OptionError(name, f"must be an integer between {lo} and {hi}") from None
    if not lo <= value <= hi:
        raise OptionError(name, f"must be between {lo} and {hi}")
    return value


def _search_q(text: str) -> Q:
    if len(text) > SEARCH_MAX:
        raise OptionError("search", f"at most {SEARCH_MAX} characters")
    if any(ord(c) < 32 for c in text):
        raise OptionError("search", "control characters are not allowed")
    return search_q(text)


def parse_list_options(
    params: Mapping[str, list[str]], *, billing: bool, export: bool = False
) -> ListOptions:
    """Validate a query string (as a dict of lists) for the list or the export."""
    allowed = EXPORT_OPTIONS if export else LIST_OPTIONS
    for name in params:
        if name not in allowed and name not in PLAIN_FILTER_NAMES:
            raise OptionError(name[:40], "unknown query option")

    opts = ListOptions()
    if export:
        fmt = single_value(params, "format") or "ndjson"
        if fmt not in ("csv", "ndjson"):
            raise OptionError("format", "must be csv or ndjson")
        opts.export_format = fmt
    else:
        opts.top = _int(params, "top", TOP_DEFAULT, 1, TOP_MAX)
        opts.skip = _int(params, "skip", 0, 0, 2**31 - 1)
        if opts.skip > settings.CDR_MAX_SKIP:
            # Every skipped row is still read; past this depth a cursor costs far less.
            raise OptionError(
                "skip",
                f"at most {settings.CDR_MAX_SKIP} rows; page deeper with next_cursor "
                "(pass it back as cursor=, same filter and orderby)",
            )
        count = single_value(params, "count")
        if count not in (None, "true", "false"):
            raise OptionError("count", "must be true or false")
        opts.count = count != "false"

    try:
        opts.order = parse_orderby(single_value(params, "orderby"))
    except OrderbyError as exc:
        raise OptionError("orderby", str(exc)) from exc

    where = Q()
    filter_text = single_value(params, "filter")
    if filter_text is not None:
        try:
            where &= compile_filter(filter_text, billing=billing)
        except FilterError as exc:
            raise OptionError("filter", str(exc)) from exc
    search = single_value(params, "search")
    if search is not None and search != "":
        where &= _search_q(search)
    plain_data = {
        name: single_value(params, name) or "" for name in PLAIN_FILTER_NAMES if name in params
    }
    try:
        where &= plain_filter_q(plain_data)
    except PlainFilterError as exc:
        raise OptionError(exc.name, str(exc)) from exc
    opts.where = where

    # The fingerprint binds a cursor to everything that decides which rows come in which
    # order; top may change between pages.
    identity = repr(
        (
            filter_text,
            search,
            sorted(plain_data.items()),
            [str(t) for t in opts.order],
        )
    )
    opts.fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]

    cursor = None if export else single_value(params, "cursor")
    if cursor is not None:
        if "skip" in params:
            raise OptionError("cursor", "cannot be combined with skip")
        try:
            opts.after = decode_cursor(cursor, opts.fingerprint, opts.order)
        except CursorError as exc:
            raise OptionError("cursor", str(exc)) from exc
    return opts
