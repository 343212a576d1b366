"""Opaque, signed keyset cursors (pure: no database access).

A cursor carries the ordering values and id of the last row of a page, plus a fingerprint
of the filters and ordering it belongs to. It is signed with Django's signing (keyed by
SECRET_KEY), so a client can neither forge a position nor reuse a cursor with other filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core import signing
from django.db.models import Q

from cdrs.fields import FIELDS_BY_NAME, Kind
from cdrs.query.orderby import OrderTerm
from cdrs.values import parse_rfc3339

_SALT = "cdrs.cursor.v1"


class CursorError(ValueError):
    pass


def _wire(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _unwire(field: str, value: Any) -> Any:
    if value is None:
        return None
    kind = FIELDS_BY_NAME[field].kind
    if kind is Kind.TIMESTAMP:
        return parse_rfc3339(value)
    if kind in (Kind.INTEGER, Kind.ID):
        if not isinstance(value, int):
            raise CursorError("corrupt cursor")
        return value
    return value


def encode_cursor(fingerprint: str, order: tuple[OrderTerm, ...], row: Mapping[str, Any]) -> str:
    """A cursor pointing just after ``row`` (which holds every ordering field)."""
    return signing.dumps(
        {"f": fingerprint, "v": [_wire(row[t.field]) for t in order]},
        salt=_SALT,
        compress=True,
    )


def decode_cursor(text: str, fingerprint: str, order: tuple[OrderTerm, ...]) -> list[Any]:
    """The ordering values a cursor points after; CursorError if forged or mismatched."""
    if len(text) > 4096:
        raise CursorError("cursor is too long")
    try:
        payload = signing.loads(text, salt=_SALT)
    except signing.BadSignature as exc:
        raise CursorError("invalid cursor (altered, or not issued by this service)") from exc
    if not isinstance(payload, dict) or payload.get("f") != fingerprint:
        raise CursorError(
            "cursor belongs to a different query: use it with the same filter, search, "
            "plain filters and orderby as the page that returned it"
        )
    values = payload.get("v")
    if not isinstance(values, list) or len(values) != len(order):
        raise CursorError("corrupt cursor")
    try:
        return [_unwire(t.field, v) for t, v in zip(order, values, strict=True)]
    except (ValueError, TypeError) as exc:
        raise CursorError("corrupt cursor") from exc


def keyset_q(order: tuple[OrderTerm, ...], values: list[Any]) -> Q:
    """Rows strictly after the position ``values`` in ``order`` (NULLs sort last).

    Expanded as OR over i of (terms before i equal AND term i after). The first term also
    gets a redundant bound (``started_at <= x`` for the default order) so PostgreSQL turns
    the keyset into an index range scan that starts at the cursor instead of a filter.
    """
    result = Q(pk__in=[])
    equal_so_far = Q()
    for term, value in zip(order, values, strict=True):
        f = term.field
        if value is None:
            after = Q(pk__in=[])  # NULLs are last: nothing sorts after NULL in this term
            equal = Q(**{f"{f}__isnull": True})
        else:
            after = Q(**{f"{f}__{'lt' if term.desc else 'gt'}": value})
            if term.nullable:
                after |= Q(**{f"{f}__isnull": True})
            equal = Q(**{f: value})
        result |= equal_so_far & after
        equal_so_far &= equal
    first, first_value = order[0], values[0]
    if first_value is not None and not first.nullable:
        bound = Q(**{f"{first.field}__{'lte' if first.desc else 'gte'}": first_value})
        return bound & result
    return result
