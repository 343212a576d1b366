"""Streaming CSV and NDJSON writers for the export (and their inverse for import).

Rows take their wire form, and CSV its dialect, from ``cdrs/wire.py``.

Every export ends with a trailer that says it is complete and how many CDRs it holds: the
NDJSON line ``{"export_complete":true,"rows":N}``, the CSV line ``#export_complete rows=N``
(one cell; a data row starts with its id, never with ``#``). It is written only after the
last row was read from the database, so a stream cut short (the database gone, a timeout,
a dropped connection, even over HTTP/1.0 where the end of a response is just the
connection closing) never ends with one. ``import_cdrs`` checks it.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from cdrs import heartbeat, jsonenc
from cdrs.wire import CsvLines, cdr_item, csv_cell, csv_writer

if TYPE_CHECKING:
    from cdrs.selectors import CdrRow

TRAILER_KEY = "export_complete"
_CSV_TRAILER_RE = re.compile(r"#export_complete rows=(0|[1-9][0-9]{0,17})")


def ndjson_trailer(rows: int) -> bytes:
    return jsonenc.dumps({TRAILER_KEY: True, "rows": rows}) + b"\n"


def csv_trailer(rows: int) -> str:
    return f"#export_complete rows={rows}\r\n"


def ndjson_trailer_rows(obj: object) -> int | None:
    """The row count of an NDJSON export trailer, or None if ``obj`` is not one."""
    if not isinstance(obj, dict) or set(obj) != {TRAILER_KEY, "rows"}:
        return None
    rows = obj["rows"]
    if obj[TRAILER_KEY] is not True or type(rows) is not int or rows < 0:
        return None
    return rows


def csv_trailer_rows(cells: list[str]) -> int | None:
    """The row count of a CSV export trailer (a record of one cell), or None."""
    if len(cells) != 1 or not (match := _CSV_TRAILER_RE.fullmatch(cells[0])):
        return None
    return int(match.group(1))


def _close(rows: Iterable[Any]) -> None:
    """End the rows' generator (and the export's transaction inside it) with the stream."""
    close = getattr(rows, "close", None)
    if close is not None:
        close()


def csv_lines(
    fields: tuple[str, ...], rows: Iterable[CdrRow | dict[str, Any]]
) -> Generator[bytes, None, None]:
    """The header, the rows, the trailer. The first chunk holds rows (or the trailer): the
    database has answered before anything is sent (see ``StartedStream``)."""
    buffer = CsvLines()
    writer = csv_writer(buffer)
    writer.writerow(fields)
    batch: list[str] = [buffer.pop()]
    count = 0
    try:
        for row in rows:
            item = cdr_item(row)
            writer.writerow([csv_cell(item[name]) for name in fields])
            batch.append(buffer.pop())
            count += 1
            if len(batch) >= 500:
                yield "".join(batch).encode()
                batch.clear()
                heartbeat.beat()
        batch.append(csv_trailer(count))
        yield "".join(batch).encode()
    finally:
        _close(rows)


def ndjson_lines(rows: Iterable[CdrRow | dict[str, Any]]) -> Generator[bytes, None, None]:
    """One CDR object a line, then the trailer line."""
    batch: list[bytes] = []
    count = 0
    try:
        for row in rows:
            batch.append(jsonenc.dumps(cdr_item(row)) + b"\n")
            count += 1
            if len(batch) >= 500:
                yield b"".join(batch)
                batch.clear()
                heartbeat.beat()
        batch.append(ndjson_trailer(count))
        yield b"".join(batch)
    finally:
        _close(rows)


class StartedStream(Iterator[bytes]):
    """``chunks`` with its first chunk produced now, in the view.

    The export's query starts (and may fail: a statement timeout, the database gone) while
    the view can still answer with the contract's error body, not after a 200's headers
    have gone out. ``close()`` (called by the WSGI server, whether or not the body was
    read) closes the writer, which closes the rows and ends the export's transaction.
    """

    def __init__(self, chunks: Generator[bytes, None, None]) -> None:
        self._chunks = chunks
        self._head: list[bytes] = [next(chunks, b"")]

    def __next__(self) -> bytes:
        if self._head:
            return self._head.pop()
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()
