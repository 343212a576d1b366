"""POST /api/webhooks/portsip: PortSIP's "Push CDR" events (thin: cdrs.webhooks does the work).

PortSIP counts only a 200 as delivered, retries anything else five times and stops at a 404
(``docs/portsip-push-cdr.md`` §6). So: stored, duplicate, ignored and dead-lettered
events are all 200; bad credentials 401; a token without the write scope, or a CDR outside
a domain-limited token's domains, 403; a body that is not JSON 400, too large 413.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cdrs import webhooks
from cdrs.api.errors import PayloadTooLarge, ValidateFailed
from cdrs.api.parsers import RawBodyParser
from cdrs.api.permissions import HasScope, token_of
from cdrs.api.schema import COMMON_ERRORS, error_response
from cdrs.api.serializers import ErrorItemSerializer
from cdrs.auth import BasicTokenAuthentication, BearerTokenAuthentication
from cdrs.ids import encode_id
from cdrs.services import OutsideTokenDomains

log = logging.getLogger("cdrs.webhook")

# Both schemes we accept, so a client that sends Basic only after a challenge finds it.
CHALLENGE = 'Bearer realm="api", Basic realm="api", charset="UTF-8"'


class AlwaysJsonNegotiation(BaseContentNegotiation):
    """PortSIP's Accept and Content-Type headers are undocumented: never a 406 or a 415."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser:
        return next(iter(parsers))

    def select_renderer(
        self,
        request: Request,
        renderers: Iterable[BaseRenderer],
        format_suffix: str | None = None,
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class PortsipWebhookResponseSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="CDRs stored by this event (0 or 1)")
    duplicates = serializers.IntegerField(help_text="1 when the CDR was already stored")
    ids = serializers.ListField(child=serializers.CharField(), help_text="public CDR ids")
    ignored = serializers.CharField(
        required=False, help_text="the event_type of an event that carries no CDR"
    )
    dead_letter = serializers.IntegerField(
        required=False, help_text="id of the dead-letter row keeping an event not stored"
    )
    errors = ErrorItemSerializer(  # type: ignore[assignment]
        many=True, required=False, help_text="why the event was not stored"
    )


def _raw_body(request: Request) -> bytes:
    try:
        data = request.data
    except PayloadTooLarge:
        log.warning(
            "portsip webhook body over the size limit, rejected",
            extra={"token_prefix": token_of(request).prefix},
        )
        raise
    # DRF gives an empty body to no parser, and {} for it.
    return data if isinstance(data, bytes) else b""


class PortsipWebhookView(APIView):
    """PortSIP "CDR Events" URL: one JSON event per POST."""

    # Basic first: it passes on any other scheme, and Bearer answers the rest.
    authentication_classes = [BasicTokenAuthentication, BearerTokenAuthentication]
    permission_classes = [HasScope]
    required_scopes = {"*": "write"}
    parser_classes = [RawBodyParser]
    content_negotiation_class = AlwaysJsonNegotiation

    @extend_schema(
        summary="PortSIP Push CDR webhook (one event per request)",
        description="A PortSIP PBX's CDR Events URL. `call_cdr` events are stored as CDRs "
        "(de-duplicated); other event types are acknowledged and ignored; an event that "
        "cannot be stored is kept in a dead-letter table and answered 200 with `errors`. "
        "Auth: Bearer token, or HTTP Basic with the token as the password.",
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            200: OpenApiResponse(
                PortsipWebhookResponseSerializer,
                description="Delivered: the event was stored, was a duplicate, carries no CDR "
                "(`ignored`), or was kept in the dead-letter table (`dead_letter`, `errors`).",
            ),
            **COMMON_ERRORS,
            400: error_response(
                "VALIDATE_FAILED", "the body is empty, not UTF-8 or not JSON at all."
            ),
            401: error_response(
                "UNAUTHORIZED",
                "missing, malformed, unknown, revoked or expired token "
                "(`WWW-Authenticate: Bearer`, `Basic`).",
            ),
            403: error_response(
                "FORBIDDEN",
                "the token lacks the write scope, or the CDR's caller_domain and "
                "callee_domain are outside a domain-limited token's domains.",
            ),
            413: error_response(
                "PAYLOAD_TOO_LARGE", "the body is larger than `CDR_WEBHOOK_MAX_BODY_BYTES`."
            ),
        },
    )
    def post(self, request: Request) -> Response:
        token = token_of(request)
        try:
            text, event = webhooks.parse_event(_raw_body(request))
        except webhooks.EventNotJson as exc:
            log.warning(
                "portsip webhook body rejected: %s", exc, extra={"token_prefix": token.prefix}
            )
            raise ValidateFailed(str(exc)) from exc
        try:
            outcome = webhooks.receive_portsip_event(text, event, token=token)
        except OutsideTokenDomains as exc:
            raise PermissionDenied(
                "the CDR's caller_domain and callee_domain are outside this token's domains; "
                "nothing was stored"
            ) from exc
        result = outcome.result
        body: dict[str, Any] = {
            "created": result.created if result else 0,
            "duplicates": result.duplicates if result else 0,
            "ids": [encode_id(i) for i in result.ids if i] if result else [],
        }
        if outcome.ignored:
            body["ignored"] = outcome.event_type
        if outcome.dead_letter is not None:
            body["dead_letter"] = outcome.dead_letter.pk
            body["errors"] = [outcome.dead_letter.error]
        return Response(body, status=200)

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if response.status_code == 401:
            response["WWW-Authenticate"] = CHALLENGE
        return response
