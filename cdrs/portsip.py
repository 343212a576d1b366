"""PortSIP "Push CDR" webhook events -> CDRs in our wire form (pure: no I/O, no Django models).

PortSIP posts one JSON object per event to a tenant's "CDR Events" URL. Only ``call_cdr``
carries a completed call; the other types are acknowledged and ignored. The reference for
every key and value below is ``docs/portsip-push-cdr.md`` (§4, §7); where PortSIP's
documents disagree, every documented variant is accepted:

- ids (``cdr_id``) and Unix-second timestamps as decimal strings or JSON numbers; ``"0"``
  means "never happened" (answered_at and rang_at become null);
- every numeric field (``status_code``, ``talk_duration``) as a number or a string;
- ``did`` or ``did_cid``, ``ended_reason`` or ``end_reason``;
- both direction vocabularies (``in``/``inbound``, ...) and every end-reason spelling
  (``caller_disconnect``/``caller_disconnected``, ...), case-insensitively.

``map_call_cdr`` returns a dict that ``cdrs.validation.validate_cdr`` then checks like any
other CDR, so the webhook shares the contract's limits with ``POST /api/cdrs``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from cdrs.ids import ID_MAX, encode_id
from cdrs.values import format_ts

CALL_CDR: Final = "call_cdr"
# Sent to the CDR URL too, but carry no completed CDR: answered 200 and dropped (§3).
IGNORED_EVENT_TYPES: Final = frozenset(
    {
        "call_start",
        "call_update_info",
        "cdr_target_add",
        "cdr_target_ringing",
        "cdr_target_answer",
        "cdr_target_noanswer",
        "cdr_target_fail",
        "cdr_target_end",
    }
)

# §7.1: the webhook's short values, the July 2026 doc edit's long ones, and our (REST) enum
# itself. Keys are lower case; input is lower-cased before the lookup.
DIRECTIONS: Final[dict[str, str]] = {
    "ext": "EXTENSION_CALL",
    "internal": "EXTENSION_CALL",
    "extension_call": "EXTENSION_CALL",
    "in": "INBOUND_CALL",
    "inbound": "INBOUND_CALL",
    "inbound_call": "INBOUND_CALL",
    "out": "OUTBOUND_CALL",
    "outbound": "OUTBOUND_CALL",
    "outbound_call": "OUTBOUND_CALL",
    "in2out": "INBOUND_OUTBOUND_CALL",
    "inbound_outbound": "INBOUND_OUTBOUND_CALL",
    "inbound_outbound_call": "INBOUND_OUTBOUND_CALL",
}

# §7.2: the examples' short forms, the tables' "-ed" forms, and the REST enum (whose own
# guide also shows "CALLER_DISCONNECT"). "attended" is PortSIP's word for "consult".
END_REASONS: Final[dict[str, str]] = {
    "caller_disconnect": "CALLER_DISCONNECTED",
    "caller_disconnected": "CALLER_DISCONNECTED",
    "callee_disconnect": "CALLEE_DISCONNECTED",
    "callee_disconnected": "CALLEE_DISCONNECTED",
    "blind_transfer_complete": "BLIND_TRANSFER_COMPLETED",
    "blind_transfer_completed": "BLIND_TRANSFER_COMPLETED",
    "attended_transfer_complete": "CONSULT_TRANSFER_COMPLETED",
    "attended_transfer_completed": "CONSULT_TRANSFER_COMPLETED",
    "consult_transfer_complete": "CONSULT_TRANSFER_COMPLETED",
    "consult_transfer_completed": "CONSULT_TRANSFER_COMPLETED",
    "replaced": "REPLACED",
    "referred": "REFERRED",
    "redirected": "REDIRECTED",
    "cancelled": "CANCELLED",
}
# PortSIP's "unknown reason": the string "None", an empty string, or no key at all. Our
# contract has no empty end_reason, so (see unknown_end_reason) a call that was never
# answered is stored as CANCELLED -- it ended before anyone answered, and status_code keeps
# the failure (404, 408, 486...) -- while an answered call with no reason is dead-lettered
# rather than given an invented one.
UNKNOWN_END_REASONS: Final = frozenset({"none", ""})
UNANSWERED_END_REASON: Final = "CANCELLED"

# Same key, several documented names: the first one present (and not empty) wins.
DID_KEYS: Final = ("did", "did_cid")
END_REASON_KEYS: Final = ("ended_reason", "end_reason")

# Our field <- the webhook key copied as it is (strings; numbers are turned into strings).
COPIED: Final[dict[str, str]] = {
    "call_id": "call_id",
    "caller": "caller",
    "caller_domain": "caller_domain",
    "caller_display_name": "caller_display_name",
    "callee": "callee",
    "callee_domain": "callee_domain",
    # Not in call_cdr (only in call_start); taken if a PBX ever sends it.
    "callee_display_name": "callee_display_name",
    "outbound_caller_id": "outbound_caller_id",
    "trunk": "trunk_name",
    "user_data": "user_data",
}
# Our field <- Unix seconds (string or number); "0" is null.
TIMESTAMPS: Final[dict[str, str]] = {
    "started_at": "start_time",
    "rang_at": "ring_time",
    "answered_at": "answered_time",
    "ended_at": "ended_time",
}
# Our field <- integer (string or number).
INTEGERS: Final[dict[str, str]] = {
    "status_code": "status_code",
    "duration": "talk_duration",
}
# Since v22.2.11 REST-started calls to a queue or ring group carry
# "user-data=abc;service-number=1111" in user_data (§4).
SERVICE_NUMBER_KEY: Final = "service-number"
# Largest Unix time our timestamps hold (9999-12-31T23:59:59Z); anything larger is probably
# milliseconds, which PortSIP never sends, and is rejected rather than guessed at.
_MAX_UNIX_SECONDS: Final = 253402300799


class PortsipMappingError(ValueError):
    """A call_cdr event that cannot be turned into a CDR: ``errors`` maps key to message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def event_type_of(event: dict[str, Any]) -> str | None:
    """The event's type, normalised (``" Call_CDR "`` -> ``"call_cdr"``); None if absent."""
    value = event.get("event_type")
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().lower()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a number sent as a JSON number
    raise ValueError("must be a string")


def _integer(value: Any) -> int | None:
    """A whole number out of ``21``, ``"21"``, ``21.0``; None for ``""``/null."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, str):
        stripped = value.strip()
        digits = stripped[1:] if stripped[:1] in "+-" else stripped
        if digits.isascii() and digits.isdigit() and len(digits) <= 20:
            return int(stripped)
    raise ValueError("must be a whole number (a JSON number or a decimal string)")


def _timestamp(value: Any) -> str | None:
    """RFC 3339 UTC for Unix seconds; None for ``"0"``, ``0``, ``""`` or null."""
    seconds = _integer(value)
    if seconds is None or seconds == 0:
        return None
    if not 0 < seconds <= _MAX_UNIX_SECONDS:
        raise ValueError("must be Unix seconds between 1 and 253402300799")
    return format_ts(datetime.fromtimestamp(seconds, tz=UTC))


def _first(event: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = event.get(key)
        if value is not None and value != "":
            return value
    return None


def _public_id(value: Any) -> str | None:
    """Our public id for PortSIP's decimal ``cdr_id``; None when there is none."""
    number = _integer(value)
    if number is None or number == 0:  # absent from both call_cdr examples (§9.1)
        return None
    if not 1 <= number <= ID_MAX:
        raise ValueError("must be a positive 64-bit integer")
    return encode_id(number)


def _service_number(user_data: str) -> str:
    for part in user_data.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == SERVICE_NUMBER_KEY:
            return value.strip()
    return ""


def unknown_end_reason(answered_at: str | None) -> str:
    """The end_reason for a call PortSIP sent without one (see UNKNOWN_END_REASONS)."""
    if answered_at is None:
        return UNANSWERED_END_REASON
    raise ValueError(
        "PortSIP sent no end reason ('None') for an answered call, and the contract has no "
        "value for an unknown end reason"
    )


def map_call_cdr(event: dict[str, Any]) -> dict[str, Any]:
    """The CDR (wire form, for ``validate_cdr``) a ``call_cdr`` event describes.

    Keys we have no field for (session_id, tenant_id, tenant_name, call_status,
    ring_duration, call_targets, and any key PortSIP adds later) are ignored.
    """
    errors: dict[str, str] = {}
    cdr: dict[str, Any] = {}

    def put(field: str, key: str, convert: Any, value: Any) -> None:
        try:
            cdr[field] = convert(value)
        except ValueError as exc:
            errors[key] = str(exc)

    put("id", "cdr_id", _public_id, event.get("cdr_id"))
    if cdr.get("id") is None:
        cdr.pop("id", None)  # validate_cdr and cdr_ingest assign a snowflake id
    for field, key in COPIED.items():
        put(field, key, _text, event.get(key))
    put("did_cid", "did", _text, _first(event, DID_KEYS))
    for field, key in TIMESTAMPS.items():
        put(field, key, _timestamp, event.get(key))
    for field, key in INTEGERS.items():
        put(field, key, lambda v: _integer(v) or 0, event.get(key))

    direction = event.get("direction")
    if direction is None:
        errors["direction"] = "is required"
    elif not isinstance(direction, str) or direction.strip().lower() not in DIRECTIONS:
        errors["direction"] = "unknown value; expected one of " + ", ".join(DIRECTIONS)
    else:
        cdr["direction"] = DIRECTIONS[direction.strip().lower()]

    reason = _first(event, END_REASON_KEYS)
    reason_key = next((k for k in END_REASON_KEYS if event.get(k) == reason), "ended_reason")
    if reason is not None and not isinstance(reason, str):
        errors[reason_key] = "must be a string"
    elif reason is None or reason.strip().lower() in UNKNOWN_END_REASONS:
        if "answered_at" in cdr:
            put("end_reason", reason_key, unknown_end_reason, cdr["answered_at"])
    elif reason.strip().lower() in END_REASONS:
        cdr["end_reason"] = END_REASONS[reason.strip().lower()]
    else:
        errors[reason_key] = "unknown value; expected one of None, " + ", ".join(END_REASONS)

    if isinstance(cdr.get("user_data"), str):
        cdr["service_number"] = _service_number(cdr["user_data"])
    if errors:
        raise PortsipMappingError(errors)
    return cdr
