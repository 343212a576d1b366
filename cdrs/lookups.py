"""Case-sensitive substring lookups on every backend: ``ccontains``, ``cstartswith``, ``cendswith``.

Django's ``contains``/``startswith``/``endswith`` are case-sensitive on PostgreSQL (``LIKE``)
but not on SQLite, where ``LIKE`` folds ASCII case. The filter language promises OData's
case-sensitive functions, so these lookups:

* on PostgreSQL (and any other backend) render exactly as Django's built-in lookup of the
  same kind: ``LIKE`` with ``%``/``_``/``\\`` escaped in the pattern, so trigram and
  ``text_pattern_ops`` indexes keep working;
* on SQLite use ``instr``/``substr``, which compare code points and treat ``%`` and ``_``
  as ordinary characters. The empty needle matches every string, as with ``LIKE '%'``.

Each class keeps the built-in ``lookup_name`` (so Django's operator, pattern and cast tables
apply unchanged) and is registered on ``CharField`` under its own name by ``register()``,
which ``CdrsConfig.ready()`` calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db.models import CharField
from django.db.models.lookups import Contains, EndsWith, Lookup, PatternLookup, StartsWith

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler

_SqlParams = tuple[str, list[Any]]


def _sides(
    lookup: PatternLookup, compiler: SQLCompiler, connection: BaseDatabaseWrapper
) -> tuple[str, list[Any], str, list[Any]]:
    """SQL of both sides, the right one raw (no ``%`` wrapping, no LIKE escaping)."""
    lhs_sql, lhs_params = lookup.process_lhs(compiler, connection)
    # Skip PatternLookup.process_rhs, which turns the value into a LIKE pattern.
    rhs_sql, rhs_params = Lookup.process_rhs(lookup, compiler, connection)
    return lhs_sql, list(lhs_params), rhs_sql, list(rhs_params)


class CaseSensitiveContains(Contains):
    """``field__ccontains='x'``: the field contains ``x``, case-sensitively."""

    def as_sqlite(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> _SqlParams:
        lhs, lhs_params, rhs, rhs_params = _sides(self, compiler, connection)
        return f"instr({lhs}, {rhs}) > 0", lhs_params + rhs_params


class CaseSensitiveStartsWith(StartsWith):
    """``field__cstartswith='x'``: the field starts with ``x``, case-sensitively."""

    def as_sqlite(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> _SqlParams:
        lhs, lhs_params, rhs, rhs_params = _sides(self, compiler, connection)
        return f"substr({lhs}, 1, length({rhs})) = {rhs}", lhs_params + rhs_params * 2


class CaseSensitiveEndsWith(EndsWith):
    """``field__cendswith='x'``: the field ends with ``x``, case-sensitively."""

    def as_sqlite(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> _SqlParams:
        lhs, lhs_params, rhs, rhs_params = _sides(self, compiler, connection)
        # substr(x, -0) would be the whole string, hence the explicit empty-needle case.
        sql = f"(length({rhs}) = 0 OR substr({lhs}, -length({rhs})) = {rhs})"
        return sql, rhs_params + lhs_params + rhs_params * 2


LOOKUPS: dict[str, type[PatternLookup]] = {
    "ccontains": CaseSensitiveContains,
    "cstartswith": CaseSensitiveStartsWith,
    "cendswith": CaseSensitiveEndsWith,
}


def register() -> None:
    """Called once from ``CdrsConfig.ready()``: the one place custom lookups are registered."""
    for name, lookup in LOOKUPS.items():
        CharField.register_lookup(lookup, lookup_name=name)
