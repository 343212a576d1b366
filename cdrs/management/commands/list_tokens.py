"""manage.py list_tokens"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from cdrs.models import ApiToken


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


class Command(BaseCommand):
    help = "List API tokens: prefix, user, scopes, domains, expiry, last use (never secrets)."

    def handle(self, *args: Any, **options: Any) -> None:
        rows = [("PREFIX", "USER", "SCOPES", "DOMAINS", "EXPIRES", "LAST USED", "STATE")]
        for t in ApiToken.objects.select_related("user").order_by("created_at"):
            rows.append(
                (
                    t.prefix,
                    t.user.get_username(),
                    ",".join(t.scopes),
                    ",".join(t.domains) or "(all)",
                    _when(t.expires_at),
                    _when(t.last_used_at),
                    "enabled" if t.enabled else "revoked",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            self.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            )
