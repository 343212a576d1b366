"""The hourly rollup answers exactly what the direct GROUP BY answers, whenever it is used."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdrs import rollup
from cdrs.generator import generate_cdrs
from cdrs.models import CdrHourlyStats, CdrHourlyTotals
from cdrs.query.options import parse_list_options
from cdrs.query.stats_options import parse_stats_options
from cdrs.stats import cdr_stats
from cdrs.tokens import mint_token
from tests.factories import cdr_payload, create_cdrs, create_generated

pytestmark = pytest.mark.django_db

START = datetime(2025, 1, 1, tzinfo=UTC)  # the generator's last 365 days end 2026-01-01


def _stats(token: Any, params: dict[str, str], *, use_rollup: bool) -> Any:
    own = {k: [v] for k, v in params.items() if k in ("group_by", "tz")}
    rest = {k: [v] for k, v in params.items() if k not in ("group_by", "tz")}
    return cdr_stats(
        token=token,
        options=parse_list_options(rest, billing=True),
        stats=parse_stats_options(own, billing=True),
        billing=True,
        use_rollup=use_rollup,
    )


def _totals() -> list[tuple[int, tuple[int, ...]]]:
    rows: dict[int, list[int]] = {}
    # Rows as plain mappings: the measures and dimensions are named in rollup, not literals.
    for r in cast("Iterable[Mapping[str, Any]]", CdrHourlyTotals.objects.values()):
        acc = rows.setdefault(r["hour"], [0] * len(rollup.MEASURES))
        for i, m in enumerate(rollup.MEASURES):
            acc[i] += r[m]
    return sorted((k, tuple(v)) for k, v in rows.items())


def _table() -> list[tuple[Any, ...]]:
    """The rollup summed over slots, in a comparable form."""
    rows: dict[tuple[Any, ...], list[int]] = {}
    for r in cast("Iterable[Mapping[str, Any]]", CdrHourlyStats.objects.values()):
        key = (r["hour"], *(r[d] for d in rollup.DIMENSIONS))
        acc = rows.setdefault(key, [0] * len(rollup.MEASURES))
        for i, m in enumerate(rollup.MEASURES):
            acc[i] += r[m]
    return sorted((k, tuple(v)) for k, v in rows.items())


@pytest.fixture
def generated(db: None) -> None:
    create_generated(300, seed=15)


@st.composite
def servable(draw: st.DrawFn) -> dict[str, str]:
    """Requests the rollup can serve: whole-hour bounds, exact filters on its dimensions."""
    params: dict[str, str] = {}
    if draw(st.booleans()):
        lo = START + timedelta(hours=draw(st.integers(0, 365 * 24)))
        params["started_after"] = lo.strftime("%Y-%m-%dT%H:%M:%SZ")
        hi = lo + timedelta(hours=draw(st.integers(1, 60 * 24)))
        params["started_before"] = hi.strftime("%Y-%m-%dT%H:%M:%SZ")
    if draw(st.booleans()):
        params["direction"] = draw(st.sampled_from(("INBOUND_CALL", "OUTBOUND_CALL")))
    if draw(st.booleans()):
        params["trunk"] = draw(st.sampled_from(("sipgate", "twilio-eu", "telnyx-us")))
    if draw(st.booleans()):
        params["filter"] = draw(
            st.sampled_from(("caller_domain eq 'acme.test'", "end_reason eq 'CANCELLED'"))
        )
    params["group_by"] = draw(
        st.sampled_from(("day", "week", "month", "direction", "day,trunk", "callee_domain"))
    )
    params["tz"] = draw(st.sampled_from(("UTC", "Europe/Berlin", "America/Los_Angeles")))
    return params


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(params=servable(), limited=st.booleans())
def test_rollup_answers_equal_the_direct_group_by(generated, params, limited):
    domains = ("acme.test", "sales.example.com") if limited else ()
    token = mint_token(username="r", scopes=("read", "billing"), domains=domains).token
    from_rollup = _stats(token, params, use_rollup=True)
    direct = _stats(token, params, use_rollup=False)
    assert from_rollup.source.startswith("rollup") and direct.source == "direct"
    assert from_rollup.total == direct.total
    assert from_rollup.items == direct.items


@pytest.mark.parametrize(
    "params",
    [
        {"group_by": "day", "started_after": "2025-06-01T00:30:00Z"},  # not a whole hour
        {"group_by": "day", "tz": "Asia/Kolkata"},  # its days start at :30 UTC
        {"group_by": "day", "search": "Alice"},
        {"group_by": "day", "answered": "true"},
        {"group_by": "billed_account"},
        {"group_by": "day", "filter": "trunk eq 'sipgate' or trunk eq 'telnyx-us'"},
    ],
)
def test_requests_it_cannot_answer_take_the_direct_query(generated, params):
    token = mint_token(username="r", scopes=("read", "billing")).token
    result = _stats(token, params, use_rollup=True)
    assert result.source == "direct"
    assert result.total["calls"] > 0


def test_only_inserted_rows_count_and_rebuild_gives_the_same_table(db):
    first = cdr_payload(cost=Decimal("0.25"))
    create_cdrs(first, cdr_payload(started=START, answered_at=None))
    create_cdrs(first, first)  # re-sent: duplicates are not stored, nor counted
    create_generated(120, seed=3)  # one batch: aggregated in SQL on PostgreSQL
    # One at a time: added in the CDR's own statement on PostgreSQL, in Python on SQLite.
    for payload in generate_cdrs(30, seed=4):
        create_cdrs(payload)
    incremental, totals = _table(), _totals()
    assert sum(row[1][0] for row in incremental) == 152
    assert sum(row[1][0] for row in totals) == 152
    rollup.rebuild()
    assert _table() == incremental
    assert _totals() == totals


@pytest.mark.parametrize(
    ("params", "limited", "source"),
    [
        ({"group_by": "day", "tz": "Europe/Berlin"}, False, "rollup:hours"),
        ({"group_by": "month", "started_after": "2025-03-01T00:00:00Z"}, False, "rollup:hours"),
        ({"group_by": "day", "direction": "INBOUND_CALL"}, False, "rollup"),
        ({"group_by": "day"}, True, "rollup"),  # the domain limit needs the domains
        ({"group_by": "trunk"}, False, "rollup"),
    ],
)
def test_time_only_requests_read_the_hourly_totals(generated, params, limited, source):
    domains = ("acme.test",) if limited else ()
    token = mint_token(username="r", scopes=("read", "billing"), domains=domains).token
    fast = _stats(token, params, use_rollup=True)
    direct = _stats(token, params, use_rollup=False)
    assert fast.source == source
    assert (fast.items, fast.total) == (direct.items, direct.total)


def test_concurrent_writers_spread_over_slots_and_still_sum_exactly(db):
    for i in range(12):  # each ingest picks a slot at random
        create_cdrs(cdr_payload(started=START + timedelta(minutes=i), trunk="sipgate"))
    assert CdrHourlyStats.objects.count() <= rollup.SLOTS
    token = mint_token(username="r", scopes=("read",)).token
    result = _stats(token, {"group_by": "trunk"}, use_rollup=True)
    assert result.source == "rollup"
    assert result.items[0]["key"] == {"trunk": "sipgate"}
    assert result.items[0]["calls"] == 12


@pytest.mark.postgresql
def test_postgresql_backfill_hash_equals_the_python_hash(db):
    create_cdrs(cdr_payload(trunk="Ünïcode trunk", caller_domain="ä.example"))
    incremental = _table()
    rollup.rebuild()  # the SQL path: md5() in PostgreSQL
    assert _table() == incremental
    keys = {r.dims_key for r in CdrHourlyStats.objects.all()}
    row = CdrHourlyStats.objects.get()
    assert keys == {rollup.dims_key([getattr(row, d) for d in rollup.DIMENSIONS])}
    assert connection.vendor == "postgresql"


def test_rollup_measures_are_the_models_fields():
    for model in (CdrHourlyStats, CdrHourlyTotals):
        names = [f.name for f in model._meta.concrete_fields]
        assert [n for n in names if n in rollup.MEASURES] == list(rollup.MEASURES)
    totals = {f.name for f in CdrHourlyTotals._meta.concrete_fields}
    assert totals == {"id", "hour", "slot", *rollup.MEASURES}
