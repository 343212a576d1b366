"""Deterministic, realistic CDRs for demos, tests and benchmarks (``generate_cdrs``).

The same (rows, seed) always gives the same CDRs, as wire-form dicts that ``validate_cdr``
and ``import_cdrs`` accept.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from cdrs.fields import END_REASONS
from cdrs.ids import encode_id, snowflake
from cdrs.values import format_ts, parse_rfc3339

_DOMAINS = ("pbx.example.com", "sales.example.com", "support.example.org", "acme.test")
_TRUNKS = ("", "twilio-eu", "sipgate", "bt-wholesale", "telnyx-us")
_FIRST = ("Alice", "Bob", "Chloé", "Dmitri", "Eve", "Fatima", "Grace", "Hiro", "Ines", "José")
_LAST = ("Martin", "Smith", "Müller", "O'Brien", "Rossi", "Tanaka", "Nguyen", "García")
_REROUTES = ("", "", "", "", "TRANSFER", "OVERFLOW", "FORWARDING_NO_ANSWER", "QUEUE_EXIT")


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _external(rng: random.Random) -> str:
    return "+" + rng.choice(("44", "33", "49", "1", "81")) + str(rng.randrange(10**8, 10**10))


def generate_cdrs(
    rows: int, *, seed: int = 1, end: datetime | None = None, days: int = 365
) -> Iterator[dict[str, Any]]:
    """``rows`` CDRs spread over ``days`` days before ``end``, newest last."""
    rng = random.Random(seed)
    end = end or datetime(2026, 1, 1, tzinfo=UTC)
    span = days * 86400
    extensions = [str(100 + i) for i in range(400)]
    for n in range(rows):
        started = end - timedelta(seconds=span - (span * n) // max(rows, 1))
        direction = rng.choices(
            ("INBOUND_CALL", "OUTBOUND_CALL", "EXTENSION_CALL", "INBOUND_OUTBOUND_CALL"),
            weights=(40, 35, 22, 3),
        )[0]
        ext = rng.choice(extensions)
        domain = rng.choice(_DOMAINS)
        if direction == "INBOUND_CALL":
            caller, callee, trunk = _external(rng), ext, rng.choice(_TRUNKS[1:])
        elif direction == "OUTBOUND_CALL":
            caller, callee, trunk = ext, _external(rng), rng.choice(_TRUNKS[1:])
        else:
            caller, callee, trunk = ext, rng.choice(extensions), ""
        answered = rng.random() < 0.72
        ring = rng.randrange(1, 25)
        talk = int(rng.expovariate(1 / 180)) if answered else 0
        rang_at = started + timedelta(seconds=1)
        answered_at = rang_at + timedelta(seconds=ring) if answered else None
        ended_at = (answered_at or rang_at) + timedelta(seconds=talk if answered else ring)
        cost = None
        if direction == "OUTBOUND_CALL" and answered:
            cost = Decimal(f"{(talk * rng.choice((0.0012, 0.0035, 0.0149))):.4f}")
        yield {
            "caller": caller,
            "caller_domain": domain,
            "caller_display_name": _name(rng) if rng.random() < 0.7 else "",
            "callee": callee,
            "callee_domain": domain,
            "callee_display_name": _name(rng) if rng.random() < 0.5 else "",
            "started_at": format_ts(started),
            "rang_at": format_ts(rang_at),
            "answered_at": format_ts(answered_at),
            "ended_at": format_ts(ended_at),
            "call_id": f"{rng.getrandbits(64):016x}@{domain}",
            "direction": direction,
            "end_reason": rng.choice(END_REASONS[:2]) if answered else rng.choice(END_REASONS),
            "reroute_reason": rng.choice(_REROUTES),
            "status_code": 200 if answered else rng.choice((486, 487, 480, 603, 404)),
            "destination": callee,
            "outbound_caller_id": "+4420" + str(rng.randrange(10**7, 10**8))
            if direction == "OUTBOUND_CALL"
            else "",
            "did_cid": "+4420" + str(rng.randrange(10**7, 10**8))
            if direction == "INBOUND_CALL"
            else "",
            "trunk": trunk,
            "duration": talk,
            "cost": cost,
            "billed_account": f"ACC-{int(ext) % 40:04d}" if cost is not None else "",
            "service_number": "",
            "user_data": "",
        }


# The demo dataset `bin/run` loads (manage.py seed_demo): the README's examples and the
# OpenAPI examples are taken from it, so they answer with data on a fresh start.
DEMO_ROWS = 2000
DEMO_SEED = 1
DEMO_DAYS = 30


def demo_cdrs(rows: int = DEMO_ROWS) -> Iterator[dict[str, Any]]:
    """The demo CDRs with fixed ids (snowflakes of started_at, row number as low bits).

    Fixed ids make the same demo CDR reachable by the same id on every fresh install.
    """
    for n, item in enumerate(generate_cdrs(rows, seed=DEMO_SEED, days=DEMO_DAYS)):
        item["id"] = encode_id(snowflake(parse_rfc3339(item["started_at"]), n))
        yield item
