"""HTTP for CDRs: list, detail, ingest, export. Thin: parse options, call a selector/service."""

from __future__ import annotations

from typing import Any

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

from cdrs import selectors, services
from cdrs.api import serializers as s
from cdrs.api.errors import ValidateFailed
from cdrs.api.permissions import token_of
from cdrs.export import StartedStream, csv_lines, ndjson_lines
from cdrs.fields import visible_field_names
from cdrs.ids import InvalidId, decode_id, encode_id
from cdrs.models import Cdr
from cdrs.query.options import OptionError, parse_list_options
from cdrs.query.plain import CdrPlainFilterSet
from cdrs.validation import CdrInvalid, validate_cdr

MAX_BATCH = 1000

_ERRORS = {
    400: OpenApiResponse(s.ErrorResponseSerializer, description="VALIDATE_FAILED"),
    401: OpenApiResponse(s.ErrorResponseSerializer, description="UNAUTHORIZED"),
    403: OpenApiResponse(s.ErrorResponseSerializer, description="FORBIDDEN"),
}
_QUERY_DOC = [
    OpenApiParameter("top", int, description="Page size, 1-1000 (default 100)."),
    OpenApiParameter(
        "skip",
        int,
        description="Rows to skip, 0 to CDR_MAX_SKIP (default 100000); deeper pages by "
        "`cursor`. Default 0.",
    ),
    OpenApiParameter(
        "orderby",
        str,
        description="`field [asc|desc], ...` over started_at, ended_at, answered_at, duration, "
        "caller, callee, status_code, id; ties broken by id. Default `started_at desc`.",
    ),
    OpenApiParameter(
        "filter",
        str,
        description="OData-style expression: `eq ne gt ge lt le`, `and or not`, parentheses, "
        "`contains(f,'x')`, `startswith(f,'x')`, `endswith(f,'x')` (case-sensitive), "
        "literals `'text'` ('' escapes a quote), integers, decimals, `null`, timestamps as "
        "quoted RFC 3339. Example: `caller eq '101' and started_at gt '2022-01-01T00:00:00Z'`."
        " At most 2000 characters.",
    ),
    OpenApiParameter(
        "search",
        str,
        description="Case-insensitive substring over caller, "
        "callee, display names, destination, did_cid, outbound_caller_id, call_id.",
    ),
    OpenApiParameter("count", OpenApiTypes.BOOL, description="false skips counting (count=-1)."),
    OpenApiParameter("cursor", str, description="next_cursor of the previous page (keyset)."),
]


def _options(request: Request, *, export: bool = False) -> Any:
    token = token_of(request)
    try:
        return parse_list_options(
            dict(request.query_params.lists()), billing=token.scope_billing, export=export
        )
    except OptionError as exc:
        raise ValidateFailed(str(exc), {"option": exc.option}) from exc


class CdrViewSet(viewsets.ViewSet):
    """GET/POST /api/cdrs, GET /api/cdrs/{id}, GET /api/cdrs/export."""

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
        parameters=_QUERY_DOC,
        responses={200: s.CdrListResponseSerializer, **_ERRORS},
    )
    def list(self, request: Request) -> Response:
        page = selectors.cdr_list(token_of(request), _options(request))
        return Response(
            {
                "count": page.count,
                "items": [s.cdr_item(row) for row in page.rows],
                "next_cursor": page.next_cursor,
            }
        )

    @extend_schema(
        summary="Retrieve CDR detailed information",
        responses={200: s.CdrDetailResponseSerializer, 404: _ERRORS[401], **_ERRORS},
    )
    def retrieve(self, request: Request, pk: str) -> Response:
        try:
            cdr_id = decode_id(pk)
        except InvalidId as exc:
            raise NotFound("CDR not found") from exc
        row = selectors.cdr_get(token_of(request), cdr_id)
        if row is None:
            raise NotFound("CDR not found")
        return Response({"items": [s.cdr_item(row)]})

    @extend_schema(
        summary='Ingest CDRs (one object, or {"items": [...]} with up to 1000)',
        request=s.IngestBatchSerializer,
        responses={201: s.IngestResponseSerializer, **_ERRORS},
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
        rows: list[dict[str, Any]] = []
        bad: list[tuple[int, dict[str, str]]] = []
        for index, item in enumerate(items):
            try:
                rows.append(validate_cdr(item))
            except CdrInvalid as exc:
                bad.append((index, exc.errors))
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
            result = services.cdr_ingest_for_token(rows, token=token)
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
        description='The last line is a trailer with the row count: `{"export_complete":true,'
        '"rows":N}` (NDJSON) or `#export_complete rows=N` (CSV). A stream without it was cut '
        "short.",
        parameters=[
            OpenApiParameter("format", str, enum=["ndjson", "csv"], description="Default ndjson."),
            *[p for p in _QUERY_DOC if p.name in ("orderby", "filter", "search")],
        ],
        responses={(200, "application/x-ndjson"): OpenApiTypes.STR, **_ERRORS},
    )
    @action(detail=False, methods=["get"], url_path="export")
    def export(self, request: Request) -> StreamingHttpResponse:
        token = token_of(request)
        options = _options(request, export=True)
        rows = selectors.cdr_export_rows(token, options)
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
