"""Validation of incoming CDRs (API ingest and import), driven by the field spine.

Hand-written rather than a DRF serializer: ingest must validate thousands of CDRs a second
per worker, and a 25-field ModelSerializer costs about a millisecond per item. The DRF
serializer used for the OpenAPI schema is generated from the same spine (cdrs.api.serializers).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from cdrs.fields import (
    CDR_FIELDS,
    COST_DECIMAL_PLACES,
    COST_MAX_DIGITS,
    FIELDS_BY_NAME,
    CdrField,
    Kind,
)
from cdrs.ids import SNOWFLAKE_MAX_TIME, InvalidId, decode_id
from cdrs.values import (
    NUMBER_MAX_DIGITS,
    format_ts,
    parse_decimal,
    parse_integer,
    parse_rfc3339,
)

# Model columns written on insert, in a fixed order (the CSV/COPY column order too).
INSERT_COLUMNS: tuple[str, ...] = (*(f.name for f in CDR_FIELDS), "natural_key")

# The accepted started_at range (README, "Hostile input"): from the Unix epoch to the last
# second a snowflake id can encode, with or without an id, so every stored CDR could also
# have been sent without one.
STARTED_AT_MIN: Final = datetime(1970, 1, 1, tzinfo=UTC)
STARTED_AT_MAX: Final = SNOWFLAKE_MAX_TIME
# Lone surrogates (JSON "\ud800") are not characters: UTF-8 cannot encode them, so neither
# database can store them.
_SURROGATE_RE: Final = re.compile("[\ud800-\udfff]")


class CdrInvalid(ValueError):
    """One CDR failed validation: ``errors`` maps field name to message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def natural_key(call_id: str, started_at: datetime, caller: str, callee: str) -> str:
    """Hash (32 hex digits, stored as a UUID) of the fields that recognise a re-sent CDR.

    Validated strings never contain NUL, so NUL separators make the encoding unambiguous.
    Hex rather than uuid.UUID: building UUID objects was a quarter of import validation.
    """
    return natural_key_of_text(call_id, started_at.isoformat(), caller, callee)


def natural_key_of_text(call_id: str, started_iso: str, caller: str, callee: str) -> str:
    """``natural_key`` with started_at given as its ``isoformat()`` (the CSV fast path has
    the text already)."""
    raw = "\0".join((call_id, started_iso, caller, callee)).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _string(f: CdrField, value: Any, text: bool) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if not value.isascii() and _SURROGATE_RE.search(value):
        raise ValueError("must not contain lone surrogates (not valid Unicode text)")
    assert f.max_length is not None
    if len(value) > f.max_length:
        raise ValueError(f"longer than {f.max_length} characters")
    return value


def _timestamp(f: CdrField, value: Any, text: bool) -> datetime | None:
    if value is None or (text and value == ""):
        if f.required:
            raise ValueError("is required")
        return None
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    # Stored in whole seconds, the precision the contract renders: what a client sees is
    # exactly what filters, orders and de-duplicates.
    parsed = parse_rfc3339(value).replace(microsecond=0)
    if f.name == "started_at" and not STARTED_AT_MIN <= parsed <= STARTED_AT_MAX:
        raise ValueError(
            f"must be between {format_ts(STARTED_AT_MIN)} and {format_ts(STARTED_AT_MAX)}"
        )
    return parsed


def _enum(f: CdrField, value: Any, text: bool) -> str:
    if value is None or (text and value == "" and "" in f.choices):
        if f.required:
            raise ValueError("is required")
        return ""
    if not isinstance(value, str) or value not in f.choices:
        shown = ", ".join(c for c in f.choices if c)
        raise ValueError(f"must be one of {shown}")
    return value


def _integer(f: CdrField, value: Any, text: bool) -> int:
    if value is None or (text and value == ""):
        return 0
    if text and isinstance(value, str):
        try:
            value = parse_integer(value.strip())
        except ValueError:
            raise ValueError("must be an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        # An integral decimal (60.0, 6e1) is an integer. The magnitude is checked before
        # int(): int(Decimal("1e1000000")) takes most of a minute.
        if (
            isinstance(value, Decimal)
            and value.is_finite()
            and value.adjusted() < NUMBER_MAX_DIGITS
            and value == value.to_integral_value()
        ):
            value = int(value)
        else:
            raise ValueError("must be an integer")
    assert f.min_value is not None and f.max_value is not None
    if not f.min_value <= value <= f.max_value:
        raise ValueError(f"must be between {f.min_value} and {f.max_value}")
    return value


def _decimal(f: CdrField, value: Any, text: bool) -> Decimal | None:
    if value is None or (text and value == ""):
        return None
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, str) and text:
        try:
            value = parse_decimal(value.strip())
        except ValueError:
            raise ValueError("must be a decimal number") from None
    if isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError("must be a number")
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    places = max(0, -exponent)
    whole_digits = len(digits) + exponent
    if places > COST_DECIMAL_PLACES:
        raise ValueError(f"at most {COST_DECIMAL_PLACES} decimal places")
    if max(whole_digits, 0) > COST_MAX_DIGITS - COST_DECIMAL_PLACES:
        raise ValueError(f"at most {COST_MAX_DIGITS - COST_DECIMAL_PLACES} digits before the point")
    return value


_CHECKERS = {
    Kind.STRING: _string,
    Kind.TIMESTAMP: _timestamp,
    Kind.ENUM: _enum,
    Kind.INTEGER: _integer,
    Kind.DECIMAL: _decimal,
}
_KNOWN = frozenset(FIELDS_BY_NAME)
# (name, is_string, max_length, checker, field) for every field but id, in spine order.
_PLAN = tuple(
    (f.name, f.kind is Kind.STRING, f.max_length or 0, _CHECKERS[f.kind], f)
    for f in CDR_FIELDS
    if f.kind is not Kind.ID
)


def validate_cdr(obj: Any, *, text: bool = False) -> dict[str, Any]:
    """A clean row (model field names, id None when absent) or CdrInvalid.

    ``text=True`` is for CSV: every value is a string and an empty cell means null.
    Unknown fields are errors; missing optional fields take their empty value.
    """
    if not isinstance(obj, dict):
        raise CdrInvalid({"item": "must be a JSON object"})
    errors: dict[str, str] = {}
    if obj.keys() - _KNOWN:
        for key in obj.keys() - _KNOWN:
            # Echoed back as a key: escaped, so no control character reaches a response.
            errors[str(key).encode("unicode_escape").decode("ascii")[:64]] = "unknown field"
    row: dict[str, Any] = {}
    raw_id = obj.get("id")
    if raw_id is None or (text and raw_id == ""):
        row["id"] = None
    else:
        try:
            if not isinstance(raw_id, str):
                raise InvalidId("must be a string")
            row["id"] = decode_id(raw_id)
        except InvalidId:
            errors["id"] = "must be a public CDR id (base64 of a positive 64-bit decimal)"
    get = obj.get
    for name, is_string, limit, checker, f in _PLAN:
        value = get(name)
        # Inline fast path for valid ASCII strings (most fields): import validates ~10^5
        # rows/s. Anything else takes the full check, which also looks for lone surrogates.
        if (
            is_string
            and type(value) is str
            and len(value) <= limit
            and value.isascii()
            and "\x00" not in value
        ):
            row[name] = value
            continue
        if value is None and f.required and name not in obj:
            errors[name] = "is required"
            continue
        try:
            row[name] = checker(f, value, text)
        except ValueError as exc:
            errors[name] = str(exc)
    if errors:
        raise CdrInvalid(errors)
    row["natural_key"] = natural_key(
        row["call_id"], row["started_at"], row["caller"], row["callee"]
    )
    return row


def validate_batch(
    items: Sequence[Any], *, text: bool = False
) -> tuple[list[dict[str, Any]], list[tuple[int, dict[str, str]]]]:
    """Every item through ``validate_cdr``, not stopping at the first bad one.

    Returns the clean rows in order and, for each invalid item, its index and its errors.
    """
    rows: list[dict[str, Any]] = []
    bad: list[tuple[int, dict[str, str]]] = []
    for index, item in enumerate(items):
        try:
            rows.append(validate_cdr(item, text=text))
        except CdrInvalid as exc:
            bad.append((index, exc.errors))
    return rows, bad
