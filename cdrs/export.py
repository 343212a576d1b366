"""Streaming CSV and NDJSON writers for the export (and their inverse for import).

CSV is RFC 4180 (``csv`` module, CRLF line ends) and spreadsheet-safe: a cell starting with
``= + - @``, tab, CR or an apostrophe gets one leading apostrophe, so no spreadsheet
evaluates it. ``import_cdrs`` removes exactly one leading apostrophe from every CSV cell,
which restores the original value (an original leading apostrophe was doubled on export).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from cdrs import heartbeat, jsonenc
from cdrs.api.serializers import cdr_item

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "'")
ESCAPE = "'"


def csv_escape(value: str) -> str:
    return ESCAPE + value if value.startswith(FORMULA_PREFIXES) else value


def csv_unescape(value: str) -> str:
    return value[1:] if value.startswith(ESCAPE) else value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return csv_escape(format(value, "f"))
    return csv_escape(str(value))


class _Line(io.StringIO):
    """A csv.writer target that hands back each written line."""

    def pop(self) -> str:
        text = self.getvalue()
        self.seek(0)
        self.truncate()
        return text


def csv_lines(fields: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    buffer = _Line()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(fields)
    yield buffer.pop().encode()
    batch: list[str] = []
    for row in rows:
        item = cdr_item(row)
        writer.writerow([_cell(item[name]) for name in fields])
        batch.append(buffer.pop())
        if len(batch) >= 500:
            yield "".join(batch).encode()
            batch.clear()
            heartbeat.beat()
    if batch:
        yield "".join(batch).encode()


def ndjson_lines(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    batch: list[bytes] = []
    for row in rows:
        batch.append(jsonenc.dumps(cdr_item(row)) + b"\n")
        if len(batch) >= 500:
            yield b"".join(batch)
            batch.clear()
            heartbeat.beat()
    if batch:
        yield b"".join(batch)
