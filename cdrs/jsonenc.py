"""JSON encoding with exact decimals: orjson for speed, Decimal written as its digits.

orjson (and the stdlib) can only write a Decimal through a float or as a string; the
contract wants ``cost`` as a JSON number with its exact stored digits. Values that hold a
Decimal are rare (the detail and export only), so those containers are assembled by hand
and everything else goes straight to orjson.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

_OPTS = orjson.OPT_NON_STR_KEYS


def _has_decimal(obj: Any) -> bool:
    if isinstance(obj, Decimal):
        return True
    if isinstance(obj, dict):
        return any(_has_decimal(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_decimal(v) for v in obj)
    return False


def _encode(obj: Any) -> bytes:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise TypeError("non-finite decimal")
        return format(obj, "f").encode("ascii")
    if isinstance(obj, dict):
        if not _has_decimal(obj):
            return orjson.dumps(obj, option=_OPTS)
        parts = [orjson.dumps(str(k)) + b":" + _encode(v) for k, v in obj.items()]
        return b"{" + b",".join(parts) + b"}"
    if isinstance(obj, list | tuple):
        if not _has_decimal(obj):
            return orjson.dumps(obj, option=_OPTS)
        return b"[" + b",".join(_encode(v) for v in obj) + b"]"
    return orjson.dumps(obj, option=_OPTS)


def dumps(obj: Any) -> bytes:
    """JSON bytes for ``obj``; Decimals become numbers with their exact digits."""
    try:
        return orjson.dumps(obj, option=_OPTS)  # orjson refuses Decimal: then the slow path
    except TypeError:
        return _encode(obj)
