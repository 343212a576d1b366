"""manage.py create_token USERNAME [--scope ...] [--domain ...] [--expires-in DAYS]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cdrs.tokens import SCOPES, mint_token


class Command(BaseCommand):
    help = (
        "Create an API token for USERNAME (the user is created if missing). The token is "
        "printed once, alone on the last line of stdout; only its hash is stored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--scope",
            action="append",
            choices=SCOPES,
            help="read, billing or write; repeat for several (default: read only; billing and "
            "write are granted only when named)",
        )
        parser.add_argument(
            "--domain",
            action="append",
            default=[],
            help="limit the token to CDRs of this SIP domain; repeat for several",
        )
        parser.add_argument("--expires-in", type=int, metavar="DAYS", help="expire after DAYS")
        parser.add_argument("--name", default="", help="a note on what the token is for")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            minted = mint_token(
                username=options["username"],
                scopes=options["scope"] or ["read"],
                domains=options["domain"],
                expires_in_days=options["expires_in"],
                name=options["name"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        token = minted.token
        self.stderr.write(
            f"Created token {token.prefix} for {token.user} with scopes "
            f"{','.join(token.scopes)}"
            + (f", domains {','.join(token.domains)}" if token.domains else "")
            + (f", expiring {token.expires_at:%Y-%m-%d %H:%M}Z" if token.expires_at else "")
            + ". Store it now: it cannot be shown again."
        )
        self.stdout.write(minted.plain)
