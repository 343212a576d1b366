"""/api/ requests through a middleware chain of their own (``API_MIDDLEWARE``).

The admin needs sessions, CSRF, authentication, messages, the login lockout and static
files; a Bearer-token API request needs none of them, and each layer costs every request
(about an eighth of a detail request's Python calls). Django builds one chain from
``MIDDLEWARE`` per handler and offers no per-URL chains, so this module builds a second one
from ``API_MIDDLEWARE`` the way ``BaseHandler.load_middleware`` does (synchronous only: the
service runs under WSGI) and picks the chain by path. The production WSGI handler and the
test client's handler (tests/conftest.py) both use it, so tests see what clients see.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.core.handlers.base import BaseHandler
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

API_PREFIX = "/api/"


class _ApiChainHandler(BaseHandler):
    """A handler whose middleware chain is ``settings.API_MIDDLEWARE``."""

    def load_middleware(self, is_async: bool = False) -> None:
        assert not is_async, "the API chain is built for WSGI"
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler = convert_exception_to_response(self._get_response)  # type: ignore[attr-defined]
        for path in reversed(settings.API_MIDDLEWARE):
            try:
                middleware = import_string(path)(handler)
            except MiddlewareNotUsed:
                continue
            if hasattr(middleware, "process_view"):
                self._view_middleware.insert(0, middleware.process_view)
            if hasattr(middleware, "process_template_response"):
                self._template_response_middleware.append(middleware.process_template_response)
            if hasattr(middleware, "process_exception"):
                self._exception_middleware.append(middleware.process_exception)
            handler = convert_exception_to_response(middleware)
        self._middleware_chain = handler


class ApiChainMixin:
    """Serves paths under /api/ through the API chain, everything else through MIDDLEWARE."""

    _api_chain: _ApiChainHandler

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async)  # type: ignore[misc]
        self._api_chain = _ApiChainHandler()
        self._api_chain.load_middleware()

    def get_response(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(API_PREFIX):
            return self._api_chain.get_response(request)
        return super().get_response(request)  # type: ignore[misc]


class ApiAwareWSGIHandler(ApiChainMixin, WSGIHandler):
    """The production WSGI handler (cdrservice.wsgi)."""
