"""The OpenAPI schema: drf-spectacular hooks, the schema view, examples from the demo data."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import orjson
from django.http import HttpRequest, JsonResponse
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer
from drf_spectacular.views import SpectacularAPIView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from cdrs.api import serializers as s
from cdrs.api.errors import error_body
from cdrs.fields import PRIVATE_FIELD_NAMES, SEARCH_FIELD_NAMES
from cdrs.query.filter import MAX_FILTER_LENGTH
from cdrs.query.options import SEARCH_MAX


def error_response(code: str, when: str) -> OpenApiResponse:
    """An error status: the contract's error body, described as "`CODE`: when it happens"."""
    return OpenApiResponse(s.ErrorResponseSerializer, description=f"`{code}`: {when}")


# Errors every operation can answer; each operation adds the ones it can cause itself.
COMMON_ERRORS = {
    400: error_response(
        "VALIDATE_FAILED", "an option or the body is invalid; the message names it."
    ),
    401: error_response(
        "UNAUTHORIZED",
        "missing, malformed, unknown, revoked or expired token (`WWW-Authenticate: Bearer`).",
    ),
    403: error_response("FORBIDDEN", "the token lacks the scope this operation needs."),
    429: error_response("THROTTLED", "too many requests; retry after `Retry-After` seconds."),
    503: error_response(
        "SERVICE_UNAVAILABLE",
        "the database is unreachable or too slow right now; retry after `Retry-After` seconds.",
    ),
}
PAYLOAD_TOO_LARGE = error_response(
    "PAYLOAD_TOO_LARGE", "the body is larger than `CDR_MAX_BODY_BYTES`."
)
UNSUPPORTED_MEDIA_TYPE = error_response(
    "UNSUPPORTED_MEDIA_TYPE", "the body is not `application/json`."
)

# The list's filter expression and search, shared by the list, the export and the stats.
FILTER_PARAMETER = OpenApiParameter(
    "filter",
    {"type": "string", "maxLength": MAX_FILTER_LENGTH},
    description="OData-style expression: `eq ne gt ge lt le`, `and or not`, parentheses, "
    "`contains(f,'x')`, `startswith(f,'x')`, `endswith(f,'x')` (case-sensitive), "
    "literals `'text'` ('' escapes a quote), integers, decimals, `null`, timestamps as "
    "quoted RFC 3339. Example: `caller eq '101' and started_at gt '2022-01-01T00:00:00Z'`."
    f" At most {MAX_FILTER_LENGTH} characters; {' and '.join(PRIVATE_FIELD_NAMES)} need the "
    "billing scope.",
)
SEARCH_PARAMETER = OpenApiParameter(
    "search",
    {"type": "string", "maxLength": SEARCH_MAX},
    description=f"Case-insensitive substring over {', '.join(SEARCH_FIELD_NAMES)}; at most "
    f"{SEARCH_MAX} characters.",
)


class CdrSchema(AutoSchema):
    def get_filter_backends(self) -> list[Any]:
        # The export takes the list's plain filters too (django-filter documents them).
        if getattr(self.view, "action", None) == "export":
            return list(getattr(self.view, "filter_backends", []))
        return super().get_filter_backends()  # type: ignore[no-any-return]


# The ingest body: one CDR object, or a batch. Neither matches the other (a CDR has required
# fields a batch lacks, a batch requires `items`), so exactly one branch of oneOf applies.
CDR_OR_BATCH = PolymorphicProxySerializer(
    component_name="CdrOrBatch",
    serializers=[s.CdrInputSerializer, s.IngestBatchSerializer],
    resource_type_field_name=None,
    many=False,
)


class _FormatParamNegotiation(DefaultContentNegotiation):
    """``?format=json`` / ``?format=yaml`` pick the schema's encoding.

    The API turns DRF's URL format override off (``format`` is the export's own option), so
    the schema view reads the parameter itself.
    """

    def select_renderer(
        self,
        request: Request,
        renderers: Iterable[BaseRenderer],
        format_suffix: str | None = None,
    ) -> Any:
        wanted = request.query_params.get("format") or format_suffix
        return super().select_renderer(request, renderers, wanted)


class SchemaView(SpectacularAPIView):
    """/api/schema: YAML by default, JSON with ``?format=json`` (or ``Accept``)."""

    content_negotiation_class = _FormatParamNegotiation

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        # Before DRF's negotiation, which would answer an unknown format with a YAML 404.
        wanted = request.GET.get("format")
        if wanted not in (None, "json", "yaml"):
            return JsonResponse(
                error_body(400, "format: must be json or yaml", {"option": "format"}), status=400
            )
        return super().dispatch(request, *args, **kwargs)


def strip_trailing_slashes(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Document PortSIP's paths (/api/cdrs); the router also accepts a trailing slash."""
    result["paths"] = {path.rstrip("/") or "/": item for path, item in result["paths"].items()}
    return result


@functools.cache
def demo_examples() -> dict[str, Any]:
    """Example bodies: the newest CDR of the demo data `bin/run` loads (cdrs.generator)."""
    from cdrs.api.stats import stats_body, stats_csv
    from cdrs.export import csv_lines, ndjson_lines
    from cdrs.fields import ALL_FIELD_NAMES, PUBLIC_FIELD_NAMES
    from cdrs.generator import demo_cdrs
    from cdrs.ids import decode_id
    from cdrs.jsonenc import dumps
    from cdrs.stats import stats_of_rows
    from cdrs.validation import validate_cdr

    rows = list(demo_cdrs())
    newest = rows[-1]
    detail = {name: newest[name] for name in ALL_FIELD_NAMES}
    listed = {name: newest[name] for name in PUBLIC_FIELD_NAMES}
    raw_row = {**detail, "id": decode_id(newest["id"])}  # export writers take stored ids

    def as_json(value: Any) -> Any:
        return orjson.loads(dumps(value))  # the wire form (cost as a JSON number)

    single = {k: v for k, v in detail.items() if k != "id"}
    by_direction = stats_of_rows([validate_cdr(row) for row in rows], "direction", billing=True)
    stored = {"created": 1, "duplicates": 0, "ids": [newest["id"]]}
    return {
        "list": as_json(
            {"count": len(rows), "items": [listed], "next_cursor": "eyJrIjpbIjIwMjUtMTIt..."}
        ),
        "detail": as_json({"items": [detail]}),
        "ingest_one": as_json(single),
        "ingest_batch": as_json({"items": [detail]}),
        "ingest_response": stored,
        "stats": as_json(stats_body(by_direction)),
        "stats_csv": stats_csv(by_direction, billing=True),
        "portsip_event": _portsip_event(newest),
        "portsip_stored": stored,
        "portsip_ignored": {"created": 0, "duplicates": 0, "ids": [], "ignored": "call_start"},
        "portsip_dead_letter": {
            "created": 0,
            "duplicates": 0,
            "ids": [],
            "dead_letter": 1,
            "errors": [
                {
                    "code": "VALIDATE_FAILED",
                    "message": "call_cdr could not be mapped: direction: is required",
                    "detail": {"fields": {"direction": "is required"}},
                }
            ],
        },
        "ndjson": b"".join(ndjson_lines([dict(raw_row)])).decode(),
        "csv": b"".join(csv_lines(ALL_FIELD_NAMES, [dict(raw_row)])).decode(),
        "not_found": {"errors": [{"code": "NOT_FOUND", "message": "CDR not found", "detail": {}}]},
        "validate_failed": {
            "errors": [
                {
                    "code": "VALIDATE_FAILED",
                    "message": "top: must be between 1 and 1000",
                    "detail": {"option": "top"},
                }
            ]
        },
    }


def _portsip_event(cdr: dict[str, Any]) -> dict[str, Any]:
    """The PortSIP ``call_cdr`` event that ``cdrs.portsip.map_call_cdr`` turns into ``cdr``."""
    from cdrs import portsip
    from cdrs.ids import decode_id
    from cdrs.values import parse_rfc3339

    def short(vocabulary: dict[str, str], value: str) -> str:
        return next(key for key, ours in vocabulary.items() if ours == value)

    def unix(value: str | None) -> str:
        return str(int(parse_rfc3339(value).timestamp())) if value else "0"

    return {
        "event_type": portsip.CALL_CDR,
        "cdr_id": str(decode_id(cdr["id"])),
        **{key: cdr[field] for field, key in portsip.COPIED.items()},
        "did": cdr["did_cid"],
        **{key: unix(cdr[field]) for field, key in portsip.TIMESTAMPS.items()},
        **{key: str(cdr[field]) for field, key in portsip.INTEGERS.items()},
        "direction": short(portsip.DIRECTIONS, cdr["direction"]),
        "ended_reason": short(portsip.END_REASONS, cdr["end_reason"]),
    }


# The plain filters (django-filter documents their types; these say what they do).
PLAIN_FILTER_DOCS = {
    "started_after": "Only CDRs that started at or after this RFC 3339 time (any offset).",
    "started_before": "Only CDRs that started before this RFC 3339 time (half-open window).",
    "caller": "Exact caller.",
    "callee": "Exact callee.",
    "call_id": "Exact SIP Call-ID.",
    "direction": "Exact direction.",
    "end_reason": "Exact end reason.",
    "trunk": "Exact trunk.",
    "caller_domain": "Exact caller domain.",
    "callee_domain": "Exact callee domain.",
    "min_duration": "Only CDRs with duration >= this many seconds.",
    "max_duration": "Only CDRs with duration <= this many seconds.",
    "answered": "true: answered calls only; false: calls never answered.",
}


def _example(value: Any, summary: str) -> dict[str, Any]:
    return {"summary": summary, "value": value}


def add_examples(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Describe the plain filters; attach demo-data examples to requests and responses."""
    ex = demo_examples()
    paths = result["paths"]
    for path in ("/api/cdrs", "/api/cdrs/export"):
        for param in paths.get(path, {}).get("get", {}).get("parameters", []):
            if param["name"] in PLAIN_FILTER_DOCS:
                param["description"] = PLAIN_FILTER_DOCS[param["name"]]

    def content(path: str, method: str, status: str, media: str) -> dict[str, Any] | None:
        op = paths.get(path, {}).get(method)
        if op is None:
            return None
        return op.get("responses", {}).get(status, {}).get("content", {}).get(media)

    targets = [
        ("/api/cdrs", "get", "200", "application/json", ex["list"], "First page, top=1"),
        ("/api/cdrs/{id}", "get", "200", "application/json", ex["detail"], "Billing scope"),
        ("/api/cdrs/{id}", "get", "404", "application/json", ex["not_found"], "Unknown id"),
        ("/api/cdrs", "get", "400", "application/json", ex["validate_failed"], "top=0"),
        ("/api/cdrs", "post", "201", "application/json", ex["ingest_response"], "One stored"),
        ("/api/cdrs/export", "get", "200", "application/x-ndjson", ex["ndjson"], "ndjson"),
        ("/api/cdrs/export", "get", "200", "text/csv", ex["csv"], "csv"),
        ("/api/cdrs/stats", "get", "200", "application/json", ex["stats"], "group_by=direction"),
        ("/api/cdrs/stats", "get", "200", "text/csv", ex["stats_csv"], "format=csv"),
    ]
    for path, method, status, media, value, summary in targets:
        found = content(path, method, status, media)
        if found is not None:
            found["examples"] = {"demo": _example(value, summary)}
    post = paths.get("/api/cdrs", {}).get("post")
    if post is not None:
        body = post["requestBody"]["content"]["application/json"]
        body["examples"] = {
            "one": _example(ex["ingest_one"], "One CDR (id assigned by the service)"),
            "batch": _example(ex["ingest_batch"], 'A batch: {"items": [...]}, up to 1000'),
        }
    webhook = paths.get("/api/webhooks/portsip", {}).get("post")
    if webhook is not None:
        webhook["requestBody"]["content"]["application/json"]["examples"] = {
            "call_cdr": _example(ex["portsip_event"], "A call_cdr event (stored as a CDR)")
        }
        webhook["responses"]["200"]["content"]["application/json"]["examples"] = {
            "stored": _example(ex["portsip_stored"], "call_cdr stored"),
            "ignored": _example(ex["portsip_ignored"], "An event type without a CDR"),
            "dead_letter": _example(ex["portsip_dead_letter"], "Kept in the dead-letter table"),
        }
    return result
