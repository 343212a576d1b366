"""The admin's statistics dashboard: calls per day, ASR, ACD, top trunks and domains.

Figures come from ``cdrs.stats.cdr_stats``, the selector behind GET /api/cdrs/stats, with
the filters parsed by the list's own option parser, so the page and the API cannot differ.
The chart is SVG drawn here (no JavaScript, no network). Staff only (``admin_view``); cost
only for users with ``cdrs.view_billing``, as in the CDR admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from cdrs.admin.common import can_see_billing
from cdrs.models import Cdr
from cdrs.query.options import parse_list_options
from cdrs.query.stats_options import parse_stats_options
from cdrs.stats import StatsResult, cdr_stats
from cdrs.values import format_ts

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP = 10
_ZONES = sorted(available_timezones())

# Chart geometry in SVG user units; the SVG scales to its container's width.
CHART_W, CHART_H = 960, 300
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 48, 28, 12


class DashboardForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    tz = forms.ChoiceField(choices=[(z, z) for z in _ZONES], required=False, label="Time zone")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end < start:
                raise forms.ValidationError("The end date is before the start date.")
            if (end - start).days + 1 > MAX_DAYS:
                raise forms.ValidationError(f"At most {MAX_DAYS} days at once.")
        return data


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    answered_y: float
    answered_h: float
    missed_y: float
    missed_h: float
    label: str
    title: str


def _default_range(tz: ZoneInfo) -> tuple[date, date, bool]:
    """The last 30 days up to today, or up to the newest CDR when it is older than that
    (demo data and archives still show something); True if moved."""
    today = timezone.now().astimezone(tz).date()
    newest = Cdr.objects.aggregate(last=Max("started_at"))["last"]
    end = today
    if newest is not None and newest.astimezone(tz).date() < today - timedelta(DEFAULT_DAYS - 1):
        end = newest.astimezone(tz).date()
    return end - timedelta(DEFAULT_DAYS - 1), end, end != today


def _midnight(day: date, tz: ZoneInfo) -> str:
    return format_ts(datetime(day.year, day.month, day.day, tzinfo=tz))  # type: ignore[return-value]


def api_params(start: date, end: date, tz_name: str) -> dict[str, str]:
    """The GET /api/cdrs/stats query (minus group_by) that gives this page's figures."""
    tz = ZoneInfo(tz_name)
    return {
        "started_after": _midnight(start, tz),
        "started_before": _midnight(end + timedelta(days=1), tz),
        "tz": tz_name,
    }


def _stats(params: dict[str, str], group_by: str, *, billing: bool) -> StatsResult:
    own = {"group_by": [group_by], "tz": [params["tz"]]}
    rest = {k: [v] for k, v in params.items() if k != "tz"}
    return cdr_stats(
        token=None,
        options=parse_list_options(rest, billing=billing),
        stats=parse_stats_options(own, billing=billing),
        billing=billing,
    )


def _nice_max(value: int) -> int:
    """A round axis maximum at or above ``value`` (1, 2, 5 × 10^n)."""
    if value <= 0:
        return 1
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def chart(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked bars per day (answered below, not answered on top) and the y-axis ticks."""
    top = _nice_max(max((i["calls"] for i in items), default=0))
    plot_w = CHART_W - PAD_LEFT - 8
    plot_h = CHART_H - PAD_BOTTOM - PAD_TOP
    base = PAD_TOP + plot_h
    slot = plot_w / max(len(items), 1)
    every = max(1, round(len(items) / 10))  # about ten date labels whatever the range
    bars = []
    for n, item in enumerate(items):
        answered_h = plot_h * item["answered"] / top
        missed_h = plot_h * (item["calls"] - item["answered"]) / top
        day = item["key"]["day"][:10]
        bars.append(
            Bar(
                x=round(PAD_LEFT + n * slot + slot * 0.1, 2),
                width=round(slot * 0.8, 2),
                answered_y=round(base - answered_h, 2),
                answered_h=round(answered_h, 2),
                missed_y=round(base - answered_h - missed_h, 2),
                missed_h=round(missed_h, 2),
                label=day[5:] if n % every == 0 else "",
                title=f"{day}: {item['calls']} calls, {item['answered']} answered",
            )
        )
    ticks = [{"y": round(base - plot_h * k / 4, 2), "value": top * k // 4} for k in range(5)]
    return {
        "width": CHART_W,
        "height": CHART_H,
        "left": PAD_LEFT,
        "right": CHART_W - 8,
        "base": base,
        "label_y": CHART_H - 8,
        "bars": bars,
        "ticks": ticks,
    }


def _percent(value: Decimal) -> str:
    return f"{value * 100:.1f} %"


def _mmss(seconds: Decimal) -> str:
    whole = int(seconds.to_integral_value())
    return f"{whole // 60}:{whole % 60:02d}"


def dashboard_view(request: HttpRequest) -> HttpResponse:
    billing = can_see_billing(request)
    form = DashboardForm(request.GET or None)
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "is_nav_sidebar_enabled": False,  # the charts get the sidebar's width
        "form": form,
        "billing": billing,
    }
    if form.is_bound and not form.is_valid():
        return TemplateResponse(request, "admin/cdrs/dashboard.html", context)
    data = form.cleaned_data if form.is_bound else {}
    tz_name = data.get("tz") or settings.TIME_ZONE
    tz = ZoneInfo(tz_name)
    start, end, moved = _default_range(tz)
    if data.get("start") or data.get("end"):
        end = data.get("end") or (data["start"] + timedelta(DEFAULT_DAYS - 1))
        start = data.get("start") or (end - timedelta(DEFAULT_DAYS - 1))
        moved = False
        if (end - start).days + 1 > MAX_DAYS or end < start:
            form.add_error(None, f"Choose an end after the start, at most {MAX_DAYS} days.")
            return TemplateResponse(request, "admin/cdrs/dashboard.html", context)
    params = api_params(start, end, tz_name)
    days = _stats(params, "day", billing=billing)
    rows = [
        {
            "day": item["key"]["day"][:10],
            "item": item,
            "asr": _percent(item["asr"]),
            "acd": _mmss(item["acd"]),
        }
        for item in days.items
    ]
    tops = [
        ("Top trunks", "trunk", _stats(params, "trunk", billing=billing).items[:TOP]),
        (
            "Top caller domains",
            "caller_domain",
            _stats(params, "caller_domain", billing=billing).items[:TOP],
        ),
        (
            "Top callee domains",
            "callee_domain",
            _stats(params, "callee_domain", billing=billing).items[:TOP],
        ),
    ]
    context.update(
        {
            "form": DashboardForm(initial={"start": start, "end": end, "tz": tz_name}),
            "start": start,
            "end": end,
            "tz_name": tz_name,
            "moved": moved,
            "rows": rows,
            "total": days.total,
            "total_asr": _percent(days.total["asr"]),
            "total_acd": _mmss(days.total["acd"]),
            "chart": chart(days.items),
            "tops": [
                {
                    "title": t,
                    "dimension": d,
                    "items": [(i["key"][d] or "(none)", i, _percent(i["asr"])) for i in items],
                }
                for t, d, items in tops
            ],
            "api_query": "&".join(f"{k}={v}" for k, v in params.items()),
        }
    )
    return TemplateResponse(request, "admin/cdrs/dashboard.html", context)
