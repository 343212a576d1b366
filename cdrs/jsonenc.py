"""JSON encoding with exact decimals, at orjson speed.

orjson (and the stdlib) can only write a Decimal through a float or as a string; the
contract wants ``cost`` as a JSON number with its exact stored digits. So a Decimal is
written as a marked string (NUL + "DEC:" + its digits) and the quotes and mark are then
taken off. The mark cannot come from data: stored strings never contain NUL (validation
rejects it; PostgreSQL cannot store it), and the pattern only matches a whole string value.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson

_OPTS = orjson.OPT_NON_STR_KEYS
_MARK = "\x00DEC:"
_MARKED = re.compile(rb'(?<=[:,\[])"\\u0000DEC:(-?[0-9]+(?:\.[0-9]+)?)"')


def _default(value: Any) -> str:
    if isinstance(value, Decimal) and value.is_finite():
        return _MARK + format(value, "f")
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON bytes for ``obj``; Decimals become numbers with their exact digits."""
    out = orjson.dumps(obj, default=_default, option=_OPTS)
    if b"\\u0000DEC:" in out:
        out = _MARKED.sub(rb"\1", out)
    return out
