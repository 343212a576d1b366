"""manage.py revoke_token PREFIX"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cdrs.models import ApiToken
from cdrs.tokens import TOKEN_PREFIX


class Command(BaseCommand):
    help = "Disable the API token with this prefix (the part after 'cdr_', or the whole token)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        prefix: str = options["prefix"]
        if prefix.startswith(TOKEN_PREFIX):
            prefix = prefix[len(TOKEN_PREFIX) :].split("_", 1)[0]
        updated = ApiToken.objects.filter(prefix=prefix).update(enabled=False)
        if not updated:
            raise CommandError(f"no token with prefix {prefix!r}")
        self.stdout.write(f"Revoked token {prefix}.")
