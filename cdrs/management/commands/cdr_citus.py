"""manage.py cdr_citus [--distribute]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

from cdrs import citus


class Command(BaseCommand):
    help = (
        "Show how the CDR tables are distributed on a Citus coordinator (nodes, tables, "
        "shards). --distribute distributes them now, as migrate does on a database that has "
        "the citus extension: for a database migrated before Citus was added to it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--distribute", action="store_true", help="distribute the CDR tables (idempotent)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("not PostgreSQL: Citus needs a PostgreSQL coordinator")
        with connection.cursor() as cur:
            if not citus.extension_installed(cur):
                raise CommandError(
                    "the citus extension is not installed in this database "
                    "(CREATE EXTENSION citus, then register the workers: see docs/scaling.md)"
                )
        if options["distribute"]:
            with transaction.atomic():
                citus.distribute(connection)
        for line in citus.describe(connection):
            self.stdout.write(line)
