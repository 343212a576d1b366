"""Bulk import of CSV / NDJSON files (``manage.py import_cdrs``), streaming, in batches.

Every row goes through ``validate_cdr`` and every batch through ``services.cdr_ingest``: the
API's rules and write path. On PostgreSQL that COPYs the batch into a temporary staging table
and moves it with one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, so duplicates within
the file and against stored CDRs are skipped and counted.

Completeness: an export ends with a trailer (``cdrs/export.py``) giving its row count. A
file must end with one unless ``require_trailer=False`` (``--no-trailer``), and every
trailer must count the rows since the previous one (concatenated exports are fine): a file
cut short, or edited, is refused as a whole. Strict imports then load nothing.

Transactions: ``strict`` (the default) loads a file in one transaction, so a file with any
invalid row, or an interrupted import, loads nothing. ``lenient`` commits batch by batch:
an interruption leaves whole batches, and re-running the same command finishes the job
(every row already loaded is a duplicate).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import os
import queue
import re
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from django.db import connection, transaction

from cdrs import services
from cdrs.backfill import Backfill
from cdrs.backfill_csv import CanonicalCsv, FastRow
from cdrs.export import csv_trailer_rows, ndjson_trailer_rows
from cdrs.fields import ALL_FIELD_NAMES
from cdrs.validation import validate_batch
from cdrs.values import loads_json
from cdrs.wire import ESCAPE

BATCH_ROWS = 10_000
# Rows created by one import_cdrs run from which it ANALYZEs the table on PostgreSQL. Before
# autovacuum's own ANALYZE gets round to it, the planner judges the new rows by stale
# statistics (a cursor page was seen 20x slower right after a 100,000-row import).
ANALYZE_THRESHOLD = 10_000
csv.field_size_limit(64 * 1024)


class ImportFileError(Exception):
    """The file as a whole cannot be imported (unreadable, bad header, unknown format)."""


@dataclass
class ImportStats:
    read: int = 0
    created: int = 0
    duplicates: int = 0
    rejected: int = 0
    backfilled: int = 0  # of ``created``: rows attached as new month partitions
    backfill_months: int = 0
    seconds: float = 0.0
    rejects: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


def detect_format(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".ndjson", ".jsonl")):
        return "ndjson"
    raise ImportFileError(
        f"{path}: cannot tell the format from the name; use --format csv or --format ndjson"
    )


class _CountingReader(io.RawIOBase):
    """Counts bytes read from the underlying file (for progress on compressed input too)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


def open_source(path: str) -> tuple[IO[bytes], _CountingReader, int | None, bool]:
    """(decompressed byte stream, byte counter of the raw file, raw size or None, gzipped)."""
    if path == "-":
        raw: IO[bytes] = sys.stdin.buffer
        size = None
    else:
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
        except OSError as exc:
            raise ImportFileError(f"{path}: {exc.strerror}") from exc
        size = os.fstat(raw.fileno()).st_size
    counter = _CountingReader(raw)
    stream: IO[bytes] = io.BufferedReader(counter, buffer_size=1 << 20)
    head = stream.peek(2)[:2]  # type: ignore[attr-defined]
    gzipped = head == b"\x1f\x8b"
    if gzipped:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
    return stream, counter, size, gzipped


def _read_errors_as_file_errors(
    records: Iterator[Record], path: str, gzipped: bool
) -> Iterator[Record]:
    """A file that cannot be read to its end is one clear error, never a traceback.

    A truncated .gz ends in EOFError, a corrupt one in BadGzipFile (an OSError) or
    zlib.error. What was loaded before stays as the mode says: nothing when strict,
    whole batches when lenient (a re-run skips them as duplicates).
    """
    try:
        yield from records
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImportFileError(f"{path}: compressed data is truncated or corrupt ({exc})") from None
    except OSError as exc:
        if gzipped:
            raise ImportFileError(
                f"{path}: compressed data is truncated or corrupt ({exc})"
            ) from None
        raise ImportFileError(f"{path}: read error: {exc.strerror or exc}") from None


# Undecodable bytes become lone surrogates (errors="surrogateescape"), so a row with invalid
# UTF-8 is found where it is and rejected with its line number instead of ending the file.
_UNDECODABLE_RE = re.compile("[\udc80-\udcff]")


def _has_undecodable(cells: list[str]) -> bool:
    joined = "".join(cells)
    return not joined.isascii() and _UNDECODABLE_RE.search(joined) is not None


@dataclass(frozen=True)
class Trailer:
    """An export's last line: the number of rows before it."""

    rows: int


Row = tuple[int, dict[str, Any] | FastRow | None, str | None]  # (line, object, parse error)
Record = tuple[int, dict[str, Any] | FastRow | Trailer | None, str | None]  # or a trailer


def iter_csv(stream: IO[bytes], *, fast: bool = False) -> Iterator[Record]:
    """The rows of a CSV file as dicts of cells, or (``fast``: a backfill is on) as
    ``FastRow`` when they are in the canonical form ``cdrs.backfill_csv`` loads as text."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="", errors="surrogateescape")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ImportFileError(f"unreadable CSV header: {exc}") from exc
    if _has_undecodable(header):
        raise ImportFileError("unreadable CSV header: not valid UTF-8")
    unknown = [h for h in header if h not in ALL_FIELD_NAMES]
    if unknown:
        shown = ", ".join(ascii(h)[1:-1] for h in unknown[:5])
        raise ImportFileError(f"unknown column(s) in the CSV header: {shown}")
    if len(set(header)) != len(header):
        raise ImportFileError("a column appears twice in the CSV header")
    width = len(header)
    canonical = CanonicalCsv.for_header(header) if fast else None
    line = reader.line_num
    while True:
        start = line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            yield start, None, f"malformed CSV: {exc}"
            continue
        line = reader.line_num
        if not cells:
            continue
        if _has_undecodable(cells):
            yield start, None, "not valid UTF-8"
            continue
        if (trailer_rows := csv_trailer_rows(cells)) is not None:
            yield start, Trailer(trailer_rows), None
            continue
        if len(cells) != width:
            yield start, None, f"expected {width} cells, found {len(cells)}"
            continue
        if canonical is not None and (fast_row := canonical.parse(cells)) is not None:
            yield start, fast_row, None
            continue
        # Undo csv_escape, inlined: this runs for every cell of every row (width checked above).
        row = {h: c[1:] if c[:1] == ESCAPE else c for h, c in zip(header, cells, strict=False)}
        yield start, row, None


def iter_ndjson(stream: IO[bytes]) -> Iterator[Record]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    for number, raw in enumerate(stream, start=1):
        try:
            text = decoder.decode(raw)
        except UnicodeDecodeError:
            yield number, None, "not valid UTF-8"
            decoder.reset()
            continue
        if not text.strip():
            continue
        try:
            obj = loads_json(text)
        except (ValueError, RecursionError) as exc:
            yield number, None, f"invalid JSON: {str(exc)[:120]}"
            continue
        trailer_rows = ndjson_trailer_rows(obj)
        yield number, obj if trailer_rows is None else Trailer(trailer_rows), None


def checked_trailers(records: Iterator[Record], *, required: bool) -> Iterator[Row]:
    """``records`` without the export trailers, each checked against the rows before it.

    ImportFileError when a trailer's count is wrong, or (``required``) when the last record
    is not a trailer: the file was cut short or edited.
    """
    since_trailer = 0
    last_was_trailer = False
    for line, obj, error in records:
        if isinstance(obj, Trailer):
            if obj.rows != since_trailer:
                raise ImportFileError(
                    f"line {line}: the export trailer counts {obj.rows} rows, the file has "
                    f"{since_trailer} before it: the file is incomplete or was edited"
                )
            since_trailer, last_was_trailer = 0, True
            continue
        since_trailer, last_was_trailer = since_trailer + 1, False
        yield line, obj, error
    if required and not last_was_trailer:
        raise ImportFileError(
            "the file does not end with an export trailer, so it may be cut short "
            "(an export's last line is #export_complete rows=N in CSV, "
            '{"export_complete":true,"rows":N} in NDJSON); --no-trailer imports a file '
            "that never had one"
        )


def _load_batch(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """Store one batch through the same service as the API's ingest (COPY on PostgreSQL)."""
    result = services.cdr_ingest(rows=rows)
    return result.created, result.duplicates


def _validated_batches(
    records: Iterator[Row],
    *,
    text_mode: bool,
    batch_rows: int,
    stats: ImportStats,
    on_reject: Callable[[int, dict[str, str], Any], None] | None,
) -> Iterator[list[dict[str, Any] | FastRow]]:
    """Parse and validate records into batches of clean rows; rejects are counted here.

    Parsed records wait in ``pending`` until they could fill the batch, then go through
    ``validate_batch`` together; a record that did not parse first flushes them, so
    rejects are reported in file order and every batch but the last has ``batch_rows``.
    """
    batch: list[dict[str, Any] | FastRow] = []
    pending: list[tuple[int, Any]] = []

    def reject(line: int, error_map: dict[str, str], obj: Any) -> None:
        stats.rejected += 1
        if len(stats.rejects) < 1000:
            stats.rejects.append((line, error_map))
        if on_reject:
            on_reject(line, error_map, obj)

    def flush() -> None:
        rows, bad = validate_batch([obj for _, obj in pending], text=text_mode)
        batch.extend(rows)
        for index, error_map in bad:
            line, obj = pending[index]
            reject(line, error_map, obj)
        pending.clear()

    for line, obj, error in records:
        stats.read += 1
        if error is not None:
            flush()
            reject(line, {"record": error}, obj)
            continue
        if isinstance(obj, FastRow):  # valid by construction; file order kept
            if pending:
                flush()
            batch.append(obj)
        else:
            pending.append((line, obj))
        if len(batch) + len(pending) >= batch_rows:
            flush()
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    flush()
    if batch:
        yield batch


_DONE = object()


def _prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run ``items`` in a thread, ``depth`` ahead of the consumer.

    Parsing and validating the next batch (Python, holding the GIL) then overlaps with the
    database loading the current one (psycopg waits without the GIL): two cores, both busy.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for item in items:
                handoff.put(item)
        except BaseException as exc:  # handed to the consumer, re-raised there
            handoff.put(exc)
        else:
            handoff.put(_DONE)

    threading.Thread(target=produce, name="import-parser", daemon=True).start()
    while (item := handoff.get()) is not _DONE:
        if isinstance(item, BaseException):
            raise item
        yield item


def analyze_after_import(created: int, threshold: int = ANALYZE_THRESHOLD) -> bool:
    """ANALYZE the CDR table on PostgreSQL when ``created`` reaches ``threshold``."""
    from cdrs.models import Cdr

    if created < threshold or connection.vendor != "postgresql":
        return False
    with connection.cursor() as cur:
        cur.execute(f"ANALYZE {connection.ops.quote_name(Cdr._meta.db_table)}")
    return True


def _finish_backfill(months: Backfill, stats: ImportStats) -> None:
    for month in months.finish():
        stats.created += month.created
        stats.duplicates += month.duplicates
        if month.attached:
            stats.backfilled += month.created
            stats.backfill_months += 1


def import_file(
    path: str,
    *,
    fmt: str | None = None,
    strict: bool = True,
    require_trailer: bool = True,
    on_reject: Callable[[int, dict[str, str], Any], None] | None = None,
    on_progress: Callable[[ImportStats, int, int | None], None] | None = None,
    batch_rows: int = BATCH_ROWS,
    backfill: bool = True,
) -> ImportStats:
    """Import one file. Strict: all or nothing. Lenient: valid rows, batch by batch.

    A missing or wrong export trailer (see ``checked_trailers``) raises ImportFileError at
    the end of the file: strict imports load nothing, lenient ones keep the batches
    committed before it.

    On partitioned PostgreSQL (and unless ``backfill=False``) the rows of months that hold
    no CDR yet are loaded as new partitions at the end of the file (``cdrs.backfill``),
    with the same de-duplication; lenient imports commit those months there, each whole.
    """
    fmt = detect_format(path, fmt)
    stream, counter, size, gzipped = open_source(path)
    stats = ImportStats()
    started = time.monotonic()
    months = Backfill() if backfill and Backfill.available() else None
    records = checked_trailers(
        _read_errors_as_file_errors(
            iter_csv(stream, fast=months is not None) if fmt == "csv" else iter_ndjson(stream),
            path,
            gzipped,
        ),
        required=require_trailer,
    )
    batches = _validated_batches(
        records, text_mode=fmt == "csv", batch_rows=batch_rows, stats=stats, on_reject=on_reject
    )
    try:
        with transaction.atomic() if strict else contextlib.nullcontext():
            for batch in _prefetch(batches):
                # Strict: after the first invalid row nothing more is loaded (all rolls back).
                if not (strict and stats.rejected):
                    with transaction.atomic():
                        rows = months.route(batch) if months else batch
                        created, duplicates = _load_batch(rows) if rows else (0, 0)
                    stats.created += created
                    stats.duplicates += duplicates
                if on_progress:
                    stats.seconds = time.monotonic() - started
                    on_progress(stats, counter.count, size)
            if months and not (strict and stats.rejected):
                _finish_backfill(months, stats)
            if strict and stats.rejected:
                transaction.set_rollback(True)
                stats.created = 0
                stats.duplicates = 0
    except ImportFileError:
        if months and not strict:  # lenient: the whole batches read before it stay
            _finish_backfill(months, stats)
        raise
    except BaseException:
        if months and not strict:  # strict: the rollback took the staging tables
            months.abandon()
        raise
    finally:
        if path != "-":
            stream.close()
        stats.seconds = time.monotonic() - started
    return stats
