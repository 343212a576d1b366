"""One error shape for every failure: ``{"errors": [{"code", "message", "detail"}]}``.

DRF's own exceptions (auth, 404, 405, parse errors, throttling), our validation errors and
anything unexpected all come out of ``exception_handler``; Django-level 404/500 under
/api/ come out of ``json_404``/``json_500``. No body ever carries a traceback or SQL.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from rest_framework import exceptions, status
from rest_framework.response import Response

log = logging.getLogger("cdrs.api")

_CODES = {
    400: "VALIDATE_FAILED",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    408: "REQUEST_TIMEOUT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "THROTTLED",
    503: "SERVICE_UNAVAILABLE",
}


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
    code = _CODES.get(status_code, "UNKNOWN" if status_code >= 500 else "VALIDATE_FAILED")
    return {"errors": [{"code": code, "message": message, "detail": detail or {}}]}


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


def json_500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(500, "internal error"), status=500)
    from django.views.defaults import server_error

    return server_error(request)


def json_400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(400, "bad request"), status=400)
    from django.views.defaults import bad_request

    return bad_request(request, exception or Exception())
