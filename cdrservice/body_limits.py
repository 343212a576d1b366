"""WSGI middleware: request bodies Django can read and a 413 before reading an oversized one.

Django reads exactly CONTENT_LENGTH bytes of a body. A chunked request has no
Content-Length, so Django would see an empty body (and the API would answer "started_at is
required"): here such a body is read first, up to the limit, and handed on with its length.
A declared Content-Length over the limit is answered 413 at once, instead of tying up a
thread while the body (or a client that never sends it) arrives. The limit is
DATA_UPLOAD_MAX_MEMORY_SIZE (CDR_MAX_BODY_BYTES).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from django.conf import settings
from gunicorn.http.errors import ParseException

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _error(start_response: StartResponse, status: str, message: str) -> list[bytes]:
    from cdrs.api.errors import error_body  # after django.setup(): it imports DRF

    body = orjson.dumps(error_body(int(status.split()[0]), message))
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


class RequestBodyLimits:
    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        too_large = f"request body is larger than {limit} bytes"
        declared = environ.get("CONTENT_LENGTH") or ""
        if declared.isdigit() and int(declared) > limit:
            return _error(start_response, "413 Payload Too Large", too_large)
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            try:
                body = environ["wsgi.input"].read(limit + 1)
            except TimeoutError:
                return _error(
                    start_response, "408 Request Timeout", "request body not received in time"
                )
            except ParseException as exc:  # a malformed chunk
                return _error(
                    start_response, "400 Bad Request", f"malformed chunked body: {exc}"[:200]
                )
            if len(body) > limit:
                return _error(start_response, "413 Payload Too Large", too_large)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_TRANSFER_ENCODING"]
        return self.app(environ, start_response)
