"""A CDR's page in the admin: every field of the spine, grouped, with readable times.

The groups are a presentation choice; which fields they show is not: every field of
``cdrs.fields.CDR_FIELDS`` appears exactly once (the timestamps and the duration through the
"Timing" displays, a field no group names under "Other"), and the billing group holds the
spine's private fields, shown only with the billing permission.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.text import capfirst

from cdrs import fields as spine
from cdrs.admin.common import EMPTY, ReadOnlyAdmin, can_see_billing, hms, local_time, when
from cdrs.ids import encode_id
from cdrs.models import Cdr

# Labels where the field name does not read as English.
LABELS = {
    "did_cid": "DID/CID",
    "call_id": "Call-ID",
    "outbound_caller_id": "Outbound caller ID",
    "status_code": "SIP status",
    "id": "Internal id",
}
# Other legs of a call listed on a CDR's page; more are one click away in the list.
SAME_CALL_LIMIT = 50
# The timestamps after the start: each shown with its offset from started_at, by a
# display named after it ("rang_at" -> "rang").
LATER_TIMESTAMPS = tuple(n for n in spine.TIMESTAMP_FIELD_NAMES if n != "started_at")
# Spine fields shown by the "Timing" displays below rather than as plain values.
TIMING_FIELDS = (*spine.TIMESTAMP_FIELD_NAMES, "duration")
TIMING_DISPLAYS = (
    "started_detail",
    *(n.removesuffix("_at") for n in LATER_TIMESTAMPS),
    "duration_hms",
)
# Model fields shown as plain values (``<name>_shown``): the rest of the spine, and the
# model's own de-duplication key.
SHOWN_FIELDS = (*(n for n in spine.ALL_FIELD_NAMES if n not in TIMING_FIELDS), "natural_key")


def shown_names(*names: str) -> tuple[str, ...]:
    return tuple(f"{n}_shown" for n in names)


def since_start(name: str) -> Any:
    """A read-only display of a timestamp after the start, with its offset from the start."""

    @admin.display(description=capfirst(name.removesuffix("_at")))
    def show(self: Any, obj: Cdr) -> str:
        return when(getattr(obj, name), obj.started_at)

    show.__name__ = name.removesuffix("_at")
    return show


def shown_field(name: str) -> Any:
    """A read-only display of a model field: its value, or the empty marker; a human label."""

    @admin.display(description=LABELS.get(name, capfirst(name.replace("_", " "))))
    def show(self: Any, obj: Cdr) -> Any:
        value = getattr(obj, name)
        return EMPTY if value in ("", None) else value

    show.__name__ = f"{name}_shown"
    return show


Fieldsets = Sequence[tuple[str | None, dict[str, Any]]]

_GROUPS: dict[str | None, tuple[str, ...]] = {
    None: (
        "direction",
        "caller",
        "caller_display_name",
        "caller_domain",
        "callee",
        "callee_display_name",
        "callee_domain",
    ),
    "Outcome": ("end_reason", "reroute_reason", "status_code"),
    "Routing": ("destination", "outbound_caller_id", "did_cid", "trunk", "service_number"),
    "Call-ID": ("call_id",),
}
_placed = {n for names in _GROUPS.values() for n in names}
# Every public field no group names, the internal ids last.
_OTHER = (
    *(
        n
        for n in spine.PUBLIC_FIELD_NAMES
        if n not in _placed and n not in TIMING_FIELDS and n != "id"
    ),
    "id",
    "natural_key",
)

FIELDSETS_PUBLIC: Fieldsets = (
    (None, {"fields": ("public_id", *shown_names(*_GROUPS[None]))}),
    ("Timing", {"fields": TIMING_DISPLAYS}),
    ("Outcome", {"fields": shown_names(*_GROUPS["Outcome"])}),
    ("Routing", {"fields": shown_names(*_GROUPS["Routing"])}),
    ("Call-ID", {"fields": (*shown_names(*_GROUPS["Call-ID"]), "same_call")}),
    ("Other", {"fields": shown_names(*_OTHER)}),
)
FIELDSETS_BILLING: Fieldsets = (("Billing", {"fields": shown_names(*spine.PRIVATE_FIELD_NAMES)}),)


class CdrDetailAdmin(ReadOnlyAdmin):
    """The CDR page's fieldsets and displays (``CdrAdmin`` combines it with the list)."""

    fieldsets_public = FIELDSETS_PUBLIC
    fieldsets_billing = FIELDSETS_BILLING

    def get_fieldsets(self, request: HttpRequest, obj: Cdr | None = None) -> Any:
        if can_see_billing(request):
            # Billing right after Routing, before the Call-ID and the internal fields.
            head, tail = self.fieldsets_public[:4], self.fieldsets_public[4:]
            return (*head, *self.fieldsets_billing, *tail)
        return self.fieldsets_public

    def get_readonly_fields(self, request: HttpRequest, obj: Cdr | None = None) -> tuple[str, ...]:
        # Everything is read-only (no change permission); the callables must be listed so
        # that the fieldsets may name them.
        return (
            "public_id",
            *TIMING_DISPLAYS,
            "same_call",
            *shown_names(*SHOWN_FIELDS),
        )

    @admin.display(description="Public id")
    def public_id(self, obj: Cdr) -> str:
        return format_html("<code>{}</code>", encode_id(obj.pk))

    @admin.display(description="Started")
    def started_detail(self, obj: Cdr) -> str:
        return when(obj.started_at)

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


for _name in SHOWN_FIELDS:
    setattr(CdrDetailAdmin, f"{_name}_shown", shown_field(_name))
for _name in LATER_TIMESTAMPS:
    setattr(CdrDetailAdmin, _name.removesuffix("_at"), since_start(_name))
