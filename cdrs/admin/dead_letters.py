"""PortSIP webhook events that could not be stored ("dead letters"), read-only."""

from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html

from cdrs.admin.common import NullFilter, ReadOnlyAdmin
from cdrs.models import PortsipDeadLetter


class ReplayedFilter(NullFilter):
    """Waiting for a replay, or already stored by one."""

    title = "state"
    parameter_name = "state"
    field_name = "replayed_at"
    options = (("pending", "Not stored yet", True), ("replayed", "Stored by a replay", False))


@admin.register(PortsipDeadLetter)
class PortsipDeadLetterAdmin(ReadOnlyAdmin):
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
