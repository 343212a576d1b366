"""bin/test's replica run (DATABASE_REPLICA_URLS set, tests/mirror_backend): the suite only
proves something about replicas if the read endpoints really read ``replica1`` there and
nothing writes to it. (tests/test_replicas.py tests the same against a real standby.)"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connections

from cdrs.ids import encode_id
from tests.factories import cdr_payload, create_cdrs
from tests.helpers import AllQueries
from tests.mirror_backend.base import WriteOnReplica

pytestmark = [
    pytest.mark.postgresql,
    pytest.mark.django_db,
    pytest.mark.skipif(
        not settings.CDR_REPLICA_ALIASES,
        reason="runs in bin/test's replica run (DATABASE_REPLICA_URLS set)",
    ),
]


def _cdr_reads(captured: AllQueries) -> dict[str, int]:
    """CDR table reads by alias."""
    found: dict[str, int] = {}
    for query in captured.captured_queries:
        if "cdrs_cdr" in query["sql"] and query["sql"].lstrip().upper().startswith("SELECT"):
            found[query["alias"]] = found.get(query["alias"], 0) + 1
    return found


def test_the_read_endpoints_read_the_replica(client_full):
    (cdr_id,) = create_cdrs(cdr_payload())
    for path in ("/api/cdrs", f"/api/cdrs/{encode_id(cdr_id)}", "/api/cdrs/stats"):
        with AllQueries() as captured:
            response = client_full.get(path, {"count": "true"} if path == "/api/cdrs" else {})
            assert response.status_code == 200, path
        assert set(_cdr_reads(captured)) == {"replica1"}, (path, captured.captured_queries)
    with AllQueries() as captured:
        response = client_full.get("/api/cdrs/export", {"format": "ndjson"})
        body = b"".join(response.streaming_content)
    assert response.status_code == 200 and encode_id(cdr_id).encode() in body
    assert set(_cdr_reads(captured)) == {"replica1"}


def test_writes_and_reads_inside_them_stay_on_the_primary(client_full):
    with AllQueries() as captured:
        response = client_full.post("/api/cdrs", cdr_payload(), content_type="application/json")
    assert response.status_code == 201
    assert {q["alias"] for q in captured.captured_queries} == {"default"}


def test_a_write_sent_to_the_replica_fails_the_test():
    with pytest.raises(WriteOnReplica), connections["replica1"].cursor() as cur:
        cur.execute("DELETE FROM cdrs_cdr")
