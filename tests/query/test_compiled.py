"""SQL compiled once per query shape: a reused shape answers with the new request's values.

The read paths keep each query's SQL per shape (cdrs/query/compiled.py). These tests send
requests that share a shape and differ in their values, one after the other in the same
process, and check every answer against what the values ask for.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from cdrs.ids import encode_id
from cdrs.query import compiled
from cdrs.selectors import reads_recent_months_first
from tests.factories import cdr_payload, create_cdr, create_cdrs

pytestmark = pytest.mark.django_db

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def items(response) -> list[dict]:
    assert response.status_code == 200, response.content
    return orjson.loads(response.content)["items"]


def test_same_filter_shape_with_other_values_gets_other_rows(client_ro):
    callers = ("201", "202", "202", "203", "203", "203")
    create_cdrs(*[cdr_payload(caller=c, duration=10 * n) for n, c in enumerate(callers)])
    for caller, expected in (("201", 1), ("202", 2), ("203", 3), ("201", 1), ("999", 0)):
        response = client_ro.get("/api/cdrs", {"filter": f"caller eq '{caller}'", "top": "1"})
        assert orjson.loads(response.content)["count"] == expected  # the count's SQL too
        page = items(client_ro.get("/api/cdrs", {"filter": f"caller eq '{caller}'"}))
        assert [i["caller"] for i in page] == [caller] * expected
    for low, expected in ((-1, 6), (25, 3), (45, 1), (0, 5)):  # an integer slot
        page = items(client_ro.get("/api/cdrs", {"filter": f"duration gt {low}"}))
        assert sorted(i["duration"] for i in page) == [
            d for d in (0, 10, 20, 30, 40, 50) if d > low
        ]
        assert len(page) == expected


def test_plain_window_shape_with_other_days_gets_other_rows(client_ro):
    create_cdrs(
        *[cdr_payload(started=T0 + timedelta(days=d, hours=h)) for d in range(3) for h in (1, 2)]
    )
    for day in (0, 1, 2, 1):
        start = T0 + timedelta(days=day)
        page = items(
            client_ro.get(
                "/api/cdrs",
                {
                    "started_after": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "started_before": (start + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            )
        )
        assert len(page) == 2
        assert all(i["started_at"].startswith(start.strftime("%Y-%m-%d")) for i in page)


def test_detail_shape_reused_across_tokens_with_other_domains(api_client):
    a = create_cdr(caller_domain="a.example", callee_domain="a.example")
    b = create_cdr(caller_domain="b.example", callee_domain="b.example")
    client_a = api_client(scopes=("read",), domains=("a.example",), username="a")
    client_b = api_client(scopes=("read",), domains=("b.example",), username="b")
    for _ in range(2):  # the second round runs on SQL compiled in the first
        assert client_a.get(f"/api/cdrs/{encode_id(a)}").status_code == 200
        assert client_a.get(f"/api/cdrs/{encode_id(b)}").status_code == 404
        assert client_b.get(f"/api/cdrs/{encode_id(b)}").status_code == 200
        assert client_b.get(f"/api/cdrs/{encode_id(a)}").status_code == 404
        assert [i["id"] for i in items(client_a.get("/api/cdrs"))] == [encode_id(a)]
        assert [i["id"] for i in items(client_b.get("/api/cdrs"))] == [encode_id(b)]


def test_cursor_walk_with_null_and_non_null_positions(client_ro):
    # answered_at is nullable: cursors point at rows with and without it, so the same order
    # gives keyset conditions of two shapes (value vs IS NULL) along one walk.
    payloads = []
    for n in range(9):
        started = T0 + timedelta(minutes=n)
        answered = None if n % 3 == 0 else started + timedelta(seconds=n)
        payloads.append(
            cdr_payload(
                started=started,
                answered_at=answered and answered.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        )
    ids = create_cdrs(*payloads)
    seen: list[str] = []
    params = {"orderby": "answered_at desc", "top": "2"}
    while True:
        data = orjson.loads(client_ro.get("/api/cdrs", params).content)
        seen += [i["id"] for i in data["items"]]
        if not data["next_cursor"]:
            break
        params = {"orderby": "answered_at desc", "top": "2", "cursor": data["next_cursor"]}
    assert sorted(seen) == sorted(encode_id(i) for i in ids)
    assert len(seen) == len(set(seen)) == 9


def _counted(get) -> tuple[Any, dict[str, int]]:
    """``get()``'s answer, and how its queries were answered (from compiled.stats)."""
    before = compiled.stats.snapshot()
    answer = get()
    after = compiled.stats.snapshot()
    return answer, {k: getattr(after, k) - getattr(before, k) for k in vars(after)}


NONE = {"compiled": 0, "refused": 0, "reused": 0, "per_request": 0}


def test_second_request_of_a_shape_is_not_compiled_again(client_ro):
    create_cdrs(*[cdr_payload(caller=c) for c in ("401", "402", "402")])
    # top=37: a page shape no other test asks for, so the first request compiles it.
    first, counts = _counted(
        lambda: client_ro.get("/api/cdrs", {"filter": "caller eq '401'", "top": "37"})
    )
    assert [i["caller"] for i in items(first)] == ["401"]
    # The page and the count; on partitioned PostgreSQL also the recent months' page
    # first, which one CDR does not fill.
    statements = 3 if reads_recent_months_first() else 2
    assert counts["compiled"] >= 1 and counts["compiled"] + counts["reused"] == statements
    second, counts = _counted(
        lambda: client_ro.get("/api/cdrs", {"filter": "caller eq '402'", "top": "37"})
    )
    assert [i["caller"] for i in items(second)] == ["402", "402"]
    assert orjson.loads(second.content)["count"] == 2
    assert counts == {**NONE, "reused": statements}  # all from kept SQL


def _assert_compiled_per_request(client, option: str, template: str) -> None:
    # call_ids without digits: the default ("call-<n>@...") would match "1000" when the
    # factory's counter passes it, and search reads call_id too.
    create_cdrs(
        *[
            cdr_payload(caller=c, call_id=f"shape-{name}@pbx.example.com")
            for c, name in (("6061000", "a"), ("6062000", "b"), ("7071000", "c"))
        ]
    )
    for needle, expected in (("606", 2), ("707", 1), ("1000", 2)):
        params = {option: template.format(needle), "top": "41"}
        response, counts = _counted(lambda params=params: client.get("/api/cdrs", params))
        assert len(items(response)) == expected, needle
        assert counts["reused"] == counts["compiled"] == 0, needle
        # The page and the count (and the recent months' page first, on partitioned
        # PostgreSQL), each built for this request (the first tried and refused).
        statements = 3 if reads_recent_months_first() else 2
        assert counts["per_request"] + counts["refused"] == statements, needle


def test_search_shapes_are_not_kept(client_ro):
    # search is an expression, not a plain lookup: its queries are compiled per request.
    _assert_compiled_per_request(client_ro, "search", "{}")


@pytest.mark.postgresql
def test_shapes_with_transformed_values_are_not_kept(client_ro):
    # On PostgreSQL contains() is LIKE with the value escaped and wrapped in %...%: a
    # transformed value, so the shape is refused and compiled per request.
    _assert_compiled_per_request(client_ro, "filter", "contains(caller, '{}')")


def test_contains_filter_still_matches_after_a_first_compile(client_ro):
    create_cdrs(*[cdr_payload(caller=c) for c in ("5551000", "5552000", "7771000")])
    for needle, expected in (("555", 2), ("777", 1), ("1000", 2), ("%", 0), ("_", 0)):
        page = items(client_ro.get("/api/cdrs", {"filter": f"contains(caller, '{needle}')"}))
        assert len(page) == expected, needle


def test_pages_fetched_by_id_first_are_kept_and_answer_with_new_values(client_ro):
    # skip > 0 and an order no index serves: the page's ids come from a subquery, whose
    # filter values must still land in the parameters of the one kept SQL.
    create_cdrs(
        *[cdr_payload(caller=c, duration=d) for c in ("301", "302") for d in (5, 9, 1, 7, 3)]
    )
    before = compiled.stats.snapshot()
    for caller in ("301", "302", "301"):
        for params, expected in (
            ({"skip": "1", "top": "2"}, 2),
            ({"orderby": "duration desc", "top": "3"}, [9, 7, 5]),
            ({"orderby": "duration", "skip": "2", "top": "2"}, [5, 7]),
        ):
            page = items(client_ro.get("/api/cdrs", {**params, "filter": f"caller eq '{caller}'"}))
            assert all(i["caller"] == caller for i in page)
            if isinstance(expected, int):
                assert len(page) == expected
            else:
                assert [i["duration"] for i in page] == expected
    after = compiled.stats.snapshot()
    # Three page shapes (and one count shape), each compiled at most once, then reused.
    assert after.per_request == before.per_request
    assert after.compiled - before.compiled <= 4
    assert after.reused - before.reused >= 9 * 2 - 4
