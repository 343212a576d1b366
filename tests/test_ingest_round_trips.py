"""One CDR (a PortSIP webhook event, a one-CDR POST) costs PostgreSQL one round trip.

Outside a transaction (as a request runs) a new CDR with its id is stored, with its rollup
rows and the row counter, by one statement; a re-sent one costs one lookup more (its id and
its natural key together); nothing else changes: the same answers, the same exact
statistics and count.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from cdrs import rollup
from cdrs.ids import encode_id
from cdrs.models import Cdr, CdrHourlyTotals
from cdrs.selectors import cdr_total
from cdrs.services import cdr_ingest, cdr_ingest_for_token, discard_low_bits_pool
from cdrs.tokens import mint_token
from cdrs.validation import validate_cdr
from tests.factories import cdr_payload

pytestmark = [pytest.mark.postgresql, pytest.mark.django_db(transaction=True)]


def _ingest(payload: dict, token=None) -> tuple[int, int, list[int], list[str]]:
    rows = [validate_cdr(payload)]
    with CaptureQueriesContext(connection) as queries:
        if token is None:
            result = cdr_ingest(rows=rows)
        else:
            result = cdr_ingest_for_token(rows=rows, token=token)
    sql = [q["sql"].split(None, 1)[0].upper() for q in queries.captured_queries]
    return result.created, result.duplicates, result.ids, sql


def _rollup_calls() -> int:
    return sum(t.calls for t in CdrHourlyTotals.objects.all())


def test_a_new_cdr_is_one_statement_and_a_resent_one_two_lookups_more():
    cdr_ingest(rows=[validate_cdr(cdr_payload(call_id="warm@x"))])  # per-connection checks
    payload = cdr_payload(id=encode_id(4242), call_id="one@x", duration=61)

    created, duplicates, ids, sql = _ingest(payload)
    assert (created, duplicates, ids) == (1, 0, [4242])
    assert sql == ["WITH"]  # no BEGIN/SAVEPOINT/COMMIT of its own, no separate upserts
    assert cdr_total() == 2 == Cdr.objects.count()
    assert _rollup_calls() == 2

    created, duplicates, ids, sql = _ingest(payload)
    assert (created, duplicates, ids) == (0, 1, [4242])
    assert sql == ["WITH", "SELECT"]  # the id and the natural key looked up together
    assert cdr_total() == 2 == Cdr.objects.count()  # the counter did not move
    assert _rollup_calls() == 2  # nor did the statistics

    # Without an id: the id's low bits come from a block the process draws from the
    # sequence in one round trip, LOW_BITS_BLOCK values at a time; until it is used up, a
    # CDR without an id is one statement too.
    discard_low_bits_pool()
    created, duplicates, ids, sql = _ingest(cdr_payload(call_id="two@x"))
    assert (created, duplicates) == (1, 0)
    assert sql == ["SELECT", "WITH"]
    assert Cdr.objects.get(pk=ids[0]).call_id == "two@x"
    created, duplicates, more, sql = _ingest(cdr_payload(call_id="three@x"))
    assert (created, duplicates) == (1, 0)
    assert sql == ["WITH"]
    assert more != ids
    assert Cdr.objects.get(pk=more[0]).call_id == "three@x"

    # What one statement added to the statistics is what a rebuild from the CDRs gives.
    before = sorted(CdrHourlyTotals.objects.values_list("hour", "calls", "total_duration"))
    rollup.rebuild()
    after = sorted(CdrHourlyTotals.objects.values_list("hour", "calls", "total_duration"))
    assert sum(c for _, c, _ in before) == sum(c for _, c, _ in after) == 4
    assert sum(d for _, _, d in before) == sum(d for _, _, d in after)


def test_a_domain_limited_token_stores_one_cdr_without_a_transaction_of_its_own():
    """A tenant's webhook token: its id checked, an id drawn (a block of them at a time),
    then the one statement."""
    token = mint_token(username="tenant", scopes=("write",), domains=("acme.test",)).token
    mine = {"caller_domain": "acme.test", "callee_domain": "acme.test"}
    cdr_ingest(rows=[validate_cdr(cdr_payload(call_id="warm@x"))])  # per-connection checks

    discard_low_bits_pool()
    payload = cdr_payload(id=encode_id(5151), **mine)
    created, duplicates, ids, sql = _ingest(payload, token)
    assert (created, duplicates) == (1, 0)
    assert ids[0] != 5151  # an id it cannot see is not honoured (services: tenant isolation)
    assert sql == ["SELECT", "SELECT", "WITH"]
    again = _ingest(payload, token)
    assert again[:3] == (0, 1, ids)
    # Re-sent: its id checked, the insert that stores nothing, one lookup finding the CDR
    # by its natural key, and that CDR's domains read to tell it is this tenant's.
    assert again[3] == ["SELECT", "WITH", "SELECT", "SELECT"]
    # The next event's id comes from the block drawn above: its own-id check and the insert.
    created, duplicates, _ids, sql = _ingest(cdr_payload(id=encode_id(5252), **mine), token)
    assert (created, duplicates) == (1, 0)
    assert sql == ["SELECT", "WITH"]

    # The same call (natural key) stored under another tenant's domains: stored again for
    # this one under a scoped key, not reported as that tenant's CDR.
    other = cdr_payload(call_id="shared@x", caller_domain="other.test", callee_domain="x.test")
    cdr_ingest(rows=[validate_cdr(other)])
    created, duplicates, ids, _sql = _ingest({**other, **mine}, token)
    assert (created, duplicates) == (1, 0)
    assert Cdr.objects.get(pk=ids[0]).caller_domain == "acme.test"
    assert cdr_total() == Cdr.objects.count() == 5


def test_a_tenants_own_id_check_is_planned_once_not_per_event():
    """The check of a tenant's event id runs as a prepared statement that PostgreSQL plans
    once, generically. Asked with ``id = ANY(array)`` it was re-planned for every event
    (a custom plan looks cheaper for an array of unknown length): 0.5-0.6 ms of planning
    over six partitions per event, more with every month."""
    token = mint_token(username="tenant", scopes=("write",), domains=("acme.test",)).token
    mine = {"caller_domain": "acme.test", "callee_domain": "acme.test"}
    for n in range(12):
        _ingest(cdr_payload(id=encode_id(7000 + n), call_id=f"plan-{n}@x", **mine), token)
    with connection.cursor() as cur:
        cur.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %s",
            ["SELECT c.id FROM cdrs_cdr_id r JOIN cdrs_cdr c%"],
        )
        plans = cur.fetchall()
    assert len(plans) == 1, plans  # prepared (psycopg prepares a statement run 5 times)
    generic, custom = plans[0]
    assert generic > 0 and custom <= 5, plans[0]
