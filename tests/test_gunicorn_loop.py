"""The loop worker's WSGI environ and its choice of inline or pooled requests (no server:
tests/test_http_edges.py drives the worker itself)."""

from __future__ import annotations

from cdrservice.gunicorn_loop import runs_inline, wsgi_environ


def scope(path: bytes, query: bytes = b"", headers=()) -> dict:
    return {
        "type": "http",
        "method": "GET",
        "path": path.decode("utf-8", "replace"),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8887),
        "client": ("10.0.0.7", 51000),
        "headers": list(headers),
    }


def test_environ_is_what_gunicorns_wsgi_workers_build():
    environ = wsgi_environ(
        scope(
            b"/api/cdrs/NzAw%3D%3D/caf%C3%A9",
            b"top=5&filter=caller%20eq%20'1'",
            [
                (b"content-type", b"application/json"),
                (b"content-length", b"12"),
                (b"x-request-id", b"abc"),
                (b"accept", b"a/b"),
                (b"accept", b"c/d"),
            ],
        )
    )
    # PEP 3333: the %-decoded bytes of the path as latin-1 text (Django re-decodes UTF-8).
    assert environ["PATH_INFO"] == "/api/cdrs/NzAw==/café".encode().decode("latin-1")
    assert environ["QUERY_STRING"] == "top=5&filter=caller%20eq%20'1'"
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["CONTENT_LENGTH"] == "12"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert environ["HTTP_X_REQUEST_ID"] == "abc"
    assert environ["HTTP_ACCEPT"] == "a/b,c/d"
    assert (environ["REMOTE_ADDR"], environ["SERVER_PORT"]) == ("10.0.0.7", "8887")


def test_a_header_spelled_with_underscores_is_dropped():
    # Else X_Forwarded_Proto would arrive as HTTP_X_FORWARDED_PROTO, the trusted header.
    environ = wsgi_environ(scope(b"/api/cdrs", headers=[(b"x_forwarded_proto", b"https")]))
    assert "HTTP_X_FORWARDED_PROTO" not in environ


def test_short_api_requests_run_inline_and_long_ones_in_the_pool():
    def inline(path: str, query: str = "") -> bool:
        return runs_inline({"PATH_INFO": path, "QUERY_STRING": query})

    assert inline("/api/cdrs", "top=50")
    assert inline("/api/cdrs/NzAw")
    assert inline("/api/webhooks/portsip")
    assert inline("/healthz")
    assert not inline("/api/cdrs", "search=0171")
    assert not inline("/api/cdrs/export")
    assert not inline("/api/cdrs/stats", "group_by=day")
    assert not inline("/admin/cdrs/cdr/")
    assert not inline("/api/schema")
