"""Test data through the real write path (validate_cdr + cdr_ingest): no hand-made rows."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection

from cdrs import citus
from cdrs.generator import generate_cdrs
from cdrs.models import Cdr, CdrNaturalKey
from cdrs.partitions import has_registry
from cdrs.services import cdr_ingest
from cdrs.validation import validate_cdr
from cdrs.values import format_ts

_seq = itertools.count(1)


def cdr_payload(**overrides: Any) -> dict[str, Any]:
    """A valid wire-form CDR; every call gives a distinct call_id."""
    n = next(_seq)
    default_start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=n)
    started = overrides.pop("started", default_start)
    payload: dict[str, Any] = {
        "caller": "101",
        "caller_domain": "pbx.example.com",
        "caller_display_name": "Alice",
        "callee": "102",
        "callee_domain": "pbx.example.com",
        "callee_display_name": "Bob",
        "started_at": format_ts(started),
        "rang_at": format_ts(started + timedelta(seconds=1)),
        "answered_at": format_ts(started + timedelta(seconds=5)),
        "ended_at": format_ts(started + timedelta(seconds=65)),
        "call_id": f"call-{n}@pbx.example.com",
        "direction": "EXTENSION_CALL",
        "end_reason": "CALLER_DISCONNECTED",
        "reroute_reason": "",
        "status_code": 200,
        "destination": "102",
        "outbound_caller_id": "",
        "did_cid": "",
        "trunk": "",
        "duration": 60,
        "service_number": "",
        "user_data": "",
    }
    payload.update(overrides)
    return payload


def create_cdrs(*payloads: dict[str, Any]) -> list[int]:
    """Store CDRs through the ingest service; returns their integer ids in order."""
    return cdr_ingest(rows=[validate_cdr(dict(p)) for p in payloads]).ids


def create_cdr(**overrides: Any) -> int:
    return create_cdrs(cdr_payload(**overrides))[0]


def create_generated(rows: int, seed: int = 7) -> list[int]:
    """``rows`` realistic CDRs from the project's generator."""
    return create_cdrs(*generate_cdrs(rows, seed=seed))


def delete_all_cdrs() -> None:
    """Empty the CDR table between two steps of a test (say, an export and its re-import).

    The natural keys go too: on Citus they are a table of their own (``cdrs.citus``), and a
    re-sent CDR whose key is still there counts as a duplicate; so do the ids of the registry
    there (no trigger on Citus), or a re-sent CDR would be given a new id.
    """
    Cdr.objects.all().delete()
    CdrNaturalKey.objects.all().delete()
    if citus.in_use() and has_registry():
        with connection.cursor() as cur:
            cur.execute(f"DELETE FROM {citus.ID_REGISTRY}")
