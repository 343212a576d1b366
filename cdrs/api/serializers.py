"""Output shapes of a CDR, and the DRF serializers that describe them in the OpenAPI schema.

The hot paths shape ``.values()`` dicts with ``cdr_item`` (no per-field serializer objects);
the DRF serializers below are generated from the same field spine, so docs and responses
cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from cdrs.fields import CDR_FIELDS, CdrField, Kind
from cdrs.ids import encode_id


def cdr_item(row: dict[str, Any]) -> dict[str, Any]:
    """The wire form of a row from ``selectors`` (timestamps already RFC 3339 text).

    Rows from selectors are fresh dicts, so the id is replaced in place (no copy per row).
    """
    row["id"] = encode_id(row["id"])
    return row


# --- OpenAPI descriptions (schema only) ---------------------------------------------------


def _schema_field(f: CdrField) -> serializers.Field:
    help_text = {
        "id": "Public id: base64 of the decimal 64-bit id, e.g. NzAwNTUxOTA5NzczMTQ4MTYw.",
        "cost": "Exact decimal (never a float); null when not rated. Billing scope only.",
        "billed_account": "Billing scope only.",
    }.get(f.name, "")
    kw: dict[str, Any] = {"help_text": help_text, "required": f.required}
    if f.kind is Kind.ID:
        return serializers.CharField(required=False, help_text=help_text)
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
    return serializers.DecimalField(
        max_digits=15, decimal_places=6, allow_null=True, coerce_to_string=False, **kw
    )


def _make(name: str, fields: list[CdrField], doc: str) -> type[serializers.Serializer]:
    attrs: dict[str, Any] = {f.name: _schema_field(f) for f in fields}
    attrs["__doc__"] = doc
    return type(name, (serializers.Serializer,), attrs)


CdrListItemSerializer = _make(
    "CdrListItem", [f for f in CDR_FIELDS if not f.private], "A CDR as listed."
)
CdrDetailSerializer = _make(
    "CdrDetail",
    list(CDR_FIELDS),
    "A CDR in full; cost and billed_account only for tokens with the billing scope.",
)
CdrInputSerializer = _make("CdrInput", list(CDR_FIELDS), "A CDR to ingest; id is optional.")


class CdrListResponseSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="CDRs matching the query; -1 with count=false.")
    items = CdrListItemSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True, help_text="Opaque; null on the last page.")


class CdrDetailResponseSerializer(serializers.Serializer):
    items = CdrDetailSerializer(many=True)


class IngestBatchSerializer(serializers.Serializer):
    items = CdrInputSerializer(many=True)


class IngestResponseSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    ids = serializers.ListField(child=serializers.CharField())


class ErrorItemSerializer(serializers.Serializer):
    code = serializers.ChoiceField(
        choices=[
            "UNAUTHORIZED",
            "FORBIDDEN",
            "NOT_FOUND",
            "VALIDATE_FAILED",
            "THROTTLED",
            "SERVICE_UNAVAILABLE",
            "UNKNOWN",
        ]
    )
    message = serializers.CharField()
    detail = serializers.DictField()


class ErrorResponseSerializer(serializers.Serializer):
    errors = ErrorItemSerializer(many=True)  # type: ignore[assignment]
