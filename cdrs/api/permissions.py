"""Scope checks: each view maps HTTP methods to the scope they need in ``required_scopes``."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from cdrs.models import ApiToken


def token_of(request: Request) -> ApiToken:
    token = request.auth
    assert isinstance(token, ApiToken)
    return token


class HasScope(BasePermission):
    """Allows a request whose token has the view's ``required_scopes[method]``."""

    message = "this token lacks the scope this endpoint needs"

    def has_permission(self, request: Request, view: Any) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return False
        scopes: dict[str, str] = getattr(view, "required_scopes", {})
        needed = scopes.get(request.method or "GET", scopes.get("*", "read"))
        if needed not in token.scopes:
            self.message = f"this token lacks the '{needed}' scope"
            return False
        return True
