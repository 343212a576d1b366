"""Request id and one JSON access-log line per request (never the Authorization header);
X-Forwarded-Proto only from trusted proxies."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from cdrs.net import client_ip, is_trusted_proxy, trusted_proxy_networks

log = logging.getLogger("cdrs.request")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestLogMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        supplied = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = supplied if _REQUEST_ID_RE.fullmatch(supplied) else uuid.uuid4().hex
        request.META["cdr.request_id"] = request_id
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "token_prefix": request.META.get("cdr.token_prefix", ""),
                "client_ip": client_ip(request),
            },
        )
        return response


class TrustedProxyMiddleware:
    """Drops X-Forwarded-Proto unless a trusted proxy sent it (cdrs.net, CDR_TRUSTED_PROXIES).

    Django's SECURE_PROXY_SSL_HEADER trusts the header from anyone; a client that reaches
    the service directly must not make a plain-HTTP request look like HTTPS (secure-cookie
    and redirect decisions rest on it).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        trusted_proxy_networks()  # a malformed CDR_TRUSTED_PROXIES stops the worker at start
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "HTTP_X_FORWARDED_PROTO" in request.META and not is_trusted_proxy(
            request.META.get("REMOTE_ADDR", "")
        ):
            del request.META["HTTP_X_FORWARDED_PROTO"]
        return self.get_response(request)
