"""The stats endpoint's own options: ``group_by``, ``tz`` and ``format`` (no I/O).

Everything else in the query string is the list's filters, parsed by
``cdrs.query.options.parse_list_options``; the list's paging and ordering options mean
nothing for aggregates and are refused rather than ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cdrs.query.options import OptionError, single_value

TIME_DIMENSIONS = ("hour", "day", "week", "month")
VALUE_DIMENSIONS = (
    "direction",
    "end_reason",
    "trunk",
    "caller_domain",
    "callee_domain",
    "billed_account",
)
BILLING_DIMENSIONS = ("billed_account",)
STATS_OPTIONS = ("group_by", "tz", "format")
# The list's own options: paging and ordering have no meaning for aggregates.
REFUSED_LIST_OPTIONS = ("top", "skip", "orderby", "count", "cursor")
_ZONES = frozenset(available_timezones())


@dataclass(frozen=True)
class StatsOptions:
    group_by: tuple[str, ...]
    tz_name: str
    tz: ZoneInfo
    csv: bool

    @property
    def time_dimension(self) -> str | None:
        return next((d for d in self.group_by if d in TIME_DIMENSIONS), None)

    @property
    def value_dimensions(self) -> tuple[str, ...]:
        return tuple(d for d in self.group_by if d not in TIME_DIMENSIONS)


class BillingDimension(OptionError):
    """``group_by`` names a dimension only billing tokens may see (403, not 400)."""


def split_stats_params(
    params: Mapping[str, list[str]],
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(stats options, the list filters to hand to ``parse_list_options``)."""
    for name in REFUSED_LIST_OPTIONS:
        if name in params:
            raise OptionError(name, "not an option of /api/cdrs/stats")
    own = {k: list(v) for k, v in params.items() if k in STATS_OPTIONS}
    rest = {k: list(v) for k, v in params.items() if k not in STATS_OPTIONS}
    return own, rest


def parse_stats_options(params: Mapping[str, list[str]], *, billing: bool) -> StatsOptions:
    """Validate ``group_by``, ``tz`` and ``format``; OptionError (400) or BillingDimension."""
    raw_group = single_value(params, "group_by")
    names = tuple(n.strip() for n in (raw_group or "day").split(","))
    allowed = TIME_DIMENSIONS + VALUE_DIMENSIONS
    for name in names:
        if name not in allowed:
            raise OptionError("group_by", f"one or two of {', '.join(allowed)}")
    if not 1 <= len(names) <= 2 or len(set(names)) != len(names):
        raise OptionError("group_by", "one or two distinct dimensions, comma-separated")
    if sum(n in TIME_DIMENSIONS for n in names) > 1:
        raise OptionError("group_by", "at most one of hour, day, week, month")
    if not billing and any(n in BILLING_DIMENSIONS for n in names):
        raise BillingDimension("group_by", "billed_account needs the 'billing' scope")

    tz_name = single_value(params, "tz") or "UTC"
    # available_timezones() first: ZoneInfo() alone would also open relative file paths.
    if tz_name not in _ZONES:
        raise OptionError("tz", "must be an IANA time zone such as Europe/Berlin")
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - listed yet missing
        raise OptionError("tz", "must be an IANA time zone such as Europe/Berlin") from exc

    fmt = single_value(params, "format") or "json"
    if fmt not in ("json", "csv"):
        raise OptionError("format", "must be json or csv")
    return StatsOptions(group_by=names, tz_name=tz_name, tz=tz, csv=fmt == "csv")
