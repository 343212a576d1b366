"""manage.py replay_portsip_events [--id N | --all]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cdrs.ids import encode_id
from cdrs.models import PortsipDeadLetter
from cdrs.webhooks import replay_dead_letter


class Command(BaseCommand):
    help = (
        "Store dead-lettered PortSIP webhook events again, after a fix to the mapping: one "
        "(--id N) or every one not stored yet (--all). Each is mapped, validated, checked "
        "against the sending token's domains and de-duplicated like a new event. Exit status "
        "1 when any is still refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--id", type=int, dest="pk", help="the dead letter's id (admin)")
        which.add_argument("--all", action="store_true", help="every one not stored yet")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["all"]:
            pks = list(
                PortsipDeadLetter.objects.filter(replayed_at__isnull=True)
                .order_by("received_at", "id")
                .values_list("pk", flat=True)
            )
        else:
            if not PortsipDeadLetter.objects.filter(pk=options["pk"]).exists():
                raise CommandError(f"no dead letter with id {options['pk']}")
            pks = [options["pk"]]
        stored = refused = skipped = 0
        for pk in pks:
            outcome = replay_dead_letter(pk)
            letter = outcome.letter
            if outcome.skipped:
                skipped += 1
                self.stdout.write(f"#{pk}: already stored by a replay at {letter.replayed_at}")
            elif outcome.stored and outcome.result is not None:
                stored += 1
                ids = ", ".join(encode_id(i) for i in outcome.result.ids if i)
                kind = "created" if outcome.result.created else "duplicate of"
                self.stdout.write(f"#{pk}: stored ({kind} {ids or 'a CDR'})")
            else:
                refused += 1
                self.stderr.write(f"#{pk}: still refused: {letter.error.get('message', '')}")
        self.stdout.write(
            f"{len(pks)} dead letter(s): {stored} stored, {refused} still refused, "
            f"{skipped} already stored"
        )
        if refused:
            raise CommandError(f"{refused} dead letter(s) still refused", returncode=1)
