"""Public CDR ids and snowflake generation (pure, no I/O).

The public id is the standard base64 (with ``=`` padding) of the decimal string of a
positive 64-bit integer: ``700551909773148160`` <-> ``NzAwNTUxOTA5NzczMTQ4MTYw``.

Snowflakes: milliseconds since 2000-01-01T00:00:00Z shifted left 22 bits, OR-ed with 22 low
bits that keep ids unique across processes and hosts. The low bits come from a database
sequence on PostgreSQL (see ``services.next_low_bits``); this module only does the maths.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Final

ID_MIN: Final = 1
ID_MAX: Final = 2**63 - 1  # PostgreSQL bigint
LOW_BITS: Final = 22
LOW_MASK: Final = (1 << LOW_BITS) - 1
SNOWFLAKE_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_SNOWFLAKE_EPOCH_MS: Final = int(SNOWFLAKE_EPOCH.timestamp() * 1000)
# The last whole second a snowflake can encode (2069-09-06T15:47:35Z): 41 bits of
# milliseconds above the 22 low bits fill a positive 64-bit integer.
SNOWFLAKE_MAX_TIME: Final = SNOWFLAKE_EPOCH + timedelta(seconds=(ID_MAX >> LOW_BITS) // 1000)

_B64_RE: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_DECIMAL_RE: Final = re.compile(rb"[1-9][0-9]{0,18}")
_DECIMAL_TEXT_RE: Final = re.compile(r"[1-9][0-9]{0,18}")  # ASCII digits only, not \d


class InvalidId(ValueError):
    """Raised when a public id is not the base64 of a decimal in 1..2^63-1."""


def encode_id(value: int) -> str:
    """Public form of an integer id."""
    if not ID_MIN <= value <= ID_MAX:
        raise InvalidId(f"id out of range: {value}")
    return base64.b64encode(str(value).encode("ascii")).decode("ascii")


def decode_id(public: str) -> int:
    """Integer id of a public id; accepts missing padding, rejects anything else."""
    if not isinstance(public, str) or len(public) > 40 or not _B64_RE.fullmatch(public):
        raise InvalidId("not a base64 string")
    stripped = public.rstrip("=")
    padded = stripped + "=" * (-len(stripped) % 4)
    if len(public) != len(stripped) and public != padded:
        raise InvalidId("wrong base64 padding")
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidId("not a base64 string") from exc
    # Canonical form only: re-encoding must give the same characters, so one CDR has one id.
    if base64.b64encode(raw).decode("ascii").rstrip("=") != stripped:
        raise InvalidId("not canonical base64")
    if not _DECIMAL_RE.fullmatch(raw):
        raise InvalidId("not the base64 of a positive decimal integer")
    value = int(raw)
    if value > ID_MAX:
        raise InvalidId("id out of range")
    return value


def decode_id_or_decimal(text: str) -> int:
    """``decode_id``, or the decimal spelling of PortSIP's newer REST guide (``"8781..."``).

    The two spellings cannot collide: a canonical base64 id is never all digits (the base64
    of an ASCII digit starts with ``M`` or ``N``).
    """
    if isinstance(text, str) and _DECIMAL_TEXT_RE.fullmatch(text):
        value = int(text)
        if value > ID_MAX:
            raise InvalidId("id out of range")
        return value
    return decode_id(text)


def snowflake(started_at: datetime, low_bits: int) -> int:
    """A time-ordered id for a CDR that arrived without one."""
    ms = int(started_at.timestamp() * 1000) - _SNOWFLAKE_EPOCH_MS
    if ms < 0:
        # CDRs from before 2000 still get a valid positive id; they just don't sort by time.
        ms = 0
    value = (ms << LOW_BITS) | (low_bits & LOW_MASK)
    if value > ID_MAX:
        raise InvalidId("started_at too far in the future for a snowflake id")
    return value or 1


def snowflake_time(value: int) -> datetime:
    """The time a snowflake was made from (meaningless for imported ids)."""
    ms = (value >> LOW_BITS) + _SNOWFLAKE_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
