"""Every error under /api/ has the contract's body, never HTML, a traceback or a secret."""

from __future__ import annotations

import orjson
import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def _error(response):
    assert response["Content-Type"].startswith("application/json")
    body = orjson.loads(response.content)
    assert set(body) == {"errors"} and len(body["errors"]) == 1
    error = body["errors"][0]
    assert set(error) == {"code", "message", "detail"}
    assert "Traceback" not in error["message"]
    return error


def test_unknown_api_path_is_json_404():
    assert _error(Client().get("/api/nothing-here"))["code"] == "NOT_FOUND"


def test_method_not_allowed_is_json_405(client_ro):
    response = client_ro.delete("/api/cdrs")
    assert response.status_code == 405
    assert _error(response)["code"] == "METHOD_NOT_ALLOWED"


def test_malformed_json_body_is_400(client_full):
    response = client_full.post("/api/cdrs", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert _error(response)["code"] == "VALIDATE_FAILED"


def test_unsupported_media_type_is_415(client_full):
    response = client_full.post(
        "/api/cdrs", "a=b", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    _error(response)


def test_request_id_is_returned_and_validated(client_ro):
    response = client_ro.get("/api/cdrs", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"
    response = client_ro.get("/api/cdrs", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert (
        response["X-Request-ID"] != "bad id\nwith newline" and len(response["X-Request-ID"]) == 32
    )


def test_health_endpoints_need_no_auth():
    assert Client().get("/healthz").status_code == 200
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert orjson.loads(response.content) == {"status": "ready"}


def test_schema_and_docs_are_public_while_the_api_is_not():
    client = Client()
    schema = client.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = orjson.loads(schema.content)["paths"]
    assert {"/api/cdrs", "/api/cdrs/{id}", "/api/cdrs/export"} <= set(paths)
    assert client.get("/api/docs").status_code == 200
    assert client.get("/api/cdrs").status_code == 401
