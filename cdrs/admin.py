"""Admin: browse CDRs (read-only, cheap on a table of millions), manage API tokens, and see
the PortSIP webhook events that could not be stored (read-only).

Every CDR changelist request costs a bounded number of index-served queries, whatever the
size of the table: no COUNT(*) (the paginator looks one row ahead instead, and the total
comes from the ``cdrs_counter`` slots), no SELECT DISTINCT over the table (the date
hierarchy is built from MIN/MAX, the trunk filter from the newest rows only), no facet
counts and no unbounded "show all".
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.main import PAGE_VAR, SEARCH_VAR, ChangeList
from django.core.paginator import Page, Paginator
from django.db import connection
from django.db.models import CharField, Max, Min, Q, QuerySet, Value
from django.db.models.functions import Collate, Lower, Upper
from django.db.models.lookups import Contains
from django.http import HttpRequest
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import capfirst

from cdrs import fields as spine
from cdrs.admin_forms import ApiTokenForm
from cdrs.ids import InvalidId, decode_id, encode_id
from cdrs.models import ApiToken, Cdr, PortsipDeadLetter
from cdrs.search import SearchDocument, search_q
from cdrs.selectors import cdr_total
from cdrs.tokens import assign_secret, token_is_live
from cdrs.values import format_ts

BILLING_PERMISSION = "cdrs.view_billing"
# The one marker for "no value" on every admin page (empty strings and nulls alike).
EMPTY = "—"
# Labels where the field name does not read as English.
LABELS = {
    "did_cid": "DID/CID",
    "call_id": "Call-ID",
    "outbound_caller_id": "Outbound caller ID",
    "status_code": "SIP status",
    "id": "Internal id",
}

admin.site.site_header = "cdrservice administration"
admin.site.site_title = "cdrservice admin"
admin.site.index_title = "Call detail records and API tokens"
admin.site.site_url = "/api/docs"  # "View site": the API's interactive docs
admin.site.empty_value_display = EMPTY
# Other legs of a call listed on a CDR's page; more are one click away in the list.
SAME_CALL_LIMIT = 50
# The trunk and domain filters offer the values of this many newest CDRs (one index range
# scan), never a SELECT DISTINCT over the whole table.
TRUNK_SAMPLE_ROWS = 5000
# Shortest search term that also runs the trigram substring search: pg_trgm cannot use its
# index for shorter terms, so they would scan the whole table.
SUBSTRING_MIN_LENGTH = 3


def substring_q(term: str) -> Q:
    """``term`` anywhere in the API's search document, served by its trigram index.

    On PostgreSQL the searched columns have the "C" collation, whose UPPER() folds ASCII
    letters only, while ``cdrs.search.search_q`` folds the term with the database's
    collation: "García" becomes "GARCÍA" on one side and "GARCíA" on the other, and is
    never found. Folding the term in "C" too makes both sides agree.
    """
    if connection.vendor != "postgresql":
        return search_q(term)
    folded = Upper(Collate(Value(term, output_field=CharField()), "C"))
    return Q(Contains(SearchDocument(), folded))


def can_see_billing(request: HttpRequest) -> bool:
    """Whether the admin user may see cost and billed_account (superusers always may)."""
    return request.user.has_perm(BILLING_PERMISSION)


def hms(seconds: int | None) -> str:
    """Seconds as h:mm:ss (hours not wrapped at 24: 90061 -> 25:01:01)."""
    if seconds is None:
        return EMPTY
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def local_time(value: datetime) -> str:
    """A timestamp in the admin's time zone, second precision, with the zone's name."""
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def when(value: datetime | None, since: datetime | None = None) -> str:
    """Local time, the UTC time as the API writes it, and the offset from ``since``."""
    if value is None:
        return EMPTY
    after = ""
    if since is not None:
        delta = int((value - since).total_seconds())
        after = f" +{hms(delta)}" if delta >= 0 else f" -{hms(-delta)}"
    return format_html(
        '{} <span class="quiet">(UTC {}){}</span>', local_time(value), format_ts(value), after
    )


# --- CDRs ------------------------------------------------------------------------------------


def cdr_list_columns(request: HttpRequest) -> list[str]:
    """The model fields the CDR changelist reads (for ``QuerySet.only``)."""
    columns = ["id", "started_at", "direction", "caller", "caller_display_name", "callee"]
    columns += ["callee_display_name", "duration", "end_reason", "trunk"]
    if can_see_billing(request):
        columns += list(CdrAdmin.billing_columns)
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


class AnsweredFilter(admin.SimpleListFilter):
    """Answered (answered_at set) or not answered (answered_at NULL)."""

    title = "answered"
    parameter_name = "answered"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Answered"), ("no", "Not answered")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() == "yes":
            return queryset.filter(answered_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(answered_at__isnull=True)
        return None


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


# Model fields shown on a CDR's page through ``_shown`` (as ``<name>_shown``).
SHOWN_FIELDS = (
    "direction",
    "caller",
    "caller_display_name",
    "caller_domain",
    "callee",
    "callee_display_name",
    "callee_domain",
    "end_reason",
    "reroute_reason",
    "status_code",
    "destination",
    "outbound_caller_id",
    "did_cid",
    "trunk",
    "service_number",
    "call_id",
    "user_data",
    "id",
    "natural_key",
    "cost",
    "billed_account",
)


def _shown_names(*names: str) -> tuple[str, ...]:
    return tuple(f"{n}_shown" for n in names)


def _shown(name: str) -> Any:
    """A read-only detail field: its value, or the empty marker; a human label."""

    @admin.display(description=LABELS.get(name, capfirst(name.replace("_", " "))))
    def show(self: Any, obj: Cdr) -> Any:
        value = getattr(obj, name)
        return EMPTY if value in ("", None) else value

    show.__name__ = f"{name}_shown"
    return show


@admin.register(Cdr)
class CdrAdmin(admin.ModelAdmin):
    """CDRs, read-only for everyone: they are records, removed only by retention tooling."""

    list_display = (
        "started",
        "direction_column",
        "caller_column",
        "callee_column",
        "duration_column",
        "end_reason_column",
        "trunk_shown",
    )
    billing_columns = ("cost", "billed_account")  # model fields (the list reads only these)
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

    fieldsets_public: Sequence[tuple[str | None, dict[str, Any]]] = (
        (
            None,
            {
                "fields": (
                    "public_id",
                    *_shown_names(
                        "direction",
                        "caller",
                        "caller_display_name",
                        "caller_domain",
                        "callee",
                        "callee_display_name",
                        "callee_domain",
                    ),
                )
            },
        ),
        (
            "Timing",
            {"fields": ("started_detail", "rang", "answered", "ended", "duration_hms")},
        ),
        ("Outcome", {"fields": _shown_names("end_reason", "reroute_reason", "status_code")}),
        (
            "Routing",
            {
                "fields": _shown_names(
                    "destination", "outbound_caller_id", "did_cid", "trunk", "service_number"
                )
            },
        ),
        ("Call-ID", {"fields": (*_shown_names("call_id"), "same_call")}),
        ("Other", {"fields": _shown_names("user_data", "id", "natural_key")}),
    )
    fieldsets_billing: Sequence[tuple[str | None, dict[str, Any]]] = (
        ("Billing", {"fields": _shown_names("cost", "billed_account")}),
    )

    # Read-only for everyone, superusers included.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Cdr | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Cdr | None = None) -> bool:
        return False

    def get_list_display(self, request: HttpRequest) -> tuple[str, ...]:
        if can_see_billing(request):
            return (*self.list_display, "cost", "billed_account_shown")
        return self.list_display

    def get_fieldsets(self, request: HttpRequest, obj: Cdr | None = None) -> Any:
        if can_see_billing(request):
            # Billing right after Routing, before the Call-ID and the internal fields.
            head, tail = self.fieldsets_public[:4], self.fieldsets_public[4:]
            return (*head, *self.fieldsets_billing, *tail)
        return self.fieldsets_public

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
            match |= substring_q(term)
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

    # -- detail ---------------------------------------------------------------------------------

    @admin.display(description="Public id")
    def public_id(self, obj: Cdr) -> str:
        return format_html("<code>{}</code>", encode_id(obj.pk))

    @admin.display(description="Started")
    def started_detail(self, obj: Cdr) -> str:
        return when(obj.started_at)

    @admin.display(description="Rang")
    def rang(self, obj: Cdr) -> str:
        return when(obj.rang_at, obj.started_at)

    @admin.display(description="Answered")
    def answered(self, obj: Cdr) -> str:
        return when(obj.answered_at, obj.started_at)

    @admin.display(description="Ended")
    def ended(self, obj: Cdr) -> str:
        return when(obj.ended_at, obj.started_at)

    @admin.display(description="Duration (h:mm:ss)")
    def duration_hms(self, obj: Cdr) -> str:
        seconds = obj.duration
        return format_html('{} <span class="quiet">({} s)</span>', hms(seconds), seconds)

    @admin.display(description="Other CDRs of this call")
    def same_call(self, obj: Cdr) -> str:
        if not obj.call_id:
            return EMPTY
        others = list(
            Cdr.objects.filter(call_id=obj.call_id)
            .exclude(pk=obj.pk)
            .order_by("started_at", "id")
            .only("id", "started_at", "caller", "callee", "direction")[: SAME_CALL_LIMIT + 1]
        )
        if not others:
            return EMPTY
        info = self.opts.app_label, self.opts.model_name
        items = format_html_join(
            "",
            '<li><a href="{}">{}</a> {} → {} <span class="quiet">{}</span></li>',
            (
                (
                    reverse(f"admin:{info[0]}_{info[1]}_change", args=[o.pk]),
                    local_time(o.started_at),
                    o.caller or EMPTY,
                    o.callee or EMPTY,
                    o.direction,
                )
                for o in others[:SAME_CALL_LIMIT]
            ),
        )
        more = ""
        if len(others) > SAME_CALL_LIMIT:
            url = reverse(f"admin:{info[0]}_{info[1]}_changelist")
            more = format_html(
                '<li><a href="{}?{}">All CDRs with this Call-ID…</a></li>',
                url,
                urlencode({"call_id": obj.call_id}),
            )
        return format_html('<ul class="cdr-same-call">{}{}</ul>', items, more)

    def get_readonly_fields(self, request: HttpRequest, obj: Cdr | None = None) -> tuple[str, ...]:
        # Everything is read-only (no change permission); the callables must be listed so
        # that the fieldsets may name them.
        return (
            "public_id",
            "started_detail",
            "rang",
            "answered",
            "ended",
            "duration_hms",
            "same_call",
            *_shown_names(*SHOWN_FIELDS),
        )


for _name in SHOWN_FIELDS:
    setattr(CdrAdmin, f"{_name}_shown", _shown(_name))


def _breakable(value: str) -> SafeString:
    """An enum value that may wrap after its underscores (narrow columns, same text)."""
    return format_html_join(mark_safe("_<wbr>"), "{}", ((part,) for part in value.split("_")))


def _number(number: str, display_name: str) -> SafeString:
    if display_name:
        return format_html(
            '{}<span class="quiet cdr-name">{}</span>', number or EMPTY, display_name
        )
    return format_html("{}", number or EMPTY)


# --- API tokens ------------------------------------------------------------------------------


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API tokens: create (the secret is shown once), list, edit scopes/domains, revoke.

    Only the public prefix is ever displayed; the digest is neither shown, nor searchable,
    nor filterable, and the plain token exists only in the response after it is created.
    """

    form = ApiTokenForm
    list_display = (
        "prefix",
        "name",
        "user",
        "scopes_column",
        "domains_column",
        "enabled",
        "state",
        "expires_at",
        "last_used_at",
        "created_at",
    )
    list_display_links = ("prefix", "name")
    list_filter = ("enabled", "scope_read", "scope_billing", "scope_write")
    list_select_related = ("user",)
    search_fields = ("=prefix", "name", "user__username")
    ordering = ("-created_at", "-id")
    actions = ("revoke_tokens",)
    add_fieldsets = (
        (None, {"fields": ("user", "name")}),
        ("Scopes", {"fields": ("scope_read", "scope_billing", "scope_write")}),
        ("Limits", {"fields": ("domains", "expires_at", "enabled")}),
    )
    change_fieldsets = (
        (None, {"fields": ("prefix", "user", "name")}),
        ("Scopes", {"fields": ("scope_read", "scope_billing", "scope_write")}),
        ("Limits", {"fields": ("domains", "expires_at", "enabled")}),
        ("Use", {"fields": ("state", "created_at", "last_used_at")}),
    )

    def get_fieldsets(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return self.change_fieldsets if obj is not None else self.add_fieldsets

    def get_readonly_fields(
        self, request: HttpRequest, obj: ApiToken | None = None
    ) -> tuple[str, ...]:
        if obj is None:
            return ()
        # A token stays with the user it was made for: give another user a new token.
        return ("prefix", "user", "state", "created_at", "last_used_at")

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # Most tokens are made by the person who will use them.
        return {"user": request.user.pk, **super().get_changeform_initial_data(request)}

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user":
            kwargs["queryset"] = db_field.related_model.objects.filter(is_active=True).order_by(
                "username"
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # ?digest__startswith=... would reveal the digest a character at a time.
        if lookup.split("__", 1)[0] == "digest":
            return False
        return super().lookup_allowed(lookup, value, request)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        plain = None if change else assign_secret(obj)
        super().save_model(request, obj, form, change)
        if plain is not None:
            # Shown on the page the admin is redirected to, then gone: only the digest is
            # stored. format_html escapes the token, so the message may be marked safe.
            messages.success(
                request,
                format_html(
                    'New API token for {}: <code id="new-api-token">{}</code> — copy it now, '
                    "it is shown only this once.",
                    obj.user,
                    plain,
                ),
            )

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        tokens = list(queryset.filter(enabled=True))
        ApiToken.objects.filter(pk__in=[t.pk for t in tokens]).update(enabled=False)
        for token in tokens:
            self.log_change(request, token, [{"changed": {"fields": ["enabled"]}}])
        wait = settings.CDR_TOKEN_CACHE_SECONDS
        self.message_user(
            request,
            f"Revoked {len(tokens)} token(s)."
            + (f" They stop working within {wait} s." if wait > 0 else ""),
            messages.SUCCESS,
        )

    @admin.display(description="Scopes")
    def scopes_column(self, obj: ApiToken) -> str:
        return ", ".join(obj.scopes) or EMPTY

    @admin.display(description="Domains")
    def domains_column(self, obj: ApiToken) -> str:
        return ", ".join(obj.domains) if obj.domains else "all"

    @admin.display(description="State")
    def state(self, obj: ApiToken) -> str:
        if not obj.enabled:
            return "revoked"
        return "active" if token_is_live(obj, timezone.now()) else "expired"


# --- PortSIP dead letters ----------------------------------------------------------------------


class ReplayedFilter(admin.SimpleListFilter):
    """Waiting for a replay, or already stored by one."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("pending", "Not stored yet"), ("replayed", "Stored by a replay")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() == "pending":
            return queryset.filter(replayed_at__isnull=True)
        if self.value() == "replayed":
            return queryset.filter(replayed_at__isnull=False)
        return None


@admin.register(PortsipDeadLetter)
class PortsipDeadLetterAdmin(admin.ModelAdmin):
    """PortSIP webhook events that could not be stored: read-only, for diagnosis.

    They leave this table only through ``manage.py replay_portsip_events``, which marks them
    stored; nothing here edits or deletes one (the PBX has already been told 200, so this is
    the only copy of the call).
    """

    list_display = (
        "id",
        "received_at",
        "token_prefix",
        "event_type",
        "error_message",
        "replay_attempts",
        "state",
    )
    list_filter = (ReplayedFilter, "event_type")
    search_fields = ("=token_prefix",)
    ordering = ("-received_at", "-id")
    list_per_page = 100
    actions = None
    fields = (
        "id",
        "received_at",
        "token_prefix",
        "token_domains",
        "event_type",
        "error_pretty",
        "body_pretty",
        "replay_attempts",
        "replayed_at",
        "replay_result",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: PortsipDeadLetter | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: PortsipDeadLetter | None = None
    ) -> bool:
        return False

    @admin.display(description="Error")
    def error_message(self, obj: PortsipDeadLetter) -> str:
        message = str((obj.error or {}).get("message", ""))
        return message if len(message) <= 120 else message[:119] + "…"

    @admin.display(description="State")
    def state(self, obj: PortsipDeadLetter) -> str:
        return "stored by a replay" if obj.replayed_at else "not stored yet"

    @admin.display(description="Error")
    def error_pretty(self, obj: PortsipDeadLetter) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.error, indent=2, ensure_ascii=False))

    @admin.display(description="Body as received")
    def body_pretty(self, obj: PortsipDeadLetter) -> str:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', obj.body)
