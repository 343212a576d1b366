"""Parsing and formatting of wire values shared by the API, filters and import (pure)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

# Bounds on every number read from a client (JSON bodies, CSV cells, query options, filter
# literals), checked on the text before converting it. No CDR value needs more (cost has 15
# digits, duration 10), and without a bound a short text is a denial of service:
# int(Decimal("1e1000000")) takes most of a minute.
NUMBER_MAX_DIGITS: Final = 40
NUMBER_MAX_EXPONENT: Final = 40
_INTEGER_RE: Final = re.compile(r"[+-]?([0-9]+)", re.ASCII)
_DECIMAL_RE: Final = re.compile(
    r"[+-]?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?", re.ASCII
)

# RFC 3339 date-time: full date, "T" (or space, or lower-case t), time, optional fraction,
# and a mandatory offset (Z or +hh:mm). Anything looser is rejected, never guessed.
_RFC3339_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,  # \d is [0-9]: other scripts' digits are not RFC 3339
)


def _clip(text: str) -> str:
    return repr(text[:40] + "..." if len(text) > 40 else text)


def parse_integer(text: str) -> int:
    """The int of an ASCII decimal integer of at most NUMBER_MAX_DIGITS digits; else ValueError.

    ``int()`` alone would also take "٥", "1_000" or " 5 " and convert 4,300 digits.
    """
    match = _INTEGER_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not an integer: {_clip(text)}")
    if len(match.group(1)) > NUMBER_MAX_DIGITS:
        raise ValueError(f"integer {_clip(text)} has more than {NUMBER_MAX_DIGITS} digits")
    return int(text)


def parse_decimal(text: str) -> Decimal:
    """The Decimal of an ASCII decimal literal (``-12.5``, ``1e3``) within the number bounds.

    At most NUMBER_MAX_DIGITS digits and an exponent within ±NUMBER_MAX_EXPONENT; ValueError
    otherwise, before anything is converted.
    """
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a decimal number: {_clip(text)}")
    mantissa, exponent = match.group(1), match.group(2)
    if len(mantissa) - ("." in mantissa) > NUMBER_MAX_DIGITS:
        raise ValueError(f"number {_clip(text)} has more than {NUMBER_MAX_DIGITS} digits")
    if exponent is not None:
        magnitude = exponent.lstrip("+-").lstrip("0")
        if len(magnitude) > 3 or int(magnitude or "0") > NUMBER_MAX_EXPONENT:
            raise ValueError(f"number {_clip(text)} has an exponent beyond ±{NUMBER_MAX_EXPONENT}")
    return Decimal(text)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def loads_json(text: str) -> Any:
    """JSON from a client: decimals exact (never a float), every number bounded.

    ValueError (or RecursionError for absurd nesting) on invalid or out-of-bounds input.
    """
    return json.loads(
        text,
        parse_float=parse_decimal,
        parse_int=parse_integer,
        parse_constant=_reject_constant,
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
        and text.isascii()
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
        # In UTC, a time near either end of the calendar can fall outside it.
        return value.astimezone(UTC)
    except ValueError as exc:
        raise ValueError(f"not a valid date or time: {text[:40]!r}") from exc
    except OverflowError as exc:
        raise ValueError(f"out of range in UTC: {text[:40]!r}") from exc


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
