"""manage.py import_cdrs FILE [FILE ...] [--format csv|ndjson] [--strict|--lenient]"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

import orjson
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import InterfaceError, OperationalError

from cdrs.importer import (
    ANALYZE_THRESHOLD,
    ImportFileError,
    ImportStats,
    analyze_after_import,
    import_file,
)


def reject_line(entry: dict[str, Any]) -> bytes:
    """One line of the rejects file. A record with lone surrogates (JSON "\\ud800", which
    orjson refuses to write) is written by the stdlib as the same escapes it came in as."""
    try:
        return orjson.dumps(entry, default=str) + b"\n"
    except orjson.JSONEncodeError:
        pass
    try:
        return json.dumps(entry, default=str, ensure_ascii=True).encode("ascii") + b"\n"
    except (ValueError, RecursionError):  # nested too deep to write back: the line says where
        return orjson.dumps({**entry, "record": None}, default=str) + b"\n"


class _Progress:
    """A progress bar on a terminal, a plain line every few seconds otherwise (stderr)."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.stream = stream
        self.name = name
        self.tty = stream.isatty()
        self.last = 0.0

    def __call__(self, stats: ImportStats, done_bytes: int, size: int | None) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 5:
            return
        self.last = now
        rate = stats.rate
        text = f"{self.name}: {stats.read:,} rows, {rate:,.0f} rows/s"
        if size:
            frac = min(done_bytes / size, 1.0)
            eta = (stats.seconds / frac - stats.seconds) if frac > 0 else 0
            if self.tty:
                bar = "#" * int(frac * 30)
                text = f"[{bar:<30}] {frac:4.0%} {text}, ETA {eta:,.0f}s"
            else:
                text += f", {frac:.0%}, ETA {eta:,.0f}s"
        if self.tty:
            self.stream.write("\r" + text[:120].ljust(120))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


class Command(BaseCommand):
    help = (
        "Load CDRs from CSV (header = field names, empty cell = null) or NDJSON files; '-' "
        "reads stdin, .gz is decompressed. Rows are validated like the API's ingest; rows "
        "already stored (same id, or same call_id/started_at/caller/callee) are counted as "
        "duplicates. --strict (default): a file with any invalid row loads nothing. "
        "--lenient: load the valid rows and list the others in --rejects. Exit status 1 when "
        "any row was rejected. A file must end with the export's trailer (its row count) "
        "unless --no-trailer is given: a file cut short is refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE")
        parser.add_argument("--format", choices=("csv", "ndjson"), help="default: by extension")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--strict", dest="strict", action="store_true", default=True)
        mode.add_argument("--lenient", dest="strict", action="store_false")
        parser.add_argument(
            "--rejects",
            metavar="FILE",
            help="write rejected rows here, one JSON object a line: file, line, errors, record",
        )
        parser.add_argument(
            "--no-trailer",
            dest="require_trailer",
            action="store_false",
            help="accept a file that does not end with an export trailer (one not made by "
            "the export or generate_cdrs); trailers present are still checked",
        )
        parser.add_argument(
            "--batch-rows",
            type=int,
            default=10_000,
            help="rows per batch and transaction (default 10000)",
        )
        parser.add_argument("--quiet", action="store_true", help="no progress output")
        parser.add_argument(
            "--no-backfill",
            dest="backfill",
            action="store_false",
            help="on partitioned PostgreSQL, insert rows of empty months row by row too "
            "instead of loading them as new partitions (see README 'Fast backfill')",
        )
        parser.add_argument(
            "--analyze-threshold",
            type=int,
            default=ANALYZE_THRESHOLD,
            metavar="ROWS",
            help="on PostgreSQL, ANALYZE the table when the run created at least ROWS CDRs "
            f"(default {ANALYZE_THRESHOLD}), so queries are planned with fresh statistics",
        )
        parser.add_argument(
            "--no-analyze", action="store_true", help="never ANALYZE (leave it to autovacuum)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rejects_out = open(options["rejects"], "wb") if options["rejects"] else None  # noqa: SIM115
        any_rejected = False
        created = 0
        try:
            for path in options["files"]:
                name = "stdin" if path == "-" else path

                def on_reject(
                    line: int, errors: dict[str, str], record: Any, name: str = name
                ) -> None:
                    if rejects_out is not None:
                        entry = {"file": name, "line": line, "errors": errors, "record": record}
                        rejects_out.write(reject_line(entry))

                progress = _Progress(self.stderr._out, name)  # type: ignore[arg-type]
                try:
                    stats = import_file(
                        path,
                        fmt=options["format"],
                        strict=options["strict"],
                        require_trailer=options["require_trailer"],
                        on_reject=on_reject,
                        on_progress=None if options["quiet"] else progress,
                        batch_rows=options["batch_rows"],
                        backfill=options["backfill"],
                    )
                except ImportFileError as exc:
                    kept = (
                        "" if options["strict"] else " (lenient: batches committed before it stay)"
                    )
                    raise CommandError(f"{exc}{kept}") from exc
                except (OperationalError, InterfaceError) as exc:
                    progress.done()
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise CommandError(
                        f"{name}: database connection lost ({reason}); "
                        + (
                            "nothing from this file was loaded"
                            if options["strict"]
                            else "every committed batch is complete"
                        )
                        + ". Re-run the same command to finish: stored rows count as duplicates."
                    ) from exc
                except KeyboardInterrupt:
                    progress.done()
                    self.stderr.write(
                        f"{name}: interrupted; "
                        + (
                            "nothing from this file was loaded"
                            if options["strict"]
                            else "every committed batch is complete; re-run to finish"
                        )
                    )
                    sys.exit(130)
                progress.done()
                for line, errors in stats.rejects[:20]:
                    why = "; ".join(f"{k}: {v}" for k, v in errors.items())
                    self.stderr.write(f"{name}: line {line}: {why}")
                if stats.rejected > 20:
                    self.stderr.write(f"{name}: ... and {stats.rejected - 20} more rejected rows")
                if stats.rejected and options["strict"]:
                    self.stderr.write(
                        f"{name}: {stats.rejected} invalid row(s): nothing loaded (--strict). "
                        "Fix them, or use --lenient --rejects FILE to load the valid rows."
                    )
                any_rejected |= stats.rejected > 0
                created += stats.created
                self.stdout.write(
                    f"{name}: read {stats.read}, created {stats.created}, duplicates "
                    f"{stats.duplicates}, rejected {stats.rejected}, {stats.seconds:.2f} s, "
                    f"{stats.rate:,.0f} rows/s"
                )
                if stats.backfill_months:
                    self.stdout.write(
                        f"{name}: {stats.backfilled} of them loaded as "
                        f"{stats.backfill_months} new month partition(s)"
                    )
        finally:
            if rejects_out is not None:
                rejects_out.close()
        if not options["no_analyze"] and analyze_after_import(
            created, options["analyze_threshold"]
        ):
            self.stderr.write(f"analyzed the CDR table ({created} CDRs created)")
        if any_rejected:
            sys.exit(1)
