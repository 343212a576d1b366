"""manage.py cdr_partitions [--ensure] [--split-default] [--ahead N] [--list]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cdrs import partitions


class Command(BaseCommand):
    help = (
        "PostgreSQL: keep the monthly partitions of the CDR table. --ensure creates the "
        "month partitions from this month to --ahead months after it, cut out of the spill "
        "partitions that cover every other range (idempotent; migrate runs it too; safe from "
        "cron, e.g. daily). --split-default moves rows that landed in a spill partition (the "
        "role of a default partition) into a new partition for their month. --list shows "
        "the partitions. On SQLite there is nothing to do (exit status 0)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ensure", action="store_true", help="create missing partitions")
        parser.add_argument(
            "--split-default",
            action="store_true",
            help="move the rows of spill partitions into month partitions",
        )
        parser.add_argument(
            "--ahead",
            type=int,
            default=partitions.MONTHS_AHEAD,
            help=f"months after this one to create (default {partitions.MONTHS_AHEAD})",
        )
        parser.add_argument("--list", action="store_true", help="list the partitions")

    def handle(self, *args: Any, **options: Any) -> None:
        if not (options["ensure"] or options["split_default"] or options["list"]):
            raise CommandError("say what to do: --ensure, --split-default and/or --list")
        if options["ahead"] < 0:
            raise CommandError("--ahead must be 0 or more")
        if not partitions.is_partitioned():
            self.stdout.write("nothing to do on SQLite (the CDR table is not partitioned)")
            return

        def say(text: str) -> None:
            self.stdout.write(text)

        try:
            if options["split_default"]:
                moved = partitions.split_default(say=say)
                self.stdout.write(f"split-default: {sum(moved.values()):,} rows moved")
            if options["ensure"]:
                created = partitions.ensure(ahead=options["ahead"], say=say)
                self.stdout.write(f"ensure: {len(created)} partition(s) created")
        except partitions.PartitionError as exc:  # a long read held the table: run it again
            raise CommandError(f"{exc}; nothing changed, run it again later") from None
        if options["list"]:
            for p in partitions.partitions():
                self.stdout.write(f"{p.name}\t~{p.rows_estimate:,} rows")
