"""Bulk import of CSV / NDJSON files (``manage.py import_cdrs``), streaming, in batches.

Every row goes through ``validate_cdr`` and every batch through ``services.cdr_ingest``: the
API's rules and write path. On PostgreSQL that COPYs the batch into a temporary staging table
and moves it with one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, so duplicates within
the file and against stored CDRs are skipped and counted.

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
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any

from django.db import connection, transaction

from cdrs import services
from cdrs.export import ESCAPE
from cdrs.fields import ALL_FIELD_NAMES
from cdrs.validation import CdrInvalid, validate_cdr

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


def open_source(path: str) -> tuple[IO[bytes], _CountingReader, int | None]:
    """(decompressed byte stream, byte counter of the raw file, raw size or None)."""
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
    if head == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
    return stream, counter, size


Record = tuple[int, dict[str, Any] | None, str | None]  # (line, object, parse error)


def iter_csv(stream: IO[bytes]) -> Iterator[Record]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="", errors="strict")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ImportFileError(f"unreadable CSV header: {exc}") from exc
    unknown = [h for h in header if h not in ALL_FIELD_NAMES]
    if unknown:
        raise ImportFileError(f"unknown column(s) in the CSV header: {', '.join(unknown[:5])}")
    if len(set(header)) != len(header):
        raise ImportFileError("a column appears twice in the CSV header")
    width = len(header)
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
        except UnicodeDecodeError:
            raise ImportFileError(f"line {start}: not valid UTF-8") from None
        line = reader.line_num
        if not cells:
            continue
        if len(cells) != width:
            yield start, None, f"expected {width} cells, found {len(cells)}"
            continue
        # csv_unescape, inlined: this runs for every cell of every row (width checked above).
        row = {h: c[1:] if c[:1] == ESCAPE else c for h, c in zip(header, cells, strict=False)}
        yield start, row, None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


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
            obj = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            yield number, None, f"invalid JSON: {str(exc)[:120]}"
            continue
        yield number, obj, None


def _load_batch(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """Store one batch through the same service as the API's ingest (COPY on PostgreSQL)."""
    result = services.cdr_ingest(rows)
    return result.created, result.duplicates


def _validated_batches(
    records: Iterator[Record],
    *,
    text_mode: bool,
    batch_rows: int,
    stats: ImportStats,
    on_reject: Callable[[int, dict[str, str], Any], None] | None,
) -> Iterator[list[dict[str, Any]]]:
    """Parse and validate records into batches of clean rows; rejects are counted here."""
    batch: list[dict[str, Any]] = []
    for line, obj, error in records:
        stats.read += 1
        error_map: dict[str, str] = {"record": error} if error is not None else {}
        if error is None:
            try:
                batch.append(validate_cdr(obj, text=text_mode))
            except CdrInvalid as exc:
                error_map = exc.errors
        if error_map:
            stats.rejected += 1
            if len(stats.rejects) < 1000:
                stats.rejects.append((line, error_map))
            if on_reject:
                on_reject(line, error_map, obj)
        if len(batch) >= batch_rows:
            yield batch
            batch = []
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


def import_file(
    path: str,
    *,
    fmt: str | None = None,
    strict: bool = True,
    on_reject: Callable[[int, dict[str, str], Any], None] | None = None,
    on_progress: Callable[[ImportStats, int, int | None], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ImportStats:
    """Import one file. Strict: all or nothing. Lenient: valid rows, batch by batch."""
    fmt = detect_format(path, fmt)
    stream, counter, size = open_source(path)
    stats = ImportStats()
    started = time.monotonic()
    records = iter_csv(stream) if fmt == "csv" else iter_ndjson(stream)
    batches = _validated_batches(
        records, text_mode=fmt == "csv", batch_rows=batch_rows, stats=stats, on_reject=on_reject
    )
    try:
        with transaction.atomic() if strict else contextlib.nullcontext():
            for batch in _prefetch(batches):
                # Strict: after the first invalid row nothing more is loaded (all rolls back).
                if not (strict and stats.rejected):
                    with transaction.atomic():
                        created, duplicates = _load_batch(batch)
                    stats.created += created
                    stats.duplicates += duplicates
                if on_progress:
                    stats.seconds = time.monotonic() - started
                    on_progress(stats, counter.count, size)
            if strict and stats.rejected:
                transaction.set_rollback(True)
                stats.created = 0
                stats.duplicates = 0
    finally:
        if path != "-":
            stream.close()
        stats.seconds = time.monotonic() - started
    return stats
