"""``orderby``: ``field [asc|desc], ...`` over the contract's allow-list (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdrs.fields import FIELDS_BY_NAME, ORDERABLE_FIELD_NAMES

MAX_TERMS = 8
_TERM_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)(?:\s+([A-Za-z]+))?\s*")


class OrderbyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class OrderTerm:
    field: str
    desc: bool

    @property
    def nullable(self) -> bool:
        return FIELDS_BY_NAME[self.field].nullable

    def __str__(self) -> str:
        return f"{self.field} {'desc' if self.desc else 'asc'}"


DEFAULT_ORDER: tuple[OrderTerm, ...] = (OrderTerm("started_at", True), OrderTerm("id", True))


def parse_orderby(text: str | None) -> tuple[OrderTerm, ...]:
    """Terms ending with ``id`` (ties broken by id in the last term's direction)."""
    if text is None:
        return DEFAULT_ORDER
    if not text.strip():
        raise OrderbyError("must name at least one field")
    raw_terms = text.split(",")
    if len(raw_terms) > MAX_TERMS:
        raise OrderbyError(f"at most {MAX_TERMS} fields")
    terms: list[OrderTerm] = []
    for raw in raw_terms:
        match = _TERM_RE.fullmatch(raw)
        if match is None:
            raise OrderbyError(f"expected 'field [asc|desc]', got {raw.strip()[:40]!r}")
        name, direction = match.group(1), (match.group(2) or "asc").lower()
        if name not in ORDERABLE_FIELD_NAMES:
            allowed = ", ".join(ORDERABLE_FIELD_NAMES)
            raise OrderbyError(f"cannot order by {name[:40]!r} (allowed: {allowed})")
        if direction not in ("asc", "desc"):
            raise OrderbyError(f"direction must be asc or desc, got {direction[:10]!r}")
        if any(t.field == name for t in terms):
            raise OrderbyError(f"{name!r} appears twice")
        terms.append(OrderTerm(name, direction == "desc"))
        if name == "id":
            break  # id is unique: anything after it could never matter
    if terms[-1].field != "id":
        terms.append(OrderTerm("id", terms[-1].desc))
    return tuple(terms)
