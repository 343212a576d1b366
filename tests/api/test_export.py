"""GET /api/cdrs/export: streaming NDJSON and CSV, scopes, and the exact round trip."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import orjson
import pytest
from django.core.management import call_command

from cdrs.fields import ALL_FIELD_NAMES, PUBLIC_FIELD_NAMES
from cdrs.models import Cdr, CdrCounter
from tests.factories import cdr_payload, create_cdrs, create_generated, delete_all_cdrs

pytestmark = pytest.mark.django_db


def export(client, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response = client.get(f"/api/cdrs/export?{query}")
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


def rows_of(body: bytes) -> list[dict]:
    """The CDRs of an NDJSON export, after checking it ends with its trailer."""
    *lines, trailer = body.splitlines()
    assert orjson.loads(trailer) == {"export_complete": True, "rows": len(lines)}
    return [orjson.loads(line) for line in lines]


def csv_rows_of(body: bytes) -> list[dict]:
    """The rows of a CSV export, after checking it ends with its trailer."""
    text, trailer = body.decode().removesuffix("\r\n").rsplit("\r\n", 1)
    rows = list(csv.DictReader(io.StringIO(text + "\r\n")))
    assert trailer == f"#export_complete rows={len(rows)}"
    return rows


def test_ndjson_is_the_default_and_streams_every_row_newest_first(client_ro):
    create_generated(120, seed=8)
    response, body = export(client_ro)
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["Content-Disposition"].startswith('attachment; filename="cdrs-')
    assert response["Content-Disposition"].endswith('.ndjson"')
    items = rows_of(body)
    assert len(items) == 120
    listed = orjson.loads(client_ro.get("/api/cdrs?top=1000").content)["items"]
    assert items == listed
    assert tuple(items[0]) == PUBLIC_FIELD_NAMES


def test_private_fields_only_with_billing(api_client):
    create_cdrs(cdr_payload(cost=Decimal("0.1235"), billed_account="ACC"))
    _, body = export(api_client(scopes=("read", "billing")))
    assert b'"cost":0.123500' in body and tuple(rows_of(body)[0]) == ALL_FIELD_NAMES
    _, body = export(api_client(scopes=("read",)))
    assert b"cost" not in body and b"billed_account" not in body
    _, body = export(api_client(scopes=("read",)), format="csv")
    assert b"cost" not in body.split(b"\r\n")[0]


def test_filters_search_and_domains_apply(api_client):
    create_cdrs(
        cdr_payload(caller="101", caller_domain="a.example", callee_domain="a.example"),
        cdr_payload(caller="102", caller_domain="b.example", callee_domain="b.example"),
        cdr_payload(caller="103", caller_domain="a.example", callee_domain="a.example"),
    )
    client = api_client(scopes=("read",), domains=("a.example",))
    _, body = export(client)
    assert sorted(x["caller"] for x in rows_of(body)) == ["101", "103"]
    _, body = export(client, filter="caller%20eq%20'103'")
    assert [x["caller"] for x in rows_of(body)] == ["103"]
    _, body = export(client, caller="101", orderby="caller")
    assert [x["caller"] for x in rows_of(body)] == ["101"]


@pytest.mark.parametrize(
    ("params", "option"),
    [({"top": 5}, "top"), ({"format": "xml"}, "format"), ({"count": "false"}, "count")],
)
def test_bad_export_options_are_400(client_ro, params, option):
    response, body = export(client_ro, **params)
    assert response.status_code == 400
    assert orjson.loads(body)["errors"][0]["message"].startswith(f"{option}:")


def test_csv_is_rfc4180_and_spreadsheet_safe(api_client):
    create_cdrs(
        cdr_payload(
            caller_display_name='Quote " and, comma\nnewline',
            user_data="=1+2",
            destination="+4420",
            callee_display_name="@SUM(A1)",
            did_cid="-5",
            service_number="'kept",
        )
    )
    response, body = export(api_client(), format="csv")
    assert response["Content-Type"] == "text/csv"
    assert b"\r\n" in body
    rows = csv_rows_of(body)
    assert len(rows) == 1
    row = rows[0]
    assert row["caller_display_name"] == 'Quote " and, comma\nnewline'
    for key in ("user_data", "destination", "callee_display_name", "did_cid", "service_number"):
        assert row[key].startswith("'"), key  # no cell a spreadsheet would evaluate
    assert row["user_data"] == "'=1+2" and row["service_number"] == "''kept"


def _reimport(tmp_path, body: bytes, name: str) -> None:
    delete_all_cdrs()
    CdrCounter.objects.all().delete()
    path = tmp_path / name
    path.write_bytes(body)
    call_command("import_cdrs", str(path), "--quiet", stdout=io.StringIO(), stderr=io.StringIO())


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_export_import_export_gives_identical_bytes(api_client, tmp_path, fmt):
    create_generated(300, seed=12)
    create_cdrs(
        cdr_payload(
            caller_display_name='tab\there "q", =x',
            user_data="-1\r\n@2",
            cost=Decimal("0.000001"),
            answered_at=None,
            started_at="2024-01-01T10:00:00.999+01:00",
        )
    )
    client = api_client(scopes=("read", "billing"))
    _, first = export(client, format=fmt)
    _reimport(tmp_path, first, f"export.{fmt}")
    assert Cdr.objects.count() == 301
    _, second = export(client, format=fmt)
    assert second == first


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_every_export_ends_with_a_trailer_counting_its_rows(client_ro, fmt):
    _, body = export(client_ro, format=fmt)  # nothing stored: header (CSV) and trailer only
    if fmt == "csv":
        assert csv_rows_of(body) == []
    else:
        assert body == b'{"export_complete":true,"rows":0}\n'
    create_generated(1234, seed=3)  # several 500-row chunks
    response = client_ro.get(f"/api/cdrs/export?format={fmt}")
    chunks = list(response.streaming_content)
    assert len(chunks) == 3
    assert b"export_complete" in chunks[-1] and not any(
        b"export_complete" in c for c in chunks[:-1]
    )
    body = b"".join(chunks)
    rows = csv_rows_of(body) if fmt == "csv" else rows_of(body)
    assert len(rows) == 1234
    _, filtered = export(client_ro, format=fmt, filter="duration%20eq%200")
    expected = Cdr.objects.filter(duration=0).count()
    assert 0 < expected < 1234
    assert len(csv_rows_of(filtered) if fmt == "csv" else rows_of(filtered)) == expected
