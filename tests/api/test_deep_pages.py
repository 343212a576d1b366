"""Deep and sorted pages: fetched by id first (deferred join), the same rows as a plain
OFFSET, and ``skip`` capped at CDR_MAX_SKIP with a 400 that points to cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django.db import connection
from django.db.models import F
from django.test import override_settings

from cdrs.ids import encode_id
from cdrs.models import Cdr
from cdrs.query.orderby import parse_orderby
from tests.factories import cdr_payload, create_cdrs
from tests.helpers import AllQueries

pytestmark = pytest.mark.django_db

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ORDERINGS = [
    None,
    "duration desc",
    "duration",
    "answered_at desc",
    "answered_at",
    "caller, started_at desc",
    "status_code desc, ended_at",
    "id",
]


@pytest.fixture
def tied_cdrs() -> None:
    """47 CDRs with many ties (equal durations, callers, start times) and null answers."""
    payloads = []
    for n in range(47):
        started = T0 + timedelta(minutes=n // 3)  # three CDRs per start time
        answered = None if n % 4 == 0 else started + timedelta(seconds=n % 5)
        payloads.append(
            cdr_payload(
                started=started,
                answered_at=answered and answered.strftime("%Y-%m-%dT%H:%M:%SZ"),
                duration=(n * 7) % 5,
                caller=str(100 + n % 4),
                status_code=(200, 486, 487)[n % 3],
            )
        )
    create_cdrs(*payloads)


def plain_offset_ids(orderby: str | None, skip: int, top: int) -> list[str]:
    """The page as a plain ``ORDER BY ... OFFSET`` gives it, NULLs last, ties by id."""
    terms = []
    for t in parse_orderby(orderby):
        nulls = {"nulls_last": True} if t.nullable else {}
        terms.append(F(t.field).desc(**nulls) if t.desc else F(t.field).asc(**nulls))
    ids = Cdr.objects.order_by(*terms).values_list("id", flat=True)[skip : skip + top]
    return [encode_id(i) for i in ids]


@pytest.mark.parametrize("orderby", ORDERINGS)
def test_every_page_equals_the_plain_offset_page(client_ro, tied_cdrs, orderby):
    for skip in (0, 1, 5, 20, 44, 46, 47, 60):
        params = {"skip": str(skip), "top": "4"}
        if orderby:
            params["orderby"] = orderby
        response = client_ro.get("/api/cdrs", params)
        assert response.status_code == 200, response.content
        data = orjson.loads(response.content)
        assert [i["id"] for i in data["items"]] == plain_offset_ids(orderby, skip, 4), skip
        assert data["count"] == 47
        assert (data["next_cursor"] is not None) == (skip + 4 < 47)


def test_skip_then_cursor_walks_on_without_gaps(client_ro, tied_cdrs):
    params = {"orderby": "duration desc", "skip": "10", "top": "6"}
    seen: list[str] = []
    while True:
        data = orjson.loads(client_ro.get("/api/cdrs", params).content)
        seen += [i["id"] for i in data["items"]]
        if not data["next_cursor"]:
            break
        params = {"orderby": "duration desc", "top": "6", "cursor": data["next_cursor"]}
    assert seen == plain_offset_ids("duration desc", 10, 100)


def test_skip_over_the_maximum_is_400_pointing_to_cursors(client_ro):
    create_cdrs(cdr_payload())
    response = client_ro.get("/api/cdrs?skip=100001")
    assert response.status_code == 400
    error = orjson.loads(response.content)["errors"][0]
    assert error["code"] == "VALIDATE_FAILED"
    assert error["message"].startswith("skip: at most 100000 rows;")
    assert "next_cursor" in error["message"] and "cursor=" in error["message"]
    assert error["detail"] == {"option": "skip"}
    assert client_ro.get("/api/cdrs?skip=100000").status_code == 200
    with override_settings(CDR_MAX_SKIP=5):
        assert client_ro.get("/api/cdrs?skip=5").status_code == 200
        response = client_ro.get("/api/cdrs?skip=6")
        assert response.status_code == 400
        assert b"at most 5 rows" in response.content


def _formatting_nodes(node: dict) -> list[dict]:
    """Plan nodes (with their children) whose output has formatted timestamps."""
    found = [node] if any("to_char" in out for out in node.get("Output", [])) else []
    for child in node.get("Plans", []):
        found += _formatting_nodes(child)
    return found


@pytest.mark.postgresql
@pytest.mark.parametrize(
    "params",
    [
        {"skip": "2000"},
        {"skip": "2000", "orderby": "caller"},
        {"orderby": "duration desc"},  # no index: every row is sorted
        {"orderby": "ended_at desc", "skip": "500"},
    ],
)
def test_rows_skipped_or_sorted_past_are_never_read_whole_nor_formatted(client_ro, params):
    from tests.factories import create_generated

    create_generated(3000, seed=5)
    with AllQueries() as queries:
        response = client_ro.get("/api/cdrs", {**params, "top": "50", "count": "false"})
    assert response.status_code == 200 and len(orjson.loads(response.content)["items"]) == 50
    (page_sql,) = [q["sql"] for q in queries.captured_queries if "to_char" in q["sql"]]
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) " + page_sql)
        plan = cur.fetchone()[0][0]["Plan"]
    for node in _formatting_nodes(plan):
        rows = node["Actual Rows"] * node["Actual Loops"]
        assert rows <= 51, f"{node['Node Type']} formats {rows} rows"
