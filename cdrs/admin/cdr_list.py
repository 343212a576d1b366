"""The CDR change list: paging, filters, search and columns.

Every CDR changelist request costs a bounded number of index-served queries, whatever the
size of the table: no COUNT(*) (the paginator looks one row ahead instead, and the total
comes from the ``cdrs_counter`` slots), no SELECT DISTINCT over the table (the date
hierarchy is built from MIN/MAX, the trunk filter from the newest rows only), no facet
counts and no unbounded "show all".
"""

from __future__ import annotations

import contextlib
from datetime import date, timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import PAGE_VAR, SEARCH_VAR, ChangeList
from django.core.paginator import Page, Paginator
from django.db.models import Max, Min, Q, QuerySet
from django.db.models.functions import Lower
from django.http import HttpRequest
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import capfirst

from cdrs import fields as spine
from cdrs.admin.cdr_detail import shown_field
from cdrs.admin.common import EMPTY, NullFilter, ReadOnlyAdmin, can_see_billing, hms
from cdrs.ids import InvalidId, decode_id
from cdrs.models import Cdr
from cdrs.search import search_q
from cdrs.selectors import cdr_total
from cdrs.values import format_ts

# The trunk and domain filters offer the values of this many newest CDRs (one index range
# scan), never a SELECT DISTINCT over the whole table.
TRUNK_SAMPLE_ROWS = 5000
# Shortest search term that also runs the trigram substring search: pg_trgm cannot use its
# index for shorter terms, so they would scan the whole table.
SUBSTRING_MIN_LENGTH = 3


def list_column(name: str) -> str:
    """The change list column of a model field: a string field through ``<name>_shown``
    (its "no value" is "", which Django would not show as the empty marker), any other
    field as itself (Django formats it, and shows NULL as the marker)."""
    return f"{name}_shown" if spine.FIELDS_BY_NAME[name].kind is spine.Kind.STRING else name


# Model fields listed as they are; the billing ones are the spine's private fields.
PLAIN_LIST_FIELDS = ("trunk",)
BILLING_LIST_FIELDS = spine.PRIVATE_FIELD_NAMES


def cdr_list_columns(request: HttpRequest) -> list[str]:
    """The model fields the CDR changelist reads (for ``QuerySet.only``)."""
    columns = ["id", "started_at", "direction", "caller", "caller_display_name", "callee"]
    columns += ["callee_display_name", "duration", "end_reason", *PLAIN_LIST_FIELDS]
    if can_see_billing(request):
        columns += BILLING_LIST_FIELDS
    return columns


class LookaheadPaginator(Paginator):
    """Pages by fetching one row more than a page: never counts the matching rows.

    ``count`` is what is known for sure: the rows before this page plus the rows fetched,
    so Django's changelist sees "one more page" exactly when the look-ahead row exists, and
    the page itself is served from the same single query. ``total`` is the exact number of
    CDRs when the list is unfiltered (from the counter slots, no COUNT(*)), else None.
    """

    def __init__(
        self,
        object_list: QuerySet[Cdr],
        per_page: int,
        *,
        page_number: int,
        total: int | None = None,
    ) -> None:
        super().__init__(object_list, per_page, orphans=0, allow_empty_first_page=True)
        self.page_number = max(page_number, 1)
        self.total = total

    @cached_property
    def offset(self) -> int:
        return (self.page_number - 1) * self.per_page

    @cached_property
    def window(self) -> list[Cdr]:
        """This page's rows plus at most one look-ahead row."""
        return list(self.object_list[self.offset : self.offset + self.per_page + 1])

    @cached_property
    def count(self) -> int:
        return self.offset + len(self.window)

    @property
    def has_next(self) -> bool:
        return len(self.window) > self.per_page

    def page(self, number: int | str) -> Page:
        number = self.validate_number(number)
        if number == self.page_number:
            return Page(self.window[: self.per_page], number, self)
        return super().page(number)


class CdrChangeList(ChangeList):
    """The CDR changelist: look-ahead paging, prev/next links and a MIN/MAX date hierarchy."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        qs = super().get_queryset(request, exclude_parameters)
        # Only the listed columns: user_data alone may be 8 KB a row.
        return qs.only(*cdr_list_columns(request))

    def get_ordering_field(self, field_name: Any) -> Any:
        # Django honours ?o=<column> for every column, sortable_by only hides the links;
        # sorting by an unindexed column sorts the whole table.
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)

    def get_ordering(self, request: HttpRequest, queryset: QuerySet) -> list[Any]:
        ordering = super().get_ordering(request, queryset)
        # Sorting by "Started" ascending gets "-pk" appended as a tie-breaker; "pk" instead
        # matches a backward scan of the (started_at DESC, id DESC) index exactly.
        if ordering == ["started_at", "-pk"]:
            return ["started_at", "pk"]
        return ordering

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        if not self.multi_page and self.paginator.page_number == 1:
            # Everything fits on the first page: Django would read the queryset again,
            # the look-ahead query already holds every row.
            self.result_list = self.paginator.window

    def _page_url(self, number: int) -> str:
        return self.get_query_string({PAGE_VAR: number})

    @property
    def page_first_row(self) -> int:
        return self.paginator.offset + 1 if self.result_count else 0

    @property
    def page_last_row(self) -> int:
        return self.paginator.offset + len(self.paginator.window[: self.list_per_page])

    @property
    def has_next_page(self) -> bool:
        return self.paginator.has_next

    @property
    def next_page_url(self) -> str:
        return self._page_url(self.page_num + 1)

    @property
    def previous_page_url(self) -> str:
        return self._page_url(self.page_num - 1)

    @property
    def first_page_url(self) -> str:
        return self._page_url(1)

    @property
    def clear_search_url(self) -> str:
        return self.get_query_string(remove=[SEARCH_VAR])

    @property
    def total_display(self) -> str:
        total = self.paginator.total
        return "" if total is None else f"{total:,}"

    def date_hierarchy_links(self) -> dict[str, Any] | None:
        """What ``{% date_hierarchy %}`` shows, from one MIN/MAX query instead of DISTINCTs.

        Django's tag lists the years/months/days that have matching rows with SELECT
        DISTINCT date_trunc(...) over every matching row: a full scan of a large table. Here
        the choices are the periods between the first and the last CDR of the whole table,
        within the period picked so far: MIN and MAX of started_at without a WHERE are two
        index probes. (With the list's filters, MIN/MAX may walk the whole started_at index
        looking for a rare match.) A period with no matching calls shows an empty list.
        """
        if not self.date_hierarchy:
            return None
        name = self.date_hierarchy
        year_field, month_field, day_field = f"{name}__year", f"{name}__month", f"{name}__day"
        year, month, day = (self.params.get(f) for f in (year_field, month_field, day_field))

        def link(filters: dict[str, Any]) -> str:
            return self.get_query_string(filters, [f"{name}__"])

        def day_title(d: date) -> str:
            return capfirst(formats.date_format(d, "MONTH_DAY_FORMAT"))

        def month_title(y: int, m: int) -> str:
            return capfirst(formats.date_format(date(y, m, 1), "YEAR_MONTH_FORMAT"))

        if year and month and day:
            picked = date(int(year), int(month), int(day))
            return {
                "show": True,
                "back": {
                    "link": link({year_field: year, month_field: month}),
                    "title": month_title(picked.year, picked.month),
                },
                "choices": [{"title": day_title(picked)}],
            }
        bounds = self.root_queryset.aggregate(first=Min(name), last=Max(name))
        if bounds["first"] is None or bounds["last"] is None:
            return {"show": False}
        first = timezone.localtime(bounds["first"]).date()
        last = timezone.localtime(bounds["last"]).date()
        if not (year or month) and first.year == last.year:
            # Like Django: start at the year or month when everything falls within one.
            year = str(first.year)
            if first.month == last.month:
                month = str(first.month)
        if year and month:
            y, m = int(year), int(month)
            start = max(first, date(y, m, 1))
            end = min(last, date(y + m // 12, m % 12 + 1, 1) - timedelta(days=1))
            days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
            return {
                "show": True,
                "back": {"link": link({year_field: year}), "title": str(year)},
                "choices": [
                    {
                        "link": link({year_field: year, month_field: month, day_field: d.day}),
                        "title": day_title(d),
                    }
                    for d in days
                ],
            }
        if year:
            y = int(year)
            months = range(
                first.month if first.year == y else 1, (last.month if last.year == y else 12) + 1
            )
            return {
                "show": True,
                "back": {"link": link({}), "title": "All dates"},
                "choices": [
                    {"link": link({year_field: year, month_field: m}), "title": month_title(y, m)}
                    for m in (months if first.year <= y <= last.year else ())
                ],
            }
        years = list(range(first.year, last.year + 1))
        if len(years) > 30:
            # A stray CDR dated decades away would otherwise list every year in between.
            years = [first.year, *range(last.year - 28, last.year + 1)]
        return {
            "show": True,
            "back": None,
            "choices": [{"link": link({year_field: str(y)}), "title": str(y)} for y in years],
        }


class AnsweredFilter(NullFilter):
    """Answered (answered_at set) or not answered (answered_at NULL)."""

    title = "answered"
    parameter_name = "answered"
    field_name = "answered_at"
    options = (("yes", "Answered", False), ("no", "Not answered", True))


def newest_values(request: HttpRequest, name: str) -> set[str]:
    """The non-empty values of ``name`` (trunk, caller_domain, callee_domain) among the newest
    CDRs: one bounded index range scan per page view, shared by the three filters."""
    cached: dict[str, set[str]] | None = getattr(request, "_cdr_newest_values", None)
    if cached is None:
        names = ("trunk", "caller_domain", "callee_domain")
        cached = {n: set() for n in names}
        newest = Cdr.objects.order_by("-started_at", "-id").values_list(*names)
        for row in newest[:TRUNK_SAMPLE_ROWS]:
            for n, value in zip(names, row, strict=True):
                cached[n].add(value.lower() if n != "trunk" else value)
        for values in cached.values():
            values.discard("")
        request._cdr_newest_values = cached  # type: ignore[attr-defined]
    return cached[name]


class TrunkFilter(admin.SimpleListFilter):
    """Trunk, offered from the trunks of the newest CDRs.

    Django's default filter for a plain CharField runs SELECT DISTINCT trunk over the whole
    table on every changelist view. The trunks in use show up among the newest calls; a
    trunk that only older CDRs have is still reachable through ``?trunk=<name>``.
    """

    title = "trunk"
    parameter_name = "trunk"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        trunks = set(newest_values(request, "trunk"))
        chosen = self.value()
        if chosen:
            trunks.add(chosen)
        return [(t, t) for t in sorted(trunks)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = self.value()
        return queryset.filter(trunk=value) if value else None


class DomainFilter(admin.SimpleListFilter):
    """A SIP domain, any case: ``?caller_domain=acme.test`` (or callee_domain).

    The choices are the domains of the newest CDRs, like the trunk filter; any other
    domain is reachable by typing it in the filter's box (or the URL). Matching is
    ``lower(domain) = lower(value)``, which the per-domain expression indexes serve (the
    ones domain-limited tokens use), so a filtered page stays an index scan at any size.
    """

    template = "admin/cdrs/cdr/domain_filter.html"
    field_name = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        domains = set(newest_values(request, self.field_name))
        chosen = self.value()
        if chosen:
            domains.add(chosen.strip().lower())
        return [(d, d) for d in sorted(domains)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = (self.value() or "").strip()
        if not value:
            return None
        return queryset.annotate(**{f"{self.field_name}_lower": Lower(self.field_name)}).filter(
            **{f"{self.field_name}_lower": value.lower()}
        )

    def choices(self, changelist: Any) -> Any:
        yield from super().choices(changelist)
        # The text box keeps every other filter and the search: hidden inputs.
        keep = {
            k: v
            for k, v in changelist.get_filters_params().items()
            if k not in (self.parameter_name, PAGE_VAR)
        }
        if changelist.query:
            keep[SEARCH_VAR] = changelist.query
        yield {
            "form": True,
            "name": self.parameter_name,
            "value": self.value() or "",
            "hidden": [
                (k, x) for k, v in keep.items() for x in (v if isinstance(v, list) else [v])
            ],
        }


class CallerDomainFilter(DomainFilter):
    title = "caller domain"
    parameter_name = field_name = "caller_domain"


class CalleeDomainFilter(DomainFilter):
    title = "callee domain"
    parameter_name = field_name = "callee_domain"


class RerouteReasonFilter(admin.SimpleListFilter):
    """Reroute reason, with the one empty marker for "no reroute" (stored as "")."""

    title = "reroute reason"
    parameter_name = "reroute_reason__exact"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(r or "none", r or EMPTY) for r in spine.REROUTE_REASONS]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = self.value()
        if value is None:
            return None
        return queryset.filter(reroute_reason="" if value == "none" else value)


class CdrListAdmin(ReadOnlyAdmin):
    """The CDR change list (``CdrAdmin`` combines it with the CDR page)."""

    list_display: tuple[str, ...] = (
        "started",
        "direction_column",
        "caller_column",
        "callee_column",
        "duration_column",
        "end_reason_column",
        *(list_column(n) for n in PLAIN_LIST_FIELDS),
    )
    list_display_links = ("started",)
    list_filter = (
        CallerDomainFilter,
        CalleeDomainFilter,
        "direction",
        "end_reason",
        RerouteReasonFilter,
        TrunkFilter,
        AnsweredFilter,
    )
    empty_value_display = EMPTY
    date_hierarchy = "started_at"
    # Sorting by any other column would sort the whole table; started_at has an index both
    # ways.
    sortable_by = ("started",)
    ordering = ("-started_at", "-id")
    list_per_page = 100
    # No "Show all" (an unbounded SELECT), no total COUNT(*), no per-choice facet counts.
    list_max_show_all = 0
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = None
    # Searching matches, with an OR of index-served conditions (see get_search_results):
    # the exact caller, callee or Call-ID (B-tree indexes), a public or internal id (the
    # primary key) and, for terms of 3+ characters, a case-insensitive substring of the
    # API's search document (numbers, display names, destination, DID, Call-ID) served by
    # its trigram index. Plain Django search (icontains over each field) would scan the
    # whole table for every search. The names below only label the search box.
    search_fields = ("caller", "callee", "call_id", "caller_display_name", "callee_display_name")
    search_help_text = (
        "Exact caller, callee, Call-ID or CDR id; or any part (3+ characters) of a number, "
        "display name, destination, DID or Call-ID."
    )

    def get_list_display(self, request: HttpRequest) -> tuple[str, ...]:
        if can_see_billing(request):
            return (*self.list_display, *(list_column(n) for n in BILLING_LIST_FIELDS))
        return self.list_display

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        # The list is a wide table: it gets the app sidebar's width (breadcrumbs remain).
        context = {"is_nav_sidebar_enabled": False, **(extra_context or {})}
        return super().changelist_view(request, context)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return CdrChangeList

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> Paginator:
        try:
            page_number = int(request.GET.get(PAGE_VAR, 1))
        except ValueError:  # as ChangeList does for a malformed page number
            page_number = 1
        # No WHERE at all: the exact number of CDRs is in the counter slots.
        total = cdr_total() if not queryset.query.where else None
        return LookaheadPaginator(queryset, per_page, page_number=page_number, total=total)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # Query-string filters (?cost__gte=1) would let a user without the billing
        # permission learn costs from which rows come back.
        field = lookup.split("__", 1)[0]
        if field in spine.PRIVATE_FIELD_NAMES and (request is None or not can_see_billing(request)):
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(caller=term) | Q(callee=term) | Q(call_id=term)
        with contextlib.suppress(InvalidId):
            match |= Q(pk=decode_id(term))
        if term.isdecimal() and 1 <= len(term) <= 19:
            match |= Q(pk=int(term))
        if len(term) >= SUBSTRING_MIN_LENGTH:
            match |= search_q(term)
        return queryset.filter(match), False

    # -- columns ------------------------------------------------------------------------------

    @admin.display(description="Started", ordering="started_at")
    def started(self, obj: Cdr) -> str:
        return format_html(
            '<span title="UTC {}">{}</span>',
            format_ts(obj.started_at),
            timezone.localtime(obj.started_at).strftime("%Y-%m-%d %H:%M:%S"),
        )

    @admin.display(description="Caller")
    def caller_column(self, obj: Cdr) -> str:
        return _number(obj.caller, obj.caller_display_name)

    @admin.display(description="Callee")
    def callee_column(self, obj: Cdr) -> str:
        return _number(obj.callee, obj.callee_display_name)

    @admin.display(description="Duration")
    def duration_column(self, obj: Cdr) -> str:
        return hms(obj.duration)

    @admin.display(description="Direction")
    def direction_column(self, obj: Cdr) -> str:
        return _breakable(obj.direction)

    @admin.display(description="End reason")
    def end_reason_column(self, obj: Cdr) -> str:
        return _breakable(obj.end_reason)


for _name in (*PLAIN_LIST_FIELDS, *BILLING_LIST_FIELDS):
    if list_column(_name) != _name:
        setattr(CdrListAdmin, list_column(_name), shown_field(_name))


def _breakable(value: str) -> SafeString:
    """An enum value that may wrap after its underscores (narrow columns, same text)."""
    return format_html_join(mark_safe("_<wbr>"), "{}", ((part,) for part in value.split("_")))


def _number(number: str, display_name: str) -> SafeString:
    if display_name:
        return format_html(
            '{}<span class="quiet cdr-name">{}</span>', number or EMPTY, display_name
        )
    return format_html("{}", number or EMPTY)
