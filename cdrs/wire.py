"""The wire form of a CDR row, shared by the API and the export/import files.

JSON: ``cdr_item`` turns a selector row into what responses and NDJSON lines carry.

CSV, one dialect for the export, the import, the stats CSV and ``generate_cdrs``: RFC 4180
(``csv`` module, CRLF line ends) and spreadsheet-safe: a cell starting with ``= + - @``,
tab, CR or an apostrophe gets one leading apostrophe (``ESCAPE``), so no spreadsheet
evaluates it. ``import_cdrs`` removes exactly one leading apostrophe from every cell, which
restores the original value (an original leading apostrophe was doubled).
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from cdrs.ids import encode_id

if TYPE_CHECKING:
    from cdrs.selectors import CdrRow

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "'")
ESCAPE = "'"


def cdr_item(row: CdrRow | dict[str, Any]) -> dict[str, Any]:
    """The wire form of a row from ``selectors`` (timestamps already RFC 3339 text).

    Rows from selectors are fresh dicts, so the id is replaced in place (no copy per row).
    """
    item = cast(dict[str, Any], row)
    item["id"] = encode_id(row["id"])
    return item


def csv_escape(value: str) -> str:
    return ESCAPE + value if value.startswith(FORMULA_PREFIXES) else value


def csv_cell(value: Any) -> str:
    """One CSV cell: empty for None, decimals in plain notation, escaped."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return csv_escape(format(value, "f"))
    return csv_escape(str(value))


class CsvLines(io.StringIO):
    """A ``csv_writer`` target that hands back what was written since the last ``pop``."""

    def pop(self) -> str:
        text = self.getvalue()
        self.seek(0)
        self.truncate()
        return text


def csv_writer(target: io.StringIO) -> Any:
    """A writer of the dialect above (cells still go through ``csv_cell``)."""
    return csv.writer(target, lineterminator="\r\n")
