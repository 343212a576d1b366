"""The OpenAPI schema at /api/schema describes the bodies the service really sends.

Real list, detail, ingest and error bodies (Django test client, real database, real tokens)
are validated against the schema the service serves, with an OpenAPI 3.0 validator.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
import yaml
from django.conf import settings
from jsonschema import FormatChecker
from openapi_schema_validator import OAS30Validator

from cdrs.error_codes import ERROR_CODE_BY_STATUS as _CODES
from cdrs.error_codes import ERROR_CODES
from cdrs.generator import demo_cdrs
from cdrs.query.options import TOP_DEFAULT, TOP_MAX
from tests.factories import cdr_payload, create_cdrs

pytestmark = pytest.mark.django_db


@pytest.fixture
def openapi(client) -> dict[str, Any]:
    response = client.get("/api/schema?format=json")
    assert response.status_code == 200
    return orjson.loads(response.content)


def _schema_of(doc: dict[str, Any], path: str, method: str, status: int, media: str) -> Any:
    responses = doc["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    return responses[str(status)]["content"][media]["schema"]


def _check(doc: dict[str, Any], schema: Any, instance: Any) -> None:
    """Validate ``instance`` against ``schema`` ($refs resolved in the served document)."""
    root = {**schema, "components": doc["components"]}
    OAS30Validator(root, format_checker=FormatChecker()).validate(instance)


def _conforms(doc, response, path: str, method: str) -> Any:
    data = orjson.loads(response.content)
    schema = _schema_of(doc, path, method, response.status_code, "application/json")
    _check(doc, schema, data)
    return data


def test_schema_is_json_with_format_json_and_yaml_by_default(client):
    as_json = client.get("/api/schema?format=json")
    assert as_json.status_code == 200
    assert "json" in as_json["Content-Type"]
    assert orjson.loads(as_json.content)["openapi"].startswith("3.")
    as_yaml = client.get("/api/schema")
    assert client.get("/api/schema?format=yaml")["Content-Type"] == as_yaml["Content-Type"]
    unknown = client.get("/api/schema?format=xml")
    assert unknown.status_code == 400
    assert orjson.loads(unknown.content)["errors"][0]["code"] == "VALIDATE_FAILED"
    assert as_yaml["Content-Type"].startswith("application/vnd.oai.openapi;")  # YAML
    assert (
        yaml.safe_load(as_yaml.content)["paths"].keys()
        == orjson.loads(as_json.content)["paths"].keys()
    )


def test_list_body_conforms_and_is_one_object(openapi, api_client):
    create_cdrs(cdr_payload(), cdr_payload(answered_at=None, rang_at=None))
    client = api_client(scopes=("read", "billing"))
    schema = _schema_of(openapi, "/api/cdrs", "get", 200, "application/json")
    assert schema == {"$ref": "#/components/schemas/CdrListResponse"}  # not an array of them
    data = _conforms(openapi, client.get("/api/cdrs?top=1"), "/api/cdrs", "get")
    assert data["count"] == 2 and data["next_cursor"]
    last = _conforms(openapi, client.get("/api/cdrs?skip=1"), "/api/cdrs", "get")
    assert last["next_cursor"] is None
    _conforms(openapi, client.get("/api/cdrs?count=false"), "/api/cdrs", "get")


def test_every_always_present_key_is_required(openapi):
    schemas = openapi["components"]["schemas"]
    item = schemas["CdrListItem"]
    assert set(item["required"]) == set(item["properties"])
    detail = schemas["CdrDetail"]
    assert set(detail["required"]) == set(detail["properties"]) - {"cost", "billed_account"}
    assert set(schemas["CdrListResponse"]["required"]) == {"count", "items", "next_cursor"}
    assert set(schemas["IngestResponse"]["required"]) == {"created", "duplicates", "ids"}


@pytest.mark.parametrize("scopes", [("read",), ("read", "billing")])
def test_detail_body_conforms_with_and_without_billing(openapi, api_client, scopes):
    item = next(demo_cdrs(1))
    create_cdrs(item)
    data = _conforms(
        openapi, api_client(scopes=scopes).get(f"/api/cdrs/{item['id']}"), "/api/cdrs/{id}", "get"
    )
    assert ("cost" in data["items"][0]) == ("billing" in scopes)


def test_cost_is_a_number_documented_as_an_exact_decimal(openapi, api_client):
    cost = openapi["components"]["schemas"]["CdrDetail"]["properties"]["cost"]
    assert cost["type"] == "number" and cost["format"] == "decimal"
    assert "exact decimal" in cost["description"].lower()
    create_cdrs(cdr_payload(cost=Decimal("0.1230"), billed_account="ACC-1"))
    listed = api_client().get("/api/cdrs?top=1")
    cdr_id = orjson.loads(listed.content)["items"][0]["id"]
    raw = api_client().get(f"/api/cdrs/{cdr_id}").content
    assert b'"cost":0.1230' in raw  # a JSON number with the stored digits


def _post(client, body):
    return client.post("/api/cdrs", orjson.dumps(body), content_type="application/json")


def test_ingest_single_and_batch_bodies_conform(openapi, api_client):
    request_schema = openapi["paths"]["/api/cdrs"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    client = api_client(scopes=("write",))
    one = cdr_payload()
    batch = {"items": [cdr_payload(), cdr_payload()]}
    for body in (one, batch):
        _check(openapi, request_schema, orjson.loads(orjson.dumps(body)))
        _conforms(openapi, _post(client, body), "/api/cdrs", "post")
    # The documented examples are accepted by the service as they are.
    examples = openapi["paths"]["/api/cdrs"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    for example in examples.values():
        _check(openapi, request_schema, example["value"])
        assert _post(client, example["value"]).status_code == 201


def test_error_bodies_conform_with_their_status_documented(openapi, api_client, client):
    read_only = api_client(scopes=("read",))
    unknown = "/api/cdrs/NzAwNTUxOTA5NzczMTQ4MTYw"
    cases = [
        (read_only.get("/api/cdrs?top=0"), "/api/cdrs", "get", "VALIDATE_FAILED"),
        (client.get("/api/cdrs"), "/api/cdrs", "get", "UNAUTHORIZED"),
        (_post(read_only, cdr_payload()), "/api/cdrs", "post", "FORBIDDEN"),
        (read_only.get(unknown), "/api/cdrs/{id}", "get", "NOT_FOUND"),
        (
            read_only.get("/api/cdrs/export?format=xml"),
            "/api/cdrs/export",
            "get",
            "VALIDATE_FAILED",
        ),
    ]
    for response, path, method, code in cases:
        data = _conforms(openapi, response, path, method)
        assert data["errors"][0]["code"] == code
    writer = api_client(scopes=("write",))
    too_large = writer.post(
        "/api/cdrs", b"[" + b" " * (9 * 1024 * 1024) + b"]", content_type="application/json"
    )
    assert _conforms(openapi, too_large, "/api/cdrs", "post")["errors"][0]["code"] == (
        "PAYLOAD_TOO_LARGE"
    )
    not_json = writer.post("/api/cdrs", b"a,b", content_type="text/csv")
    assert _conforms(openapi, not_json, "/api/cdrs", "post")["errors"][0]["code"] == (
        "UNSUPPORTED_MEDIA_TYPE"
    )


def test_error_statuses_are_documented_where_they_can_happen(openapi):
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            documented = set(operation["responses"])
            assert {"400", "401", "403", "429", "503"} <= documented, (method, path)
            for status, response in operation["responses"].items():
                if status >= "400":
                    assert response["description"].startswith(f"`{_CODES[int(status)]}`")
    assert "404" in openapi["paths"]["/api/cdrs/{id}"]["get"]["responses"]
    assert {"413", "415"} <= set(openapi["paths"]["/api/cdrs"]["post"]["responses"])


def test_error_code_enum_is_every_code_the_service_emits(openapi):
    code = openapi["components"]["schemas"]["ErrorItem"]["properties"]["code"]
    enum = openapi["components"]["schemas"][code["$ref"].rsplit("/", 1)[1]]["enum"]
    assert set(enum) == set(ERROR_CODES) == {*_CODES.values(), "UNKNOWN"}
    assert {"PAYLOAD_TOO_LARGE", "METHOD_NOT_ALLOWED", "NOT_ACCEPTABLE"} <= set(enum)


def test_top_and_skip_carry_their_limits_and_defaults(openapi):
    params = {p["name"]: p["schema"] for p in openapi["paths"]["/api/cdrs"]["get"]["parameters"]}
    assert params["top"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": TOP_MAX,
        "default": TOP_DEFAULT,
    }
    assert params["skip"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": settings.CDR_MAX_SKIP,
        "default": 0,
    }


def test_every_operation_has_a_summary_description_and_demo_example(openapi):
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            assert operation["summary"], (method, path)
            assert "GET/POST /api/cdrs" not in operation["description"], (method, path)
            assert len(operation["description"]) > 40, (method, path)
            success = next(r for s, r in operation["responses"].items() if s.startswith("2"))
            for media in success["content"].values():
                assert media["examples"], (method, path)
    demo = next(demo_cdrs(2000))  # the first of them is not the newest...
    newest = list(demo_cdrs())[-1]
    detail = openapi["paths"]["/api/cdrs/{id}"]["get"]
    example = detail["responses"]["200"]["content"]["application/json"]["examples"]["demo"]
    assert example["value"]["items"][0]["id"] == newest["id"] != demo["id"]
    _check(
        openapi,
        _schema_of(openapi, "/api/cdrs/{id}", "get", 200, "application/json"),
        (example["value"]),
    )
    path_id = next(p for p in detail["parameters"] if p["name"] == "id")
    assert "base64" in path_id["description"] and "decimal" in path_id["description"]


def test_every_parameter_is_described(openapi):
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            for param in operation.get("parameters", []):
                description = param.get("description", "")
                assert len(description) > 8, (method, path, param["name"])
                assert "* `" not in description, (method, path, param["name"])


def test_export_documents_csv_ndjson_and_the_plain_filters(openapi):
    export = openapi["paths"]["/api/cdrs/export"]["get"]
    assert {"application/x-ndjson", "text/csv"} <= set(export["responses"]["200"]["content"])
    names = {p["name"] for p in export["parameters"]}
    plain = {"started_after", "started_before", "caller", "callee", "caller_domain", "answered"}
    assert plain | {"format", "filter", "search", "orderby"} <= names


def test_ingest_documents_a_single_cdr_and_a_batch(openapi):
    ref = openapi["paths"]["/api/cdrs"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["$ref"]
    body = openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert [b["$ref"].rsplit("/", 1)[1] for b in body["oneOf"]] == [
        "CdrInputRequest",
        "IngestBatchRequest",
    ]


def test_stats_examples_are_the_answer_over_the_demo_data(openapi, api_client):
    """The documented statistics are what the service answers once the demo data is loaded."""
    create_cdrs(*demo_cdrs())
    client = api_client(scopes=("read", "billing"))
    content = openapi["paths"]["/api/cdrs/stats"]["get"]["responses"]["200"]["content"]
    example = content["application/json"]["examples"]["demo"]["value"]
    data = _conforms(
        openapi, client.get("/api/cdrs/stats?group_by=direction"), "/api/cdrs/stats", "get"
    )
    assert data == example
    assert data["total"]["calls"] == len(list(demo_cdrs()))
    as_csv = client.get("/api/cdrs/stats?group_by=direction&format=csv")
    assert as_csv["Content-Type"] == "text/csv"
    assert as_csv.content.decode() == content["text/csv"]["examples"]["demo"]["value"]


def test_portsip_webhook_example_event_stores_the_documented_cdr(openapi, api_client):
    webhook = openapi["paths"]["/api/webhooks/portsip"]["post"]
    event = webhook["requestBody"]["content"]["application/json"]["examples"]["call_cdr"]
    examples = webhook["responses"]["200"]["content"]["application/json"]["examples"]
    response = api_client(scopes=("write",)).post(
        "/api/webhooks/portsip", orjson.dumps(event["value"]), content_type="application/json"
    )
    assert (
        _conforms(openapi, response, "/api/webhooks/portsip", "post")
        == (examples["stored"]["value"])
    )
    newest = list(demo_cdrs())[-1]
    stored = orjson.loads(api_client().get(f"/api/cdrs/{newest['id']}").content)["items"][0]
    for field in ("started_at", "answered_at", "caller", "callee", "direction", "end_reason"):
        assert stored[field] == newest[field], field
    schema = _schema_of(openapi, "/api/webhooks/portsip", "post", 200, "application/json")
    for example in examples.values():
        _check(openapi, schema, example["value"])
