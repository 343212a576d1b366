"""JSON encoding with exact decimals, at orjson speed.

orjson (and the stdlib) can only write a Decimal through a float or as a string; the
contract wants ``cost`` as a JSON number with its exact stored digits. So a Decimal is
written as a marked string (NUL + "DEC:" + its digits) and the quotes and mark are then
taken off. The mark cannot come from data: stored strings never contain NUL (validation
rejects it; PostgreSQL cannot store it), and the pattern only matches a whole string value.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

_OPTS = orjson.OPT_NON_STR_KEYS
_MARK = "\x00DEC:"
_MARKED_OPEN = b'"\\u0000DEC:'  # how orjson writes the start of a marked string


def _default(value: Any) -> str:
    if isinstance(value, Decimal) and value.is_finite():
        return _MARK + format(value, "f")
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON bytes for ``obj``; Decimals become numbers with their exact digits."""
    out = orjson.dumps(obj, default=_default, option=_OPTS)
    start = out.find(_MARKED_OPEN)
    while start >= 0:  # usually once (cost); plain slicing is several times faster than re
        end = out.index(b'"', start + len(_MARKED_OPEN))
        if out[start - 1 : start] in (b":", b",", b"["):
            out = out[:start] + out[start + len(_MARKED_OPEN) : end] + out[end + 1 :]
            start = out.find(_MARKED_OPEN, start)
        else:
            start = out.find(_MARKED_OPEN, end)
    return out
