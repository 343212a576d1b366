"""Parsing and formatting of wire values shared by the API, filters and import (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

# RFC 3339 date-time: full date, "T" (or space, or lower-case t), time, optional fraction,
# and a mandatory offset (Z or +hh:mm). Anything looser is rejected, never guessed.
_RFC3339_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)


def parse_rfc3339(text: str) -> datetime:
    """An aware UTC datetime for an RFC 3339 string with any offset; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("expected an RFC 3339 timestamp string")
    # Fast path for the form this service writes (YYYY-MM-DDTHH:MM:SSZ): import speed.
    if (
        len(text) == 20
        and text[19] == "Z"
        and text[10] == "T"
        and text[4] == "-"
        and text[7] == "-"
        and text[13] == ":"
        and text[16] == ":"
        and text[:4].isdigit()
    ):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass  # the full path below says what is wrong
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text[:40]!r}")
    frac = match.group(7) or ""
    normalised = text[:10] + "T" + text[11:19] + frac[:7] + match.group(8).upper()
    normalised = normalised.replace("Z", "+00:00")
    try:
        value = datetime.fromisoformat(normalised)
    except ValueError as exc:
        raise ValueError(f"not a valid date or time: {text[:40]!r}") from exc
    return value.astimezone(UTC)


def format_ts(value: datetime | None) -> str | None:
    """RFC 3339 UTC with Z, second precision, as the contract renders every timestamp."""
    if value is None:
        return None
    if value.tzinfo is not None and value.utcoffset():
        value = value.astimezone(UTC)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )
