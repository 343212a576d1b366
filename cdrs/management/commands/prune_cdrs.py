"""manage.py prune_cdrs --before DATE | --older-than 400d [--dry-run] [--batch N]"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cdrs import partitions, retention

_AGE_RE = re.compile(r"([1-9][0-9]{0,5})d")


def parse_before(text: str) -> datetime:
    """``2024-01-01`` (midnight UTC) or an ISO 8601 date-time with an offset."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--before: not a date (YYYY-MM-DD) or date-time: {text!r}") from None
    if value.tzinfo is None:
        if len(text) > 10:
            raise CommandError("--before: a date-time needs its offset (Z or +hh:mm)")
        value = value.replace(tzinfo=UTC)
    return value


def parse_age(text: str) -> timedelta:
    match = _AGE_RE.fullmatch(text)
    if not match:
        raise CommandError(f"--older-than: a number of days such as 400d, not {text!r}")
    return timedelta(days=int(match.group(1)))


class Command(BaseCommand):
    help = (
        "Delete every CDR that started before a bound: --before DATE, or --older-than Nd "
        "(default: CDR_RETENTION_DAYS days, when set). Refuses to run without a bound. On "
        "partitioned PostgreSQL whole months go as partitions (milliseconds of lock), the "
        "rest in batches; the count and the statistics rollups lose the pruned calls too. "
        "--dry-run only reports what would go. Safe from cron (e.g. daily)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        bound = parser.add_mutually_exclusive_group()
        bound.add_argument("--before", help="a date (YYYY-MM-DD, UTC) or ISO date-time")
        bound.add_argument("--older-than", help="an age in days, e.g. 400d")
        parser.add_argument("--dry-run", action="store_true", help="report, remove nothing")
        parser.add_argument(
            "--batch",
            type=int,
            default=retention.BATCH_ROWS,
            help=f"rows per DELETE transaction (default {retention.BATCH_ROWS})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch"] < 1:
            raise CommandError("--batch must be 1 or more")
        if options["before"]:
            before = parse_before(options["before"])
        elif options["older_than"]:
            before = datetime.now(UTC) - parse_age(options["older_than"])
        elif settings.CDR_RETENTION_DAYS > 0:
            before = datetime.now(UTC) - timedelta(days=settings.CDR_RETENTION_DAYS)
        else:
            raise CommandError(
                "no bound: give --before DATE or --older-than Nd (or set CDR_RETENTION_DAYS)"
            )
        verb = "would remove" if options["dry_run"] else "removing"
        self.stdout.write(f"{verb} every CDR that started before {before.isoformat()}")
        try:
            report = retention.prune(
                before=before,
                dry_run=options["dry_run"],
                batch_rows=options["batch"],
                say=self.stdout.write,
            )
        except partitions.PartitionError as exc:  # a long read held the table: run it again
            raise CommandError(f"{exc}; months dropped so far stay dropped, run it again") from None
        whole = sum(rows for _, rows, _ in report.partitions)
        summary = (
            f"{report.rows:,} CDRs: {whole:,} in {len(report.partitions)} whole partition(s), "
            f"{report.deleted:,} deleted in batches"
        )
        if report.dry_run:
            self.stdout.write(f"dry run, nothing removed: {summary}")
        else:
            self.stdout.write(
                f"removed {summary} ({report.delete_seconds:.2f} s); ids released from the "
                f"registry in {report.registry_seconds:.2f} s"
            )
