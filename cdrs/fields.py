"""The single list of CDR fields: the spine every other module reads.

Serializers, the filter and orderby allow-lists, the CSV header, the import validator and
the admin (a CDR's page, the billing columns and billing filters) all derive from
``CDR_FIELDS``, so adding a field is one edit here plus a model field and a migration (the
admin's change list keeps its chosen columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Kind(StrEnum):
    """How a field is typed on the wire and in the filter language."""

    ID = "id"
    STRING = "string"
    TIMESTAMP = "timestamp"
    ENUM = "enum"
    INTEGER = "integer"
    DECIMAL = "decimal"


DIRECTIONS: Final = (
    "INBOUND_CALL",
    "OUTBOUND_CALL",
    "EXTENSION_CALL",
    "INBOUND_OUTBOUND_CALL",
)
END_REASONS: Final = (
    "CALLER_DISCONNECTED",
    "CALLEE_DISCONNECTED",
    "BLIND_TRANSFER_COMPLETED",
    "CONSULT_TRANSFER_COMPLETED",
    "REPLACED",
    "REFERRED",
    "REDIRECTED",
    "CANCELLED",
)
# "" means "no reroute"; PortSIP's schema has no empty value, ours adds it (see API.md).
REROUTE_REASONS: Final = (
    "",
    "TRANSFER",
    "OVERFLOW",
    "CAPACITY_BLOCKED",
    "QUEUE_EXIT",
    "QUEUE_ABANDONED",
    "REDIRECT",
    "FORWARDING_UNCONDITIONAL",
    "FORWARDING_BUSY",
    "FORWARDING_NO_ANSWER",
    "FORWARDING_NOT_REACHABLE",
    "FORWARDING_EXCEPTION",
    "FORWARDING_LUNCH",
    "FORWARDING_BUSINESS_TRIP",
    "FORWARDING_AWAY",
    "FORWARDING_NIGHT_MODE",
)

# Limits from PortSIP's published schema and API.md.
STATUS_CODE_MAX: Final = 999
DURATION_MAX: Final = 2**31 - 1
COST_MAX_DIGITS: Final = 15  # 15 significant digits survive SQLite's REAL affinity exactly
COST_DECIMAL_PLACES: Final = 6


@dataclass(frozen=True, slots=True)
class CdrField:
    """One field of the CDR resource, as the API, filters, import and admin see it."""

    name: str
    kind: Kind
    max_length: int | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    private: bool = False  # only for tokens with the billing scope
    required: bool = False  # must be present on ingest/import
    orderable: bool = False
    searchable: bool = False  # part of the free-text `search`
    min_value: int | None = None
    max_value: int | None = None


def _s(
    name: str,
    max_length: int,
    *,
    orderable: bool = False,
    searchable: bool = False,
    private: bool = False,
) -> CdrField:
    return CdrField(
        name,
        Kind.STRING,
        max_length=max_length,
        orderable=orderable,
        searchable=searchable,
        private=private,
    )


# Order = the order of keys in every response (PortSIP's detail order).
CDR_FIELDS: Final[tuple[CdrField, ...]] = (
    CdrField("id", Kind.ID, orderable=True),
    _s("caller", 256, orderable=True, searchable=True),
    _s("caller_domain", 1024),
    _s("caller_display_name", 1024, searchable=True),
    _s("callee", 256, orderable=True, searchable=True),
    _s("callee_domain", 1024),
    _s("callee_display_name", 1024, searchable=True),
    CdrField("started_at", Kind.TIMESTAMP, required=True, orderable=True),
    CdrField("rang_at", Kind.TIMESTAMP, nullable=True),
    CdrField("answered_at", Kind.TIMESTAMP, nullable=True, orderable=True),
    CdrField("ended_at", Kind.TIMESTAMP, required=True, orderable=True),
    _s("call_id", 1024, searchable=True),
    CdrField("direction", Kind.ENUM, choices=DIRECTIONS, required=True),
    CdrField("end_reason", Kind.ENUM, choices=END_REASONS, required=True),
    CdrField("reroute_reason", Kind.ENUM, choices=REROUTE_REASONS),
    CdrField("status_code", Kind.INTEGER, orderable=True, min_value=0, max_value=STATUS_CODE_MAX),
    _s("destination", 1024, searchable=True),
    _s("outbound_caller_id", 64, searchable=True),
    _s("did_cid", 1024, searchable=True),
    _s("trunk", 1024),
    CdrField("duration", Kind.INTEGER, orderable=True, min_value=0, max_value=DURATION_MAX),
    CdrField("cost", Kind.DECIMAL, nullable=True, private=True),
    _s("billed_account", 1024, private=True),
    _s("service_number", 1024),
    _s("user_data", 8192),
)

FIELDS_BY_NAME: Final[dict[str, CdrField]] = {f.name: f for f in CDR_FIELDS}
ALL_FIELD_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in CDR_FIELDS)
PUBLIC_FIELD_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in CDR_FIELDS if not f.private)
PRIVATE_FIELD_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in CDR_FIELDS if f.private)
ORDERABLE_FIELD_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in CDR_FIELDS if f.orderable)
SEARCH_FIELD_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in CDR_FIELDS if f.searchable)
TIMESTAMP_FIELD_NAMES: Final[tuple[str, ...]] = tuple(
    f.name for f in CDR_FIELDS if f.kind is Kind.TIMESTAMP
)


def visible_field_names(*, billing: bool) -> tuple[str, ...]:
    """The fields a token sees in a detail or export: private ones only with billing."""
    return ALL_FIELD_NAMES if billing else PUBLIC_FIELD_NAMES
