"""/api/ requests take the API's own middleware chain (cdrservice.handlers); the admin keeps
the full one. Both the production WSGI handler and the test client's handler split the same
way, so what the suite sees through the test client is what clients get from gunicorn."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest
from django.test import Client

from cdrs.ids import encode_id
from cdrservice.handlers import ApiAwareWSGIHandler
from tests.factories import create_cdr

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def wsgi_get(path: str, **headers: str) -> tuple[str, dict[str, str], bytes]:
    """One GET through the production WSGI handler, in process (as gunicorn calls it)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()},
    }
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    body = b"".join(ApiAwareWSGIHandler()(environ, start_response))
    status, header_list = started[0]
    return status, dict(header_list), body


@pytest.mark.django_db(transaction=True)
def test_api_answers_carry_the_security_headers_without_session_machinery(client_ro):
    cdr_id = encode_id(create_cdr())
    for status, headers in (
        wsgi_get(f"/api/cdrs/{cdr_id}", Authorization=client_ro.defaults["HTTP_AUTHORIZATION"])[:2],
        (lambda r: (str(r.status_code), dict(r.items())))(client_ro.get(f"/api/cdrs/{cdr_id}")),
    ):
        assert status.startswith("200"), status
        for name, value in SECURITY_HEADERS.items():
            assert headers.get(name) == value, (name, headers)
        assert headers["X-Request-ID"]
        assert int(headers["Content-Length"]) > 0
        # No session, CSRF or messages cookie, and no Vary: Cookie on a Bearer-token answer.
        assert "Set-Cookie" not in headers
        assert "Cookie" not in headers.get("Vary", "")


@pytest.mark.django_db(transaction=True)
def test_the_admin_keeps_sessions_csrf_and_the_same_security_headers():
    status, headers, body = wsgi_get("/admin/login/")
    assert status.startswith("200")
    assert "csrftoken=" in headers.get("Set-Cookie", "")
    assert b"csrfmiddlewaretoken" in body
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    # A login POST without the CSRF token is refused: CSRF protection is on for the admin.
    response = Client(enforce_csrf_checks=True).post(
        "/admin/login/", {"username": "x", "password": "y"}
    )
    assert response.status_code == 403


@pytest.mark.django_db(transaction=True)
def test_an_api_path_error_is_the_contracts_json_on_both_handlers(client_ro):
    status, headers, body = wsgi_get("/api/cdrs/bm90LWFuLWlk", Authorization="Bearer nope")
    assert status.startswith("401")
    assert headers["Content-Type"].startswith("application/json")
    assert b'"errors"' in body
    response = client_ro.get("/api/cdrs/bm90LWFuLWlk")  # not the base64 of a decimal id
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "NOT_FOUND"
