"""The DRF serializers that describe a CDR's output shapes in the OpenAPI schema.

The hot paths shape ``.values()`` dicts with ``cdrs.wire.cdr_item`` (no per-field serializer
objects); the DRF serializers below are generated from the same field spine, so docs and
responses cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from cdrs.error_codes import ERROR_CODES
from cdrs.fields import CDR_FIELDS, COST_DECIMAL_PLACES, COST_MAX_DIGITS, CdrField, Kind

MAX_BATCH = 1000  # CDRs in one ingest request

# --- OpenAPI descriptions (schema only) ---------------------------------------------------

COST_DESCRIPTION = (
    "Exact decimal, never a float: a JSON number carrying the stored digits as they are "
    f"(at most {COST_MAX_DIGITS} digits, {COST_DECIMAL_PLACES} after the point; `0.1235` stays "
    "`0.1235`, trailing zeros allowed). Parse it as a decimal (e.g. Python's "
    "`json.loads(..., parse_float=Decimal)`, Java's `BigDecimal`), not as a double. "
    "Null when not rated. Billing scope only."
)


@extend_schema_field(
    {
        "type": "number",
        "format": "decimal",
        "nullable": True,
        "description": COST_DESCRIPTION,
        "exclusiveMaximum": True,
        "maximum": 10 ** (COST_MAX_DIGITS - COST_DECIMAL_PLACES),
        "exclusiveMinimum": True,
        "minimum": -(10 ** (COST_MAX_DIGITS - COST_DECIMAL_PLACES)),
    }
)
class ExactDecimalField(serializers.DecimalField):
    """``cost`` in the schema: a JSON number documented as an exact decimal."""


_HELP = {
    "id": "Public id: standard base64 of the decimal 64-bit id, e.g. "
    "`NzAwNTUxOTA5NzczMTQ4MTYw` for 700551909773148160. Opaque to clients.",
    "billed_account": "Billing scope only.",
    "started_at": "RFC 3339 UTC, second precision.",
    "ended_at": "RFC 3339 UTC, second precision.",
    "rang_at": "Null when the call never rang.",
    "answered_at": "Null when the call was never answered.",
    "status_code": "SIP final status; 0 = none.",
    "duration": "Seconds.",
    "call_id": "SIP Call-ID; several CDRs (legs, transfers) may share one.",
}


def _schema_field(f: CdrField, *, output: bool) -> serializers.Field:
    """One CDR field; ``output``: as responses carry it (every public key always present)."""
    help_text = _HELP.get(f.name, "")
    required = (not f.private) if output else f.required
    kw: dict[str, Any] = {"help_text": help_text, "required": required}
    if f.kind is Kind.ID:
        if not output:
            kw["help_text"] += " Optional: without one, a time-ordered id is assigned."
        return serializers.CharField(**kw)
    if f.kind is Kind.STRING:
        assert f.max_length is not None
        return serializers.CharField(max_length=f.max_length, allow_blank=True, **kw)
    if f.kind is Kind.TIMESTAMP:
        return serializers.DateTimeField(allow_null=f.nullable, **kw)
    if f.kind is Kind.ENUM:
        return serializers.ChoiceField(choices=list(f.choices), allow_blank="" in f.choices, **kw)
    if f.kind is Kind.INTEGER:
        assert f.min_value is not None and f.max_value is not None
        return serializers.IntegerField(min_value=f.min_value, max_value=f.max_value, **kw)
    kw.pop("help_text")  # the schema override above carries the description
    return ExactDecimalField(
        max_digits=COST_MAX_DIGITS,
        decimal_places=COST_DECIMAL_PLACES,
        allow_null=True,
        coerce_to_string=False,
        **kw,
    )


def _make(
    name: str, fields: list[CdrField], doc: str, *, output: bool
) -> type[serializers.Serializer]:
    attrs: dict[str, Any] = {f.name: _schema_field(f, output=output) for f in fields}
    attrs["__doc__"] = doc
    return type(name, (serializers.Serializer,), attrs)


CdrListItemSerializer = _make(
    "CdrListItem",
    [f for f in CDR_FIELDS if not f.private],
    "A CDR as listed: every field but cost and billed_account.",
    output=True,
)
CdrDetailSerializer = _make(
    "CdrDetail",
    list(CDR_FIELDS),
    "A CDR in full; cost and billed_account only for tokens with the billing scope.",
    output=True,
)
CdrInputSerializer = _make(
    "CdrInput", list(CDR_FIELDS), "A CDR to ingest; id is optional.", output=False
)


@extend_schema_serializer(many=False)  # the list's body is one object, not an array
class CdrListResponseSerializer(serializers.Serializer):
    count = serializers.IntegerField(
        min_value=-1, help_text="CDRs matching the query (not the page size); -1 with count=false."
    )
    items = CdrListItemSerializer(many=True)
    next_cursor = serializers.CharField(
        allow_null=True,
        help_text="Pass back as `cursor` (same filters and orderby) for the next page; "
        "null on the last page.",
    )


class CdrDetailResponseSerializer(serializers.Serializer):
    items = CdrDetailSerializer(many=True, help_text="Exactly one CDR.")


class IngestBatchSerializer(serializers.Serializer):
    # many=True hands min_length/max_length to the ListSerializer (the stubs miss them).
    items = CdrInputSerializer(many=True, min_length=1, max_length=MAX_BATCH)  # type: ignore[call-arg]


class IngestResponseSerializer(serializers.Serializer):
    created = serializers.IntegerField(min_value=0, help_text="CDRs stored by this request.")
    duplicates = serializers.IntegerField(
        min_value=0,
        help_text="CDRs already stored (same id, or same call_id + started_at + "
        "caller + callee), or repeated within the request.",
    )
    ids = serializers.ListField(
        child=serializers.CharField(),
        help_text="The id of every given CDR, in input order (a duplicate's stored id).",
    )


class ErrorItemSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=list(ERROR_CODES))
    message = serializers.CharField(help_text="What was wrong, naming the option or field.")
    detail = serializers.DictField(help_text="Machine-readable details; may be empty.")


class ErrorResponseSerializer(serializers.Serializer):
    errors = ErrorItemSerializer(many=True)  # type: ignore[assignment]
