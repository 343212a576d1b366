"""GET /api/cdrs/stats: call statistics. Thin: parse options, call ``cdrs.stats``."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cdrs import routers
from cdrs.api.errors import ValidateFailed
from cdrs.api.permissions import token_of
from cdrs.api.schema import (
    COMMON_ERRORS,
    FILTER_PARAMETER,
    PLAIN_FILTER_DOCS,
    SEARCH_PARAMETER,
    error_response,
)
from cdrs.fields import DIRECTIONS, END_REASONS
from cdrs.query.options import OptionError, parse_list_options
from cdrs.query.plain import PLAIN_FILTER_NAMES
from cdrs.query.stats_options import (
    TIME_DIMENSIONS,
    VALUE_DIMENSIONS,
    BillingDimension,
    parse_stats_options,
    split_stats_params,
)
from cdrs.stats import StatsResult, cdr_stats
from cdrs.wire import CsvLines, csv_cell, csv_writer

# --- OpenAPI description (schema only) -------------------------------------------------


def _number(help_text: str, places: int) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=30, decimal_places=places, coerce_to_string=False, help_text=help_text
    )


class StatsMeasuresSerializer(serializers.Serializer):
    calls = serializers.IntegerField(help_text="Number of CDRs.")
    answered = serializers.IntegerField(help_text="CDRs with answered_at.")
    asr = _number("answered / calls, 4 decimals (half up); 0 without calls.", 4)
    total_duration = serializers.IntegerField(help_text="Sum of duration, seconds.")
    acd = _number("total_duration / answered, seconds, 2 decimals; 0 without answers.", 2)
    avg_pdd = _number(
        "Mean of answered_at − rang_at over CDRs with both, seconds, 2 decimals; 0 without.", 2
    )
    cost = serializers.DecimalField(
        max_digits=30,
        decimal_places=6,
        coerce_to_string=False,
        required=False,
        help_text="Exact sum of cost (CDRs without cost count 0). Billing scope only.",
    )


class StatsKeySerializer(serializers.Serializer):
    """The bucket: one entry per group_by dimension, in group_by's order."""

    hour = serializers.DateTimeField(required=False, help_text="Bucket start, RFC 3339 in tz.")
    day = serializers.DateTimeField(required=False, help_text="Bucket start, RFC 3339 in tz.")
    week = serializers.DateTimeField(required=False, help_text="Monday 00:00 in tz.")
    month = serializers.DateTimeField(required=False, help_text="The 1st 00:00 in tz.")
    direction = serializers.CharField(required=False)
    end_reason = serializers.CharField(required=False)
    trunk = serializers.CharField(required=False)
    caller_domain = serializers.CharField(required=False)
    callee_domain = serializers.CharField(required=False)
    billed_account = serializers.CharField(required=False, help_text="Billing scope only.")


class StatsItemSerializer(StatsMeasuresSerializer):
    key = StatsKeySerializer()


class StatsResponseSerializer(serializers.Serializer):
    group_by = serializers.ListField(
        child=serializers.ChoiceField(choices=[*TIME_DIMENSIONS, *VALUE_DIMENSIONS])
    )
    tz = serializers.CharField(help_text="The IANA zone of the time buckets.")
    items = StatsItemSerializer(many=True)
    total = StatsMeasuresSerializer(help_text="Over every matching CDR.")


_PLAIN_TYPES: dict[str, Any] = {
    "started_after": OpenApiTypes.DATETIME,
    "started_before": OpenApiTypes.DATETIME,
    "min_duration": int,
    "max_duration": int,
    "answered": OpenApiTypes.BOOL,
}
_STATS_200 = (
    "JSON (`format=json`, the default), or CSV (`format=csv`): a header of the group_by "
    "dimensions and measure names, then one row per item, without the total."
)
_PARAMETERS = [
    OpenApiParameter(
        "group_by",
        {"type": "string", "default": "day"},
        description="One or two comma-separated dimensions (at most one time dimension): "
        f"{', '.join(TIME_DIMENSIONS)} (time buckets on started_at), "
        f"{', '.join(VALUE_DIMENSIONS)} (billing scope). Default `day`.",
    ),
    OpenApiParameter(
        "tz",
        {"type": "string", "default": "UTC"},
        description="IANA time zone of the time buckets, such as `Europe/Berlin` (default UTC).",
    ),
    OpenApiParameter(
        "format",
        {"type": "string", "enum": ["json", "csv"], "default": "json"},
        description="`json` (default) or `csv` (one row per item, no total).",
    ),
    FILTER_PARAMETER,
    SEARCH_PARAMETER,
    *[
        OpenApiParameter(
            name,
            _PLAIN_TYPES.get(name, str),
            description=PLAIN_FILTER_DOCS[name],
            enum={"direction": list(DIRECTIONS), "end_reason": list(END_REASONS)}.get(name),
        )
        for name in PLAIN_FILTER_NAMES
    ],
]


# --- the view ----------------------------------------------------------------------------


def stats_body(result: StatsResult) -> dict[str, Any]:
    return {
        "group_by": list(result.group_by),
        "tz": result.tz_name,
        "items": result.items,
        "total": result.total,
    }


def stats_csv(result: StatsResult, *, billing: bool) -> str:
    columns = [*result.group_by, "calls", "answered", "asr", "total_duration", "acd", "avg_pdd"]
    if billing:
        columns.append("cost")
    buffer = CsvLines()
    writer = csv_writer(buffer)
    writer.writerow(columns)
    for item in result.items:
        row = {**item["key"], **{k: v for k, v in item.items() if k != "key"}}
        writer.writerow([csv_cell(row[c]) for c in columns])
    return buffer.getvalue()


class CdrStatsView(APIView):
    """GET /api/cdrs/stats."""

    required_scopes = {"GET": "read", "HEAD": "read"}

    @extend_schema(
        summary="Call statistics: calls, ASR, ACD, PDD and cost per time bucket or dimension",
        description="Aggregates of the CDRs the token may see, grouped by one or two "
        "dimensions (`group_by`): number of calls, answered calls, ASR (answered / calls), "
        "total duration, ACD (duration / answered), mean post-dial delay, and the exact sum "
        "of cost for tokens with the billing scope. Time buckets (hour, day, week, month in "
        "`tz`) cover the whole window, empty ones included; other groups come most calls "
        "first. Takes the list's filters, `filter` and `search`; `top`, `skip`, `orderby`, "
        "`count` and `cursor` are refused (400). Scope: read; `group_by=billed_account` "
        "needs the billing scope too (403).",
        parameters=_PARAMETERS,
        responses={
            (200, "application/json"): OpenApiResponse(StatsResponseSerializer, _STATS_200),
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, _STATS_200),
            **COMMON_ERRORS,
            403: error_response(
                "FORBIDDEN",
                "the token lacks the read scope, or `group_by=billed_account` lacks the "
                "billing scope.",
            ),
        },
    )
    @routers.reads_from_replica
    def get(self, request: Request) -> Any:
        token = token_of(request)
        billing = token.scope_billing
        try:
            own, rest = split_stats_params(dict(request.query_params.lists()))
            stats_options = parse_stats_options(own, billing=billing)
            list_options = parse_list_options(rest, billing=billing)
            result = cdr_stats(
                token=token, options=list_options, stats=stats_options, billing=billing
            )
        except BillingDimension as exc:
            raise PermissionDenied(str(exc)) from exc
        except OptionError as exc:
            raise ValidateFailed(str(exc), {"option": exc.option}) from exc
        if stats_options.csv:
            response = HttpResponse(stats_csv(result, billing=billing), content_type="text/csv")
            response["Content-Disposition"] = 'attachment; filename="cdr-stats.csv"'
            return response
        return Response(stats_body(result))
