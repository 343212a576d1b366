"""The list's queries use indexes on a table of 200,000 CDRs (PostgreSQL EXPLAIN plans)."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from django.test import override_settings

from cdrs import jsonenc, partitions
from cdrs.generator import generate_cdrs
from cdrs.importer import import_file
from cdrs.models import Cdr
from cdrs.query.cursor import encode_cursor
from cdrs.query.options import parse_list_options
from cdrs.selectors import LIST_FIELDS, cdr_list, cdr_page_queryset
from cdrs.tokens import mint_token

pytestmark = [pytest.mark.postgresql, pytest.mark.django_db(transaction=True)]

ROWS = 200_000


@pytest.fixture
def big_table(tmp_path: Path):
    path = tmp_path / "big.ndjson"
    with path.open("wb") as fh:
        for row in generate_cdrs(ROWS, seed=21, days=400):
            fh.write(jsonenc.dumps(row) + b"\n")
    stats = import_file(str(path), strict=False, require_trailer=False)
    assert stats.created == ROWS
    # The months of the rows get their partitions, as cdr_partitions --split-default does.
    partitions.split_default()
    with connection.cursor() as cur:
        cur.execute("ANALYZE cdrs_cdr")
    return mint_token(username="planner", scopes=("read",)).token


def _empty_partitions() -> set[str]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'cdrs_cdr'::regclass AND c.reltuples <= 0"
        )
        return {row[0] for row in cur.fetchall()}


def _as_parent_indexes(text: str) -> str:
    """A plan with each partition's index named as the CDR table's index it belongs to,
    and the sequential scans of empty partitions (free, and chosen for it) left out."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname, p.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relkind = 'I'"
        )
        names = sorted(cur.fetchall(), key=lambda pair: -len(pair[0]))
    empty = _empty_partitions()
    for child, parent in names:
        text = text.replace(f" {child} ", f" {parent} ")
    return "\n".join(
        line
        for line in text.splitlines()
        if not any(f"Seq Scan on {name} " in line for name in empty)
    )


def plan(token, **params: str) -> str:
    options = parse_list_options({k: [v] for k, v in params.items()}, billing=False)
    return _as_parent_indexes(cdr_page_queryset(token=token, options=options).explain())


@pytest.mark.no_citus(
    "each of the 32 shards holds 1/32 of big_table, and on so few rows its planner may "
    "prefer a Seq Scan; tests/test_citus.py checks the distributed plans instead"
)
def test_list_queries_use_indexes_not_sequential_scans(big_table):
    token = big_table
    caller = Cdr.objects.filter(direction="OUTBOUND_CALL").values_list("caller", flat=True)[0]
    plans = {
        "caller filter": plan(token, filter=f"caller eq '{caller}'", top="50"),
        "plain caller": plan(token, caller=caller),
        "started_at window": plan(
            token, started_after="2025-06-01T00:00:00Z", started_before="2025-06-02T00:00:00Z"
        ),
        "search": plan(token, search="7f3a9"),
        "first page": plan(token),
    }
    # A page 150,000 rows deep, by cursor: fetch its position once, then explain the page.
    with override_settings(CDR_MAX_SKIP=ROWS):  # past the API's skip cap, on purpose
        options = parse_list_options({"top": ["1"], "skip": ["150000"]}, billing=False)
    page = cdr_page_queryset(token=token, options=options)
    deep_row = dict(zip(LIST_FIELDS, next(iter(page)), strict=True))
    cursor = encode_cursor(options.fingerprint, options.order, deep_row)
    plans["deep cursor page"] = plan(token, cursor=cursor)
    for name, text in plans.items():
        assert "Seq Scan" not in text, f"{name}:\n{text}"
        assert "Index" in text, f"{name}:\n{text}"
    assert "cdr_caller_started_idx" in plans["caller filter"]
    assert "cdr_started_id_idx" in plans["started_at window"]
    assert "cdr_search_trgm_idx" in plans["search"]
    assert "cdr_started_id_idx" in plans["deep cursor page"]
    assert "Index Cond" in plans["deep cursor page"]  # starts at the cursor, no OFFSET walk


SORT_NODE = re.compile(r"(^|->)\s*(Incremental )?Sort\s+\(", re.MULTILINE)


@pytest.mark.no_citus(
    "the coordinator merges the shards' pages with a Sort of their rows, and the statistics "
    "targets this test relies on are not set on a distributed table (docs/scaling.md, Citus)"
)
def test_an_extensions_page_stops_after_top_rows_instead_of_sorting_all_its_calls(big_table):
    """Every extension of a PBX is in the planner's statistics (0008): a filter on one that
    is far down the frequency list still walks the index newest first and stops at the
    page, rather than fetching all its calls and sorting them (a bitmap scan and a Sort)."""
    token = big_table
    with connection.cursor() as cur:
        cur.execute(
            "SELECT caller, count(*) FROM cdrs_cdr GROUP BY caller HAVING count(*) > 100 "
            "ORDER BY count(*) DESC, caller"
        )
        frequent = cur.fetchall()
    assert len(frequent) > 300, "the generated PBX should have hundreds of busy extensions"
    for caller, _calls in frequent[150::50]:  # well past the default 100 most common values
        for field in ("caller", "callee"):
            text = plan(token, filter=f"{field} eq '{caller}'", top="50")
            # No Sort node (a partitioned table's Merge Append of index scans is fine).
            assert not SORT_NODE.search(text), f"{field} {caller}:\n{text}"
            assert f"cdr_{field}_started_idx" in text, f"{field} {caller}:\n{text}"


@pytest.mark.no_citus(
    "the coordinator merges the shards' pages with a Sort of their rows (tests/test_citus.py)"
)
def test_the_prepared_caller_page_walks_the_index_whatever_the_caller(big_table):
    """psycopg prepares a statement run often, and PostgreSQL then plans it once for any
    caller (a generic plan). With the page size written into the SQL (``LIMIT 51``) that
    plan expected an average caller's few rows and sorted all of a busy extension's calls
    (7.6 ms instead of 0.2 ms at 1M CDRs); the statement carries the LIMIT as a parameter,
    so the generic plan also reads the index in order and stops at the page. (On this
    table's 200,000 rows the literal's generic plan happens to walk the index too: the
    statement's form is what this checks first, the resulting plan second.)

    On the partitioned table the page first reads the recent months (``started_at >=`` a
    month written into the SQL): that statement's generic plan reads the caller's index in
    those months only, where sorting what it finds is bounded by a month or two of one
    caller's calls; never the time index with the caller as a filter, which reads every
    call of a rare caller's months. A caller the recent months do not fill then takes the
    single statement, with its guarantee."""
    token = big_table
    with connection.cursor() as cur:
        cur.execute("SELECT caller FROM cdrs_cdr GROUP BY caller ORDER BY count(*) DESC LIMIT 1")
        busiest = cur.fetchone()[0]
        cur.execute("SELECT caller FROM cdrs_cdr GROUP BY caller HAVING count(*) < 10 LIMIT 1")
        rare = cur.fetchone()[0]
    sent: list[tuple[str, list]] = []

    def capture(execute, sql, params, many, context):
        if "ORDER BY" in sql:
            sent.append((sql, list(params)))
        return execute(sql, params, many, context)

    def generic_plan(sql: str, params: list) -> str:
        numbered = iter(range(1, len(params) + 1))
        statement = re.sub("%s", lambda _m: f"${next(numbered)}", sql).replace("%%", "%")
        # A client-side cursor: PREPARE's own $n must reach PostgreSQL as text.
        with psycopg.ClientCursor(connection.connection) as client:
            client.execute(f"PREPARE caller_page AS {statement}")
            try:
                # A session SET (this test runs outside a transaction: SET LOCAL would be
                # ignored, and the first runs of a prepared statement get custom plans).
                client.execute("SET plan_cache_mode = force_generic_plan")
                values = ", ".join("%s" for _ in params)
                client.execute(f"EXPLAIN EXECUTE caller_page({values})", params)
                return "\n".join(row[0] for row in client.fetchall())
            finally:
                client.execute("RESET plan_cache_mode")
                client.execute("DEALLOCATE caller_page")

    pages = {}
    for caller in (busiest, rare):
        options = parse_list_options(
            {"filter": [f"caller eq '{caller}'"], "top": ["50"], "count": ["false"]},
            billing=False,
        )
        sent.clear()
        with connection.execute_wrapper(capture):
            pages[caller] = cdr_list(token=token, options=options).rows
        expected = Cdr.objects.filter(caller=caller).order_by("-started_at", "-id")[:50]
        assert [r["id"] for r in pages[caller]] == [c.pk for c in expected]
        recent_first = partitions.is_partitioned()
        assert len(sent) == (1 if not recent_first or caller == busiest else 2), sent
        for sql, params in sent:
            assert sql.endswith(" LIMIT %s") and params[-1] == 51, sql
            text = _as_parent_indexes(generic_plan(sql, params))
            assert "cdr_caller_started_idx" in text, text
            # The time index with the caller as a filter: only in empty partitions (free).
            walked = re.findall(r"cdr_started_id_idx on (\w+) .*\n\s*Filter: \(\(caller", text)
            assert set(walked) <= _empty_partitions(), text
            bound = re.search(r"\"started_at\" >= \('(\d{4})-(\d{2})-01T", sql)
            if bound is not None:  # the recent months: only theirs are read
                assert recent_first
                months = re.findall(r"cdrs_cdr_p(\d{4})_(\d{2})\b", text)
                assert months and min(months) == bound.groups(), text
            else:
                assert not SORT_NODE.search(text), text
