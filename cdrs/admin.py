"""Admin: browse CDRs (read-only) and manage API tokens."""

from __future__ import annotations

from django.contrib import admin

from cdrs.models import ApiToken, Cdr


@admin.register(Cdr)
class CdrAdmin(admin.ModelAdmin):
    list_display = (
        "started_at",
        "direction",
        "caller",
        "callee",
        "duration",
        "end_reason",
        "trunk",
    )
    ordering = ("-started_at", "-id")
    show_full_result_count = False

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "enabled", "expires_at", "last_used_at")
