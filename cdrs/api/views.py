"""HTTP for CDRs: list, detail, ingest, export. Thin: parse options, call a selector/service."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from cdrs import routers, selectors, services
from cdrs.api import serializers as s
from cdrs.api.errors import ValidateFailed
from cdrs.api.permissions import token_of
from cdrs.api.schema import (
    CDR_OR_BATCH,
    COMMON_ERRORS,
    FILTER_PARAMETER,
    PAYLOAD_TOO_LARGE,
    SEARCH_PARAMETER,
    UNSUPPORTED_MEDIA_TYPE,
    CdrSchema,
    error_response,
)
from cdrs.export import StartedStream, csv_lines, ndjson_lines
from cdrs.fields import (
    ORDERABLE_FIELD_NAMES,
    visible_field_names,
)
from cdrs.ids import InvalidId, decode_id_or_decimal, encode_id
from cdrs.models import ApiToken, Cdr
from cdrs.query.options import (
    TOP_DEFAULT,
    TOP_MAX,
    ListOptions,
    OptionError,
    parse_list_options,
)
from cdrs.query.orderby import DEFAULT_ORDER
from cdrs.query.plain import CdrPlainFilterSet
from cdrs.validation import validate_batch
from cdrs.wire import cdr_item

MAX_BATCH = s.MAX_BATCH


_NOT_FOUND = error_response("NOT_FOUND", "no CDR with this id, or one outside the token's domains.")
_QUERY_DOC = [
    OpenApiParameter(
        "top",
        {"type": "integer", "minimum": 1, "maximum": TOP_MAX, "default": TOP_DEFAULT},
        description=f"Page size, 1-{TOP_MAX} (default {TOP_DEFAULT}).",
    ),
    OpenApiParameter(
        "skip",
        {"type": "integer", "minimum": 0, "maximum": settings.CDR_MAX_SKIP, "default": 0},
        description=f"Rows to skip, 0-{settings.CDR_MAX_SKIP} (`CDR_MAX_SKIP`, default 0); "
        "deeper pages by `cursor`, which is also cheaper at any depth.",
    ),
    OpenApiParameter(
        "orderby",
        str,
        description=f"`field [asc|desc], ...` over {', '.join(ORDERABLE_FIELD_NAMES)}; ties "
        f"broken by id. Default `{DEFAULT_ORDER[0]}`.",
    ),
    FILTER_PARAMETER,
    SEARCH_PARAMETER,
    OpenApiParameter(
        "count",
        {"type": "boolean", "default": True},
        description="false skips counting (count is then -1).",
    ),
    OpenApiParameter("cursor", str, description="next_cursor of the previous page (keyset)."),
]
_ID_PARAM = OpenApiParameter(
    "id",
    str,
    OpenApiParameter.PATH,
    description="The CDR's public id, base64 as every response shows it "
    "(`NzAwNTUxOTA5NzczMTQ4MTYw`), or the decimal id it encodes (`700551909773148160`, the "
    "spelling of PortSIP's newer REST guide).",
)


def _options(request: Request, token: ApiToken, *, export: bool = False) -> ListOptions:
    try:
        return parse_list_options(
            dict(request.query_params.lists()), billing=token.scope_billing, export=export
        )
    except OptionError as exc:
        raise ValidateFailed(str(exc), {"option": exc.option}) from exc


class CdrViewSet(viewsets.ViewSet):
    """GET/POST /api/cdrs, GET /api/cdrs/{id}, GET /api/cdrs/export."""

    schema = CdrSchema()

    required_scopes = {"GET": "read", "HEAD": "read", "POST": "write"}
    # Declared for the OpenAPI schema (plain filters); selectors apply the same FilterSet.
    queryset = Cdr.objects.none()
    filter_backends = [DjangoFilterBackend]
    filterset_class = CdrPlainFilterSet
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> Any:  # for drf-spectacular's django-filter introspection
        return self.queryset

    @extend_schema(
        summary="List CDRs",
        description="A page of CDRs, newest first unless `orderby` says otherwise, with the "
        "number of matching CDRs (`count`) and a `next_cursor` for the next page. Items carry "
        "every field but cost and billed_account. Scope: read. A token limited to domains "
        "sees only CDRs whose caller_domain or callee_domain is one of them.",
        parameters=_QUERY_DOC,
        responses={200: s.CdrListResponseSerializer, **COMMON_ERRORS},
    )
    @routers.reads_from_replica
    def list(self, request: Request) -> Response:
        token = token_of(request)
        page = selectors.cdr_list(token=token, options=_options(request, token))
        return Response(
            {
                "count": page.count,
                "items": [cdr_item(row) for row in page.rows],
                "next_cursor": page.next_cursor,
            }
        )

    @extend_schema(
        summary="Retrieve CDR detailed information",
        description='One CDR, as `{"items": [cdr]}`. cost and billed_account only for '
        "tokens with the billing scope. Scope: read. An unknown or malformed id, or a CDR "
        "outside the token's domains, is a 404.",
        parameters=[_ID_PARAM],
        responses={200: s.CdrDetailResponseSerializer, 404: _NOT_FOUND, **COMMON_ERRORS},
    )
    @routers.reads_from_replica
    def retrieve(self, request: Request, pk: str) -> Response:
        try:
            cdr_id = decode_id_or_decimal(pk)
        except InvalidId as exc:
            raise NotFound("CDR not found") from exc
        row = selectors.cdr_get(token=token_of(request), cdr_id=cdr_id)
        if row is None:
            raise NotFound("CDR not found")
        return Response({"items": [cdr_item(row)]})

    @extend_schema(
        summary="Ingest CDRs",
        description='Store one CDR (a CDR object) or a batch (`{"items": [...]}`, 1 to '
        f"{MAX_BATCH}). All or nothing: any invalid CDR is a 400 listing every bad item by "
        "index and field, and nothing is stored. A CDR already stored (same id, or same "
        "call_id + started_at + caller + callee) is counted as a duplicate and answered with "
        "its stored id, never stored twice: re-sending is safe. Scope: write.",
        request=CDR_OR_BATCH,
        responses={
            201: s.IngestResponseSerializer,
            **COMMON_ERRORS,
            413: PAYLOAD_TOO_LARGE,
            415: UNSUPPORTED_MEDIA_TYPE,
        },
    )
    def create(self, request: Request) -> Response:
        body: Any = request.data
        if isinstance(body, dict) and "items" in body and isinstance(body["items"], list):
            items = body["items"]
            if len(body) != 1:
                raise ValidateFailed("a batch body has only the key 'items'")
        elif isinstance(body, dict):
            items = [body]
        else:
            raise ValidateFailed('body must be a CDR object or {"items": [...]}')
        if not 1 <= len(items) <= MAX_BATCH:
            raise ValidateFailed(f"items: between 1 and {MAX_BATCH} CDRs per request")
        rows, bad = validate_batch(items)
        if bad:
            first_index, first_errors = bad[0]
            field, why = next(iter(first_errors.items()))
            raise ValidateFailed(
                f"{len(bad)} of {len(items)} CDRs are invalid, nothing was stored; "
                f"first: items[{first_index}].{field}: {why}",
                {"items": [{"index": i, "errors": e} for i, e in bad]},
            )
        token = token_of(request)
        try:
            result = services.cdr_ingest_for_token(rows=rows, token=token)
        except services.OutsideTokenDomains as exc:
            from cdrs.api.errors import error_body

            why = "neither caller_domain nor callee_domain is one of this token's domains"
            named = ", ".join(token.domains[:5]) + (", ..." if len(token.domains) > 5 else "")
            return Response(
                error_body(
                    403,
                    f"{len(exc.indexes)} of {len(items)} CDRs are outside this token's domains "
                    f"({named}), nothing was stored; "
                    f"first: items[{exc.indexes[0]}]",
                    {"items": [{"index": i, "errors": {"domains": why}} for i in exc.indexes]},
                ),
                status=403,
            )
        return Response(
            {
                "created": result.created,
                "duplicates": result.duplicates,
                "ids": [encode_id(i) for i in result.ids],
            },
            status=201,
        )

    @extend_schema(
        summary="Export every matching CDR as NDJSON or CSV (streamed)",
        description="Every CDR the query matches, streamed in constant memory: one JSON "
        "object a line (`format=ndjson`, the default) or CSV with a header of field names "
        "(`format=csv`; a cell starting with `=`, `+`, `-`, `@`, tab, CR or `'` gets one "
        "leading `'` so no spreadsheet formula runs). Same filters, search, orderby and "
        "scopes as the list, no paging. `import_cdrs` reads both back unchanged. The last line "
        'is a trailer with the row count: `{"export_complete":true,"rows":N}` (NDJSON) or '
        "`#export_complete rows=N` (CSV); a stream without it was cut short. Scope: read.",
        parameters=[
            OpenApiParameter(
                "format",
                {"type": "string", "enum": ["ndjson", "csv"], "default": "ndjson"},
                description="`ndjson` (default) or `csv`.",
            ),
            *[p for p in _QUERY_DOC if p.name in ("orderby", "filter", "search")],
        ],
        responses={
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR, description="One CDR a line (`format=ndjson`)."
            ),
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="A header line, then one CDR a row (`format=csv`)."
            ),
            **COMMON_ERRORS,
        },
    )
    @action(detail=False, methods=["get"], url_path="export")
    @routers.reads_from_replica  # retried while its first rows are read (StartedStream)
    def export(self, request: Request) -> StreamingHttpResponse:
        token = token_of(request)
        options = _options(request, token, export=True)
        rows = selectors.cdr_export_rows(token=token, options=options)
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        if options.export_format == "csv":
            fields = visible_field_names(billing=token.scope_billing)
            chunks, content_type = csv_lines(fields, rows), "text/csv"
        else:
            chunks, content_type = ndjson_lines(rows), "application/x-ndjson"
        # The query starts here: its errors are still a contract error body, not a cut stream.
        response = StreamingHttpResponse(StartedStream(chunks), content_type=content_type)
        response["Content-Disposition"] = (
            f'attachment; filename="cdrs-{stamp}.{options.export_format}"'
        )
        return response
