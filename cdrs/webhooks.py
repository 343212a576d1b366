"""The PortSIP webhook's writes: an event becomes a stored CDR, is ignored, or is dead-lettered.

A ``call_cdr`` goes through ``cdrs.portsip.map_call_cdr``, then the same ``validate_cdr`` and
ingest (de-duplication included) as ``POST /api/cdrs``. PortSIP retries anything but a 200
and drops the event after five retries, so an event that cannot be stored is kept whole in
``PortsipDeadLetter`` and answered 200: a retry would fail the same way, and
``manage.py replay_portsip_events`` stores it once the mapping is fixed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from django.db import transaction
from django.utils import timezone

from cdrs import metrics
from cdrs.ids import encode_id
from cdrs.models import ApiToken, PortsipDeadLetter
from cdrs.portsip import (
    CALL_CDR,
    IGNORED_EVENT_TYPES,
    PortsipMappingError,
    event_type_of,
    map_call_cdr,
)
from cdrs.services import IngestResult, OutsideTokenDomains, cdr_ingest_for_token
from cdrs.validation import CdrInvalid, validate_cdr
from cdrs.values import loads_json

log = logging.getLogger("cdrs.webhook")

# Longest event_type echoed back or stored; PortSIP's are under 20 characters.
EVENT_TYPE_MAX: Final = 64


class EventNotJson(ValueError):
    """The body is not a JSON text at all (answered 400, not dead-lettered)."""


class EventRejected(Exception):
    """An event that cannot become a CDR; ``entry`` is the contract's error entry."""

    def __init__(self, entry: dict[str, Any]) -> None:
        super().__init__(entry["message"])
        self.entry = entry


@dataclass
class WebhookOutcome:
    """What became of one event: stored (or duplicate), ignored, or dead-lettered."""

    event_type: str  # as sent (truncated), "" when missing
    result: IngestResult | None = None
    ignored: bool = False
    dead_letter: PortsipDeadLetter | None = None


def parse_event(raw: bytes) -> tuple[str, Any]:
    """(text, value) of a JSON body: decimals exact, every number bounded (``loads_json``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventNotJson("request body is not UTF-8") from exc
    if not text.strip():
        raise EventNotJson("request body is empty: expected a PortSIP event (a JSON object)")
    try:
        # A UTF-8 byte order mark is not JSON, but harmless: skip it.
        value = loads_json(text.removeprefix("\ufeff"))
    except (ValueError, RecursionError) as exc:
        raise EventNotJson(f"request body is not JSON: {str(exc)[:200]}") from exc
    return text, value


def _rejected(message: str, fields: dict[str, str] | None = None) -> EventRejected:
    detail = {"fields": fields} if fields else {}
    return EventRejected({"code": "VALIDATE_FAILED", "message": message, "detail": detail})


def _first_problem(errors: dict[str, str]) -> str:
    key, why = next(iter(errors.items()))
    return f"{key}: {why}"


def _cdr_row(event: Any) -> dict[str, Any]:
    """The validated CDR row of a call_cdr event, or EventRejected."""
    if not isinstance(event, dict):
        raise _rejected("body must be one JSON object: one PortSIP event")
    event_type = event_type_of(event)
    if event_type is None:
        raise _rejected("event_type is missing (or not a string): not a PortSIP event")
    if event_type != CALL_CDR:
        raise _rejected(f"event_type {event_type!r} carries no CDR")
    try:
        mapped = map_call_cdr(event)
    except PortsipMappingError as exc:
        raise _rejected(
            f"call_cdr could not be mapped: {_first_problem(exc.errors)}", exc.errors
        ) from exc
    try:
        return validate_cdr(mapped)
    except CdrInvalid as exc:
        raise _rejected(
            f"call_cdr failed validation: {_first_problem(exc.errors)}", exc.errors
        ) from exc


def _metric_type(event_type: str | None) -> str:
    """A bounded label: PortSIP's documented types, 'other' or 'none'."""
    if event_type is None:
        return "none"
    if event_type == CALL_CDR or event_type in IGNORED_EVENT_TYPES:
        return event_type
    return "other"


def _sent_type(event: Any) -> str:
    raw = event.get("event_type") if isinstance(event, dict) else None
    return raw[:EVENT_TYPE_MAX] if isinstance(raw, str) else ""


def receive_portsip_event(text: str, event: Any, *, token: ApiToken) -> WebhookOutcome:
    """Store, ignore or dead-letter one parsed event sent with ``token``.

    Raises OutsideTokenDomains (nothing stored) when a domain-limited token sends a CDR of
    another domain.
    """
    event_type = event_type_of(event) if isinstance(event, dict) else None
    label = _metric_type(event_type)
    if event_type is not None and event_type != CALL_CDR:
        metrics.count_portsip_event(label, "ignored")
        return WebhookOutcome(event_type=_sent_type(event), ignored=True)
    try:
        row = _cdr_row(event)
    except EventRejected as exc:
        letter = _dead_letter(text, event, token, exc.entry)
        metrics.count_portsip_event(label, "dead_lettered")
        return WebhookOutcome(event_type=_sent_type(event), dead_letter=letter)
    try:
        result = cdr_ingest_for_token(rows=[row], token=token)
    except OutsideTokenDomains:
        metrics.count_portsip_event(label, "forbidden")
        log.warning(
            "portsip call_cdr outside the token's domains, not stored",
            extra={"token_prefix": token.prefix},
        )
        raise
    metrics.count_portsip_event(label, "created" if result.created else "duplicate")
    return WebhookOutcome(event_type=_sent_type(event), result=result)


def _dead_letter(
    text: str, event: Any, token: ApiToken, entry: dict[str, Any]
) -> PortsipDeadLetter:
    with transaction.atomic():
        letter = PortsipDeadLetter.objects.create(
            token_prefix=token.prefix,
            token_domains=list(token.domains or ()),
            event_type=_sent_type(event),
            body=text,
            error=entry,
        )
    log.warning(
        "portsip event dead-lettered: %s",
        entry["message"],
        extra={"token_prefix": token.prefix, "dead_letter": letter.pk},
    )
    return letter


@dataclass
class ReplayOutcome:
    letter: PortsipDeadLetter
    stored: bool
    skipped: bool = False  # already replayed before
    result: IngestResult | None = None


def replay_dead_letter(pk: int) -> ReplayOutcome:
    """Map a dead-lettered event again and store it, under the sender's domain limit then.

    On success the letter is marked replayed (kept, for the record); on failure its error
    is updated. Either way ``replay_attempts`` counts the try.
    """
    with transaction.atomic():
        letter = PortsipDeadLetter.objects.select_for_update().get(pk=pk)
        if letter.replayed_at is not None:
            return ReplayOutcome(letter=letter, stored=False, skipped=True)
        letter.replay_attempts += 1
        # The limit the sender had when the event arrived, whatever became of its token since.
        sender = ApiToken(prefix=letter.token_prefix, domains=letter.token_domains)
        try:
            _text, event = parse_event(letter.body.encode("utf-8"))
            result = cdr_ingest_for_token(rows=[_cdr_row(event)], token=sender)
        except EventRejected as exc:
            letter.error = exc.entry
        except OutsideTokenDomains:
            letter.error = {
                "code": "FORBIDDEN",
                "message": "the CDR's caller_domain and callee_domain are outside the "
                "sending token's domains",
                "detail": {},
            }
        else:
            letter.replayed_at = timezone.now()
            letter.replay_result = {
                "created": result.created,
                "duplicates": result.duplicates,
                "ids": [encode_id(i) for i in result.ids if i],
            }
            letter.save()
            return ReplayOutcome(letter=letter, stored=True, result=result)
        letter.save()
        return ReplayOutcome(letter=letter, stored=False)
