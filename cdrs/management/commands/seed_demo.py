"""manage.py seed_demo [--if-empty] [--rows N]: demo CDRs and a token to try the API with."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from cdrs.generator import DEMO_ROWS, demo_cdrs
from cdrs.models import ApiToken, Cdr
from cdrs.services import cdr_ingest
from cdrs.tokens import mint_token
from cdrs.validation import validate_cdr


class Command(BaseCommand):
    help = "Load demo CDRs from the generator and print a token and a curl line to try."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=DEMO_ROWS)
        parser.add_argument("--if-empty", action="store_true", help="only into an empty database")
        parser.add_argument("--port", type=int, default=8887)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["if_empty"] and (Cdr.objects.exists() or ApiToken.objects.exists()):
            return
        rows = [validate_cdr(item) for item in demo_cdrs(options["rows"])]
        created = 0
        for start in range(0, len(rows), 1000):
            created += cdr_ingest(rows=rows[start : start + 1000]).created
        # The demo token is the one token with every scope on purpose (a local trial reads,
        # sees costs and ingests); create_token's default is read only.
        minted = mint_token(username="demo", scopes=("read", "billing", "write"), name="demo")
        port = options["port"]
        scopes = ", ".join(minted.token.scopes)
        self.stdout.write(
            f"\nLoaded {created} demo CDRs. A demo token with every scope ({scopes}; "
            "shown once):\n\n"
            f"  {minted.plain}\n\nTry:\n\n"
            f"  curl -H 'Authorization: Bearer {minted.plain}' "
            f"'http://127.0.0.1:{port}/api/cdrs?top=2'\n\n"
            f"API docs: http://127.0.0.1:{port}/api/docs\n"
        )
