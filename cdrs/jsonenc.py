"""JSON encoding with exact decimals, at orjson speed.

orjson (and the stdlib) can only write a Decimal through a float or as a string; the
contract wants ``cost`` as a JSON number with its exact stored digits. So a Decimal is
handed back to orjson as an ``orjson.Fragment``: already-serialized JSON that orjson copies
into the output as is. Only a finite Decimal becomes a fragment, and its text
(``format(value, "f")``: an optional minus, digits, an optional point and digits) is always
a valid JSON number, so no input can change the structure of the output. (An earlier
version marked decimals inside strings and spliced the marks out afterwards; a string
that began with the mark, such as an echoed query option name, could break the JSON.)
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

_OPTS = orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON bytes for ``obj``; Decimals become numbers with their exact digits."""
    return orjson.dumps(obj, default=_default, option=_OPTS)
