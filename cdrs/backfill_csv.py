"""Canonical CSV rows straight to COPY text, for the fast backfill (``cdrs.backfill``).

Profiled on a 200,000-row backfill, Python spent ~115 µs of CPU a row, about 60 of them in
``validate_cdr`` and 30 adapting the typed values for ``COPY``; the whole database side of the
load was less. The rows an export writes have one form (UTC ``Z`` timestamps, plain integers
and decimals, known enum values): for a row in that form, one regular expression built from
the field spine checks the whole row at once, and its cells go to ``COPY`` as text, which
PostgreSQL parses into the values ``validate_cdr`` would have produced.

Every other row (an offset timestamp, ``1e3``, a string over its length, an unknown enum, a
tab or a backslash in a cell, ...) takes the ordinary ``validate_cdr``, which also words the
errors: this path accepts a subset of what ``validate_cdr`` accepts, with the same values
(``tests/test_backfill_csv.py`` compares the two on generated rows).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from cdrs.fields import (
    CDR_FIELDS,
    COST_DECIMAL_PLACES,
    COST_MAX_DIGITS,
    FIELDS_BY_NAME,
    CdrField,
    Kind,
)
from cdrs.ids import InvalidId, decode_id
from cdrs.validation import STARTED_AT_MAX, natural_key_of_text
from cdrs.wire import ESCAPE

# RFC 3339 as this service writes it, years 1970-2999 (every such date is valid in PostgreSQL
# and in Python; days 29-31 are checked against the calendar in ``parse``).
_TIMESTAMP = (
    r"(?:19[7-9]\d|2\d{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\dZ"
)
_WHOLE = COST_MAX_DIGITS - COST_DECIMAL_PLACES
_DECIMAL = rf"-?(?:0|[1-9]\d{{0,{_WHOLE - 1}}})(?:\.\d{{1,{COST_DECIMAL_PLACES}}})?"
_NON_ID_FIELDS = frozenset(f.name for f in CDR_FIELDS if f.kind is not Kind.ID)


def _pattern(f: CdrField) -> str | None:
    """The canonical text of one field's cell; None: no canonical form (the file takes the
    ordinary path)."""
    if f.kind is Kind.ID:
        return r"[A-Za-z0-9+/=]{0,40}"  # decode_id decides
    if f.kind is Kind.STRING:
        return rf"[^\t]{{0,{f.max_length}}}"
    if f.kind is Kind.TIMESTAMP:
        return _TIMESTAMP if f.required else rf"(?:{_TIMESTAMP})?" if f.nullable else None
    if f.kind is Kind.ENUM:
        choices = "|".join(re.escape(c) for c in f.choices if c)
        empty_ok = "" in f.choices and not f.required
        return f"(?:{choices})?" if empty_ok else f"(?:{choices})"
    if f.kind is Kind.INTEGER:
        if f.min_value != 0 or f.max_value is None:
            return None
        digits = len(str(f.max_value))  # the value itself is compared in ``parse``
        return rf"(?:0|[1-9]\d{{0,{digits - 1}}})"
    if f.kind is Kind.DECIMAL:
        return f"(?:{_DECIMAL})?" if f.nullable else None
    return None


class FastRow:
    """A canonical CSV row: its COPY text (without the id) and what routing it needs.

    A plain class with slots: a frozen dataclass's ``__init__`` cost 2 µs a row here."""

    __slots__ = ("cells", "id", "month", "source", "started_at", "text")

    def __init__(
        self,
        month: date,
        cdr_id: int | None,
        started_at: datetime,
        text: str,
        cells: Sequence[str],
        source: CanonicalCsv,
    ) -> None:
        self.month = month
        self.id = cdr_id  # None until ``cdrs.backfill`` draws one
        self.started_at = started_at
        self.text = text  # the COPY text of ``source.columns[1:]``, tab-separated
        self.cells = cells  # the row's cells, for the ordinary path (a month with CDRs)
        self.source = source

    def as_item(self) -> dict[str, str]:
        """The row as ``iter_csv`` yields it otherwise (for ``validate_cdr``)."""
        return dict(zip(self.source.header, self.cells, strict=True))


class CanonicalCsv:
    """The fast path for one CSV header: ``parse`` each row's cells."""

    def __init__(self, header: Sequence[str], regex: re.Pattern[str]) -> None:
        self.header = tuple(header)
        self._regex = regex
        self._width = len(header)
        index = {name: i for i, name in enumerate(header)}
        self._id = index.get("id")
        self._started = index["started_at"]
        self._call_id, self._caller, self._callee = (
            index["call_id"],
            index["caller"],
            index["callee"],
        )
        fields = [FIELDS_BY_NAME[name] for name in header]
        self._calendar = tuple(  # timestamps whose day-of-month needs the calendar
            i for i, f in enumerate(fields) if f.kind is Kind.TIMESTAMP and i != self._started
        )
        self._bounded = tuple(  # integers whose maximum is not all nines
            (i, f.max_value)
            for i, f in enumerate(fields)
            if f.kind is Kind.INTEGER
            and f.max_value is not None
            and f.max_value != 10 ** len(str(f.max_value)) - 1
        )
        self._nulls = tuple(  # empty means NULL (validate_cdr's None); the id left out
            i - (self._id is not None and i > self._id)
            for i, f in enumerate(fields)
            if f.nullable and f.kind is not Kind.STRING
        )
        self._months: dict[str, date] = {}
        # The COPY columns: id first (generated ones are known only when routed), then the
        # header's other fields in file order, then the natural key.
        self.columns = ("id", *(h for i, h in enumerate(header) if i != self._id), "natural_key")

    @classmethod
    def for_header(cls, header: Sequence[str]) -> CanonicalCsv | None:
        """None unless the header names every field (the id may be left out): a missing
        field takes its default in ``validate_cdr``, which this path does not repeat."""
        if not set(header) >= _NON_ID_FIELDS or not set(header) <= set(FIELDS_BY_NAME):
            return None
        patterns = [_pattern(FIELDS_BY_NAME[name]) for name in header]
        if any(p is None for p in patterns):
            return None
        return cls(header, re.compile("\t".join(f"(?:{p})" for p in patterns)))

    def parse(self, cells: list[str]) -> FastRow | None:
        """The row as a FastRow, or None: it takes ``validate_cdr``. (Written for speed:
        this runs once per row of a backfill.)"""
        line = "\t".join(cells)
        if (
            len(cells) != self._width
            or line.count("\t") != self._width - 1
            or "\\" in line
            or "\n" in line
            or "\r" in line
            or "\x00" in line
        ):
            return None
        if ESCAPE in line:  # undo csv_escape (iter_csv does the same for the ordinary path)
            cells = [c[1:] if c[:1] == ESCAPE else c for c in cells]
            line = "\t".join(cells)
        if self._regex.fullmatch(line) is None:
            return None
        text = cells[self._started]
        try:
            started_at = datetime.fromisoformat(text)
            for i in self._calendar:
                if cells[i][8:10] > "28":
                    datetime.fromisoformat(cells[i])
        except ValueError:  # 30 February
            return None
        if started_at > STARTED_AT_MAX:
            return None
        for i, maximum in self._bounded:
            if int(cells[i]) > maximum:
                return None
        cdr_id: int | None = None
        out = list(cells)
        if self._id is not None:
            if out[self._id]:
                try:
                    cdr_id = decode_id(out[self._id])
                except InvalidId:
                    return None
            del out[self._id]
        for i in self._nulls:  # positions in ``out`` (the id left out)
            if not out[i]:
                out[i] = r"\N"
        # isoformat() of a "...Z" timestamp is the same time with "+00:00".
        key = natural_key_of_text(
            cells[self._call_id], text[:19] + "+00:00", cells[self._caller], cells[self._callee]
        )
        out.append(key)
        month = self._months.get(text[:7])
        if month is None:
            month = self._months[text[:7]] = date(started_at.year, started_at.month, 1)
        return FastRow(month, cdr_id, started_at, "\t".join(out), cells, self)


def copy_fast_rows(cur: Any, table: str, rows: Sequence[FastRow]) -> None:
    """COPY FastRows (one header's, their ids assigned) into ``table`` as text."""
    columns = ", ".join(rows[0].source.columns)
    body = "".join(f"{row.id}\t{row.text}\n" for row in rows)
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        copy.write(body)
