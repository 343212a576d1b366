"""One error shape for every failure: ``{"errors": [{"code", "message", "detail"}]}``.

DRF's own exceptions (auth, 404, 405, parse errors, throttling), our validation errors and
anything unexpected all come out of ``exception_handler``; Django-level 404/500 under
/api/ come out of ``json_404``/``json_500``. No body ever carries a traceback or SQL.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.conf import settings
from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
)
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from redis.exceptions import RedisError
from rest_framework import exceptions, status
from rest_framework.response import Response

from cdrs import timeouts
from cdrs.error_codes import error_code

log = logging.getLogger("cdrs.api")


class ValidateFailed(exceptions.APIException):
    """A client mistake in a query option or body: 400 VALIDATE_FAILED."""

    status_code = 400
    default_code = "VALIDATE_FAILED"

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = detail or {}


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "request body is too large"


def error_body(status_code: int, message: str, detail: Any = None) -> dict[str, Any]:
    code = error_code(status_code)
    return {"errors": [{"code": code, "message": message, "detail": detail or {}}]}


def _suspicious_message(exc: Exception | None) -> str:
    """What a client did wrong, for Django's request-parsing refusals (never internals)."""
    if isinstance(exc, TooManyFieldsSent):
        return f"too many query parameters: at most {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS}"
    return "bad request"


def _first_message(detail: Any) -> str:
    """A readable one-line message out of DRF's nested error details."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            inner = _first_message(value)
            return inner if key == "non_field_errors" else f"{key}: {inner}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("not found")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, UnreadablePostError):
        # The body stopped arriving: too slow (the server's read deadline) or cut off.
        if isinstance(exc.__cause__, TimeoutError):
            return Response(error_body(408, "request body not received in time"), status=408)
        return Response(error_body(400, "request body could not be read"), status=400)
    if isinstance(exc, ValidateFailed):
        body = error_body(400, exc.message, exc.extra)
        return Response(body, status=400)
    if isinstance(exc, RequestDataTooBig):
        message = f"request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes"
        return Response(error_body(413, message), status=413)
    if isinstance(exc, SuspiciousOperation):
        # Django refuses to parse the request (e.g. TooManyFieldsSent when DRF first reads
        # the query string, before authentication): the client's mistake, not ours.
        return Response(error_body(400, _suspicious_message(exc)), status=400)
    if isinstance(exc, exceptions.APIException):
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            exc.status_code = status.HTTP_401_UNAUTHORIZED
            headers["WWW-Authenticate"] = 'Bearer realm="api"'
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait or 1))  # type: ignore[attr-defined]
        detail = exc.detail
        if isinstance(exc, exceptions.ValidationError):
            body = error_body(400, _first_message(detail), {"fields": detail})
        else:
            body = error_body(exc.status_code, _first_message(detail))
        return Response(body, status=exc.status_code, headers=headers)
    if isinstance(exc, OperationalError) and timeouts.is_query_cancelled(exc):
        # 503, not 504: the contract's SERVICE_UNAVAILABLE; no Retry-After, since the same
        # query is likely to run out of time again (README "Query limits and timeouts").
        log.warning("statement cancelled: ran longer than the statement timeout")
        return Response(
            error_body(
                503,
                "the query ran longer than the statement timeout and was cancelled; narrow "
                "the filter, or page with next_cursor instead of skip",
            ),
            status=503,
        )
    if isinstance(exc, OperationalError | InterfaceError):
        log.error("database unavailable: %s", type(exc).__name__)
        return Response(
            error_body(503, "database unavailable, try again shortly"),
            status=503,
            headers={"Retry-After": "5"},
        )
    view = context.get("view")
    log.exception("unhandled error in %s", type(view).__name__ if view else "view", exc_info=exc)
    if isinstance(exc, DatabaseError):
        return Response(error_body(500, "internal database error"), status=500)
    return Response(error_body(500, "internal error"), status=500)


def json_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(404, "not found"), status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


# Outside DRF views (the admin, middleware): the database, or the Redis holding the admin's
# login counters, cannot be reached. Plain HTML: it may be all a browser user sees.
_UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Service unavailable</title></head>
<body><h1>Service unavailable</h1>
<p>The database cannot be reached just now. Try again in a moment.</p></body></html>
"""


def json_500(request: HttpRequest) -> HttpResponse:
    # Django calls this handler while it handles the exception, so sys.exc_info() has it.
    if isinstance(sys.exc_info()[1], OperationalError | InterfaceError | RedisError):
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse(
                error_body(503, "database unavailable, try again shortly"), status=503
            )
        else:
            response = HttpResponse(_UNAVAILABLE_PAGE, status=503)
        response["Retry-After"] = "5"
        return response
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(500, "internal error"), status=500)
    from django.views.defaults import server_error

    return server_error(request)


def json_400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(400, _suspicious_message(exception)), status=400)
    from django.views.defaults import bad_request

    return bad_request(request, exception or Exception())
