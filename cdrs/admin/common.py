"""What every admin page of cdrservice shares: the site's titles, the billing permission,
the empty marker, time formatting and the read-only building blocks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from cdrs.values import format_ts

BILLING_PERMISSION = "cdrs.view_billing"
# The one marker for "no value" on every admin page (empty strings and nulls alike).
EMPTY = "—"

admin.site.site_header = "cdrservice administration"
admin.site.site_title = "cdrservice admin"
admin.site.index_title = "Call detail records and API tokens"
admin.site.site_url = "/api/docs"  # "View site": the API's interactive docs
admin.site.empty_value_display = EMPTY


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


class ReadOnlyAdmin(admin.ModelAdmin):
    """Nobody adds, changes or deletes these rows here, superusers included."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class NullFilter(admin.SimpleListFilter):
    """Whether one nullable column is NULL: a subclass names the column and its two choices."""

    field_name = ""
    # (query-string value, label, whether the column is NULL), in the order shown.
    options: tuple[tuple[str, str, bool], ...] = ()

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, label) for value, label, _ in self.options]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        for value, _, is_null in self.options:
            if self.value() == value:
                return queryset.filter(**{f"{self.field_name}__isnull": is_null})
        return None
