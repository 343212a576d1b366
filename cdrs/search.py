"""Free-text ``search``: one expression, and the PostgreSQL index built on exactly it.

The searched text is the upper-cased concatenation of the searchable fields, separated by a
newline (``search`` rejects control characters, so a term never spans two fields). One
trigram GIN index over that expression answers ``UPPER(doc) LIKE UPPER('%term%')`` with a
single bitmap scan instead of an eight-way OR over eight indexes.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import CharField, F, Func, Q, Value
from django.db.models.lookups import Contains
from django.db.models.sql.compiler import SQLCompiler

from cdrs.fields import SEARCH_FIELD_NAMES


class SearchDocument(Func):
    """UPPER(caller || E'\\n' || callee || ...) over the searchable fields."""

    template = "UPPER(%(expressions)s)"
    arg_joiner = " || E'\\n' || "
    output_field = CharField()

    def __init__(self) -> None:
        super().__init__(*[F(name) for name in SEARCH_FIELD_NAMES])

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> Any:
        return self.as_sql(compiler, connection, arg_joiner=" || char(10) || ", **extra)


# Served by the trigram GIN index "cdr_search_trgm_idx" over the same expression
# (cdrs/migrations/0002_postgresql_extras.py): the planner matches index expressions
# structurally, so the document above and that index must stay alike.


class SearchTerm(Func):
    """UPPER(term), folded exactly like the document.

    On PostgreSQL the searched columns use the "C" collation, whose UPPER() folds ASCII
    only; the term must be folded the same way or 'García' would never match itself.
    """

    template = "UPPER(%(expressions)s)"
    output_field = CharField()

    def __init__(self, text: str) -> None:
        super().__init__(Value(text, output_field=CharField()))

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> Any:
        return self.as_sql(compiler, connection, template='UPPER(%(expressions)s COLLATE "C")')


def search_q(text: str) -> Q:
    """Substring match of ``text`` in any searchable field, ignoring ASCII letter case."""
    return Q(Contains(SearchDocument(), SearchTerm(text)))
