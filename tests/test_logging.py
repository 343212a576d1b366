"""The request log: one JSON object per line on stdout, with a request id, never a secret."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from django.test import Client

from cdrs.logging import JsonFormatter
from cdrs.tokens import mint_token

FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "token_prefix",
}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def log_output() -> Iterator[Callable[[], str]]:
    """What the configured stdout handler (LOGGING in settings) writes during the test."""
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and isinstance(h.formatter, JsonFormatter)
    ]
    assert handlers, "settings.LOGGING should put a JSON stream handler on the root logger"
    handler = handlers[0]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream.getvalue
    finally:
        handler.setStream(previous)  # type: ignore[arg-type]


def request_lines(output: str) -> list[dict]:
    """Every line must be one JSON object; returns the request log's lines."""
    lines = output.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(entry, dict) for entry in parsed)
    return [entry for entry in parsed if entry["logger"] == "cdrs.request"]


def test_one_json_line_per_request_with_every_field(log_output):
    client = Client()
    client.get("/healthz")
    client.get("/healthz", {"verbose": "1"})
    lines = request_lines(log_output())
    assert len(lines) == 2
    line = lines[0]
    assert set(line) >= FIELDS
    assert line["level"] == "INFO"
    assert line["logger"] == "cdrs.request"
    assert line["message"] == "GET /healthz 200"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/healthz", 200)
    assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    assert line["token_prefix"] == ""
    assert GENERATED_ID.fullmatch(line["request_id"])
    stamp = datetime.fromisoformat(line["time"])
    offset = stamp.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    # The path is logged without its query string.
    assert lines[1]["path"] == "/healthz"


def test_a_path_with_a_newline_stays_one_line(log_output):
    Client().get('/healthz%0A{"level":"ERROR","message":"forged"}')
    output = log_output()
    lines = request_lines(output)
    assert len(output.splitlines()) == len(lines) == 1
    assert lines[0]["status"] == 404
    assert lines[0]["path"].startswith("/healthz\n")
    assert lines[0]["level"] == "INFO"


@pytest.mark.django_db
def test_token_prefix_is_logged_never_the_token(log_output):
    minted = mint_token(username="logger", scopes=("read",))
    secret = minted.plain.split("_", 2)[2]
    assert len(secret) >= 40  # token_urlsafe(32)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {minted.plain}")
    assert client.get("/api/cdrs").status_code == 200
    # A token pasted into the query string is not logged either.
    client.get("/api/cdrs", {"access_token": minted.plain})

    output = log_output()
    lines = request_lines(output)
    assert [entry["status"] for entry in lines] == [200, 400]
    assert all(entry["token_prefix"] == minted.token.prefix for entry in lines)
    assert minted.token.prefix in output
    assert secret not in output
    assert minted.plain not in output
    assert "Bearer" not in output
    assert "authorization" not in output.lower()


@pytest.mark.django_db
def test_rejected_token_logs_no_prefix_and_no_secret(log_output):
    minted = mint_token(username="logger", scopes=("read",))
    forged = minted.plain[:-6] + ("A" * 6 if not minted.plain.endswith("A" * 6) else "B" * 6)
    response = Client().get("/api/cdrs", HTTP_AUTHORIZATION=f"Bearer {forged}")
    assert response.status_code == 401

    output = log_output()
    (line,) = request_lines(output)
    assert line["status"] == 401
    assert line["token_prefix"] == ""
    assert forged.split("_", 2)[2] not in output
    assert minted.plain.split("_", 2)[2] not in output


def test_valid_request_id_is_echoed_and_logged(log_output):
    response = Client().get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a.01:retry_2")
    assert response["X-Request-ID"] == "lb-7f3a.01:retry_2"
    (line,) = request_lines(log_output())
    assert line["request_id"] == "lb-7f3a.01:retry_2"


@pytest.mark.parametrize(
    "supplied",
    [None, "", "has space", "a" * 129, "semi;colon", "new\nline", "ünïcode"],
)
def test_missing_or_invalid_request_id_is_replaced_by_a_generated_one(log_output, supplied):
    extra = {} if supplied is None else {"HTTP_X_REQUEST_ID": supplied}
    first = Client().get("/healthz", **extra)["X-Request-ID"]
    second = Client().get("/healthz", **extra)["X-Request-ID"]
    assert GENERATED_ID.fullmatch(first) and GENERATED_ID.fullmatch(second)
    assert first != second
    assert [entry["request_id"] for entry in request_lines(log_output())] == [first, second]
