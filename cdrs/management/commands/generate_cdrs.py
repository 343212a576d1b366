"""manage.py generate_cdrs --rows N --seed S [--format csv|ndjson] [-o FILE] [--no-trailer]"""

from __future__ import annotations

import gzip
import sys
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandParser

from cdrs import jsonenc
from cdrs.export import csv_trailer, ndjson_trailer
from cdrs.fields import ALL_FIELD_NAMES
from cdrs.generator import generate_cdrs
from cdrs.wire import CsvLines, csv_cell, csv_writer


class Command(BaseCommand):
    help = (
        "Write N deterministic, realistic CDRs (same --seed, same output) as CSV or NDJSON, "
        "ready for import_cdrs: they end with the export's trailer (row count) unless "
        "--no-trailer. Without ids: import assigns snowflakes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=1000)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--days", type=int, default=365, help="spread over this many days")
        parser.add_argument("--format", choices=("csv", "ndjson"), default="ndjson")
        parser.add_argument("-o", "--output", default="-", help="file (.gz compresses); - = stdout")
        parser.add_argument(
            "--no-trailer",
            dest="trailer",
            action="store_false",
            help="no export trailer line at the end (rows only, e.g. for a bare COPY)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        out_path: str = options["output"]
        out: IO[bytes] | gzip.GzipFile
        if out_path == "-":
            out = sys.stdout.buffer
        elif out_path.endswith(".gz"):
            out = gzip.open(out_path, "wb", compresslevel=3)  # noqa: SIM115
        else:
            out = open(out_path, "wb")  # noqa: SIM115
        fields = tuple(n for n in ALL_FIELD_NAMES if n != "id")
        rows = generate_cdrs(options["rows"], seed=options["seed"], days=options["days"])
        try:
            if options["format"] == "csv":
                buffer = CsvLines()
                writer = csv_writer(buffer)
                writer.writerow(fields)
                for n, row in enumerate(rows, 1):
                    writer.writerow([csv_cell(row[f]) for f in fields])
                    if n % 5000 == 0:
                        out.write(buffer.pop().encode())
                if options["trailer"]:
                    buffer.write(csv_trailer(max(options["rows"], 0)))
                out.write(buffer.pop().encode())
            else:
                for row in rows:
                    out.write(jsonenc.dumps(row) + b"\n")
                if options["trailer"]:
                    out.write(ndjson_trailer(max(options["rows"], 0)))
        finally:
            if out_path != "-":
                out.close()
            else:
                out.flush()
