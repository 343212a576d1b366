"""Call statistics (GET /api/cdrs/stats and the admin dashboard): the only reads of them.

Two sources give the same numbers:

* **the rollup** ``cdrs_hourly_stats`` (per UTC hour × direction × end_reason × trunk ×
  caller/callee domain, kept exact by ``cdr_ingest``), when the request only filters with
  exact matches on those dimensions and whole-hour ``started_at`` bounds, only groups on
  them, and its time zone's offsets are whole hours over the window;
* otherwise **a direct GROUP BY** over the CDRs, with the list's filters and the token's
  domain limit (``cdrs.selectors``).

Either way the database groups by a UTC slot (an hour, or the finest unit every bucket
boundary of the zone falls on: 30 minutes for Asia/Kolkata) and Python merges slots into
the zone's hours, days, weeks or months. That is exact on PostgreSQL and SQLite alike,
including DST days of 23 or 25 hours, without time zone arithmetic in SQL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Count, F, Func, IntegerField, Max, Min, Q, QuerySet, Sum
from django.db.models.sql.compiler import SQLCompiler

from cdrs import rollup
from cdrs.models import ApiToken, Cdr, CdrHourlyStats, CdrHourlyTotals
from cdrs.query.options import ListOptions, OptionError, and_leaves
from cdrs.query.stats_options import TIME_DIMENSIONS, StatsOptions
from cdrs.selectors import cdrs_for_token, domain_q

MAX_TIME_BUCKETS = 10_000  # e.g. hourly buckets over a year
MAX_ITEMS = 50_000
MEASURES = rollup.MEASURES  # calls, answered, total_duration, pdd_sum, pdd_calls, cost_micros
_ZERO = (0, 0, 0, 0, 0, 0)
_FOUR = Decimal("0.0001")
_TWO = Decimal("0.01")


class StatsTooLarge(OptionError):
    """More buckets than one response carries: 400, narrow the window or coarsen."""


@dataclass(frozen=True)
class StatsResult:
    group_by: tuple[str, ...]
    tz_name: str
    items: list[dict[str, Any]]
    total: dict[str, Any]
    source: str  # "rollup", "rollup:hours" or "direct": which table answered (tests, bench)


# --- SQL expressions (the direct query) -------------------------------------------------


class _EpochSeconds(Func):
    """Whole seconds since 1970 of a timestamp column, rounded down like the rollup's hour.

    Every write path stores whole seconds; floor() keeps a row written with a fraction by
    other means (raw SQL) in the same bucket as ``cdrs.rollup`` puts it.
    """

    output_field = IntegerField()

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> Any:
        # '%%s' reaches SQLite as '%s' (Django's backend turns %% into %; %s into ?).
        sql, params = compiler.compile(self.source_expressions[0])
        return f"CAST(strftime('%%s', {sql}) AS INTEGER)", params

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> Any:
        return self.as_sql(
            compiler,
            connection,
            template="CAST(FLOOR(EXTRACT(EPOCH FROM %(expressions)s)) AS bigint)",
        )


_Compiled = tuple[str, list[Any]]


class _IntegerArithmetic(Func):
    """An integer expression whose SQL ``arithmetic`` writes from its compiled arguments."""

    output_field = IntegerField()

    def as_sql(
        self,
        compiler: SQLCompiler,
        connection: BaseDatabaseWrapper,
        function: str | None = None,
        template: str | None = None,
        arg_joiner: str | None = None,
        **extra: Any,
    ) -> Any:
        args = [compiler.compile(e) for e in self.source_expressions]
        return self.arithmetic(*[(sql, list(params)) for sql, params in args])

    def arithmetic(self, *args: _Compiled) -> _Compiled:
        raise NotImplementedError


class _FloorDiv(_IntegerArithmetic):
    """floor(a / n) for an integer a and a positive integer constant n, on both backends."""

    def __init__(self, expression: Any, divisor: int) -> None:
        super().__init__(expression)
        self.divisor = int(divisor)

    def arithmetic(self, *args: _Compiled) -> _Compiled:
        (sql, params), n = args[0], self.divisor
        # Integer division truncates toward zero; one less for negative remainders.
        floor = f"(({sql}) / {n} - CASE WHEN ({sql}) %% {n} < 0 THEN 1 ELSE 0 END)"
        return floor, [*params, *params]


class _PddSeconds(_IntegerArithmetic):
    """answered_at − rang_at in seconds when both are known, else NULL."""

    def __init__(self) -> None:
        super().__init__(_EpochSeconds(F("answered_at")), _EpochSeconds(F("rang_at")))

    def arithmetic(self, *args: _Compiled) -> _Compiled:
        # NULL when either is NULL: SQL arithmetic with NULL is NULL.
        (answered, a_params), (rang, r_params) = args
        return f"({answered}) - ({rang})", [*a_params, *r_params]


class _CostMicros(Func):
    """cost in millionths as an integer: SUM is exact on SQLite too (REAL there)."""

    output_field = IntegerField()

    def __init__(self) -> None:
        super().__init__(F("cost"))

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> Any:
        # 15 significant digits times 10^6 stays below 2^53: ROUND gives the exact integer.
        return self.as_sql(
            compiler, connection, template="CAST(ROUND(%(expressions)s * 1000000) AS INTEGER)"
        )

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> Any:
        return self.as_sql(
            compiler, connection, template="CAST(%(expressions)s * 1000000 AS bigint)"
        )


# --- time buckets in a zone ------------------------------------------------------------


class _Buckets:
    """Start instants (epoch seconds) of the zone's hours/days/weeks/months, cached."""

    def __init__(self, dimension: str, tz: ZoneInfo) -> None:
        self.dimension = dimension
        self.tz = tz
        self._of: dict[int, int] = {}

    def _midnight(self, day: date) -> int:
        # fold=0: an ambiguous midnight is its first occurrence; a midnight in a DST gap
        # maps to the transition instant, the first instant of that day.
        return int(datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp())

    def start_of(self, epoch: int) -> int:
        """The start of the bucket holding ``epoch``."""
        found = self._of.get(epoch)
        if found is not None:
            return found
        local = datetime.fromtimestamp(epoch, self.tz)
        if self.dimension == "hour":
            start = epoch - local.minute * 60 - local.second
        elif self.dimension == "day":
            start = self._midnight(local.date())
        elif self.dimension == "week":
            start = self._midnight(local.date() - timedelta(days=local.weekday()))
        else:
            start = self._midnight(local.date().replace(day=1))
        self._of[epoch] = start
        return start

    def after(self, start: int) -> int:
        """The start of the bucket after the one starting at ``start``."""
        if self.dimension == "hour":
            return self.start_of(start + 3600)
        day = datetime.fromtimestamp(start, self.tz).date()
        if self.dimension == "day":
            return self._midnight(day + timedelta(days=1))
        if self.dimension == "week":
            return self._midnight(day + timedelta(days=7))
        year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        return self._midnight(date(year, month, 1))

    def label(self, start: int) -> str:
        return datetime.fromtimestamp(start, self.tz).isoformat()

    def between(self, first: int, last: int) -> list[int]:
        """Every bucket start from ``first`` to ``last`` (both bucket starts), capped."""
        out = [first]
        while out[-1] < last:
            out.append(self.after(out[-1]))
            if len(out) > MAX_TIME_BUCKETS:
                raise StatsTooLarge(
                    "group_by",
                    f"more than {MAX_TIME_BUCKETS} {self.dimension} buckets: narrow "
                    "started_after/started_before or group by a longer period",
                )
        return out


def _slot_seconds(tz: ZoneInfo, lo: int, hi: int) -> int:
    """The largest divisor of an hour that every bucket boundary of ``tz`` in [lo, hi] is a
    multiple of (in UTC epoch seconds): 3600 for whole-hour offsets, 1800 for +05:30."""
    if tz.key in ("UTC", "Etc/UTC"):
        return 3600
    step = 86400  # offsets last longer than a day; sampling daily sees every one of them
    slot = 3600
    for t in [*range(lo, hi, step), hi]:
        offset = tz.utcoffset(datetime.fromtimestamp(t, UTC))
        assert offset is not None
        slot = math.gcd(slot, int(offset.total_seconds()) % 3600)
    return slot


# --- which rows: window, rollup eligibility ------------------------------------------


def _split(key: str) -> tuple[str, str]:
    field, _, lookup = key.partition("__")
    return field, lookup or "exact"


def _ceil_second(value: datetime) -> int:
    return int(value.timestamp()) + (1 if value.microsecond else 0)


def _window(leaves: list[tuple[str, Any]]) -> tuple[int | None, int | None]:
    """[lo, hi) in epoch seconds that the filters confine started_at to (None: open)."""
    lo: int | None = None
    hi: int | None = None
    for key, value in leaves:
        field, lookup = _split(key)
        if field != "started_at" or not isinstance(value, datetime):
            continue
        floor_s = int(value.replace(microsecond=0).timestamp())
        start = {"gte": _ceil_second(value), "gt": floor_s + 1, "exact": floor_s}.get(lookup)
        end = {"lt": _ceil_second(value), "lte": floor_s + 1, "exact": floor_s + 1}.get(lookup)
        if start is not None:
            lo = start if lo is None else max(lo, start)
        if end is not None:
            hi = end if hi is None else min(hi, end)
    return lo, hi


def _rollup_q(leaves: list[tuple[str, Any]]) -> Q | None:
    """The same conditions on ``cdrs_hourly_stats``, or None if it cannot answer them."""
    q = Q()
    for key, value in leaves:
        field, lookup = _split(key)
        if field in rollup.DIMENSIONS and lookup == "exact" and isinstance(value, str):
            q &= Q(**{field: value})
        elif (
            field == "started_at"
            and lookup in ("gte", "lt")
            and isinstance(value, datetime)
            and value.microsecond == 0
            and int(value.timestamp()) % 3600 == 0
        ):
            q &= Q(**{f"hour__{lookup}": int(value.timestamp()) // 3600})
        else:
            return None
    return q


# --- queries -------------------------------------------------------------------------


def _direct_rows(
    base: QuerySet[Cdr], dims: Sequence[str], slot: int | None
) -> list[tuple[Any, ...]]:
    group = list(dims)
    if slot is not None:
        base = base.annotate(stats_slot=_FloorDiv(_EpochSeconds(F("started_at")), slot))
        group.insert(0, "stats_slot")
    qs = (
        base.order_by()
        .values(*group)
        .annotate(
            calls=Count("*"),
            answered=Count("answered_at"),
            total_duration=Sum("duration"),
            pdd_sum=Sum(_PddSeconds()),
            pdd_calls=Count(_PddSeconds()),
            cost_micros=Sum(_CostMicros()),
        )
    )
    return list(qs.values_list(*group, *MEASURES))


def _rollup_rows(
    model: type[CdrHourlyStats] | type[CdrHourlyTotals],
    domains: Q,
    where: Q,
    dims: Sequence[str],
    timed: bool,
) -> list[tuple[Any, ...]]:
    group = (["hour"] if timed else []) + list(dims)
    qs = (
        model.objects.filter(domains)
        .filter(where)
        .order_by()
        .values(*group)
        .annotate(**{f"sum_{m}": Sum(m) for m in MEASURES})
    )
    return list(qs.values_list(*group, *(f"sum_{m}" for m in MEASURES)))


# --- the answer ----------------------------------------------------------------------


def _measures(sums: Sequence[int], *, billing: bool) -> dict[str, Any]:
    calls, answered, duration, pdd_sum, pdd_calls, cost_micros = sums

    def ratio(num: int, den: int, places: Decimal) -> Decimal:
        if not den:
            return Decimal(0).quantize(places)
        return (Decimal(num) / Decimal(den)).quantize(places, rounding=ROUND_HALF_UP)

    out: dict[str, Any] = {
        "calls": calls,
        "answered": answered,
        "asr": ratio(answered, calls, _FOUR),
        "total_duration": duration,
        "acd": ratio(duration, answered, _TWO),
        "avg_pdd": ratio(pdd_sum, pdd_calls, _TWO),
    }
    if billing:
        out["cost"] = Decimal(cost_micros).scaleb(-6)
    return out


def stats_of_rows(rows: Sequence[dict[str, Any]], dimension: str, *, billing: bool) -> StatsResult:
    """``cdr_stats`` grouped by one rollup dimension, over validated CDR rows in memory.

    The OpenAPI example over the demo data (no database when the schema is built); the
    same sums (``rollup``) and rounding as the database answer, which a test compares.
    """
    position = rollup.DIMENSIONS.index(dimension)
    groups: dict[str, list[int]] = {}
    for key, sums in rollup.accumulate(rows).items():
        acc = groups.setdefault(key[1 + position], [0, 0, 0, 0, 0, 0])
        for i, value in enumerate(sums):
            acc[i] += value
    total = [sum(acc[i] for acc in groups.values()) for i in range(len(MEASURES))]
    return StatsResult(
        group_by=(dimension,),
        tz_name="UTC",
        items=[
            {"key": {dimension: value}, **_measures(groups[value], billing=billing)}
            for value in sorted(groups, key=lambda v: (-groups[v][0], v))
        ],
        total=_measures(total, billing=billing),
        source="python",
    )


def cdr_stats(
    *,
    token: ApiToken | None,
    options: ListOptions,
    stats: StatsOptions,
    billing: bool,
    use_rollup: bool = True,
) -> StatsResult:
    """Statistics of the CDRs ``token`` may see (None: every CDR, for the admin)."""
    time_dim = stats.time_dimension
    dims = stats.value_dimensions
    leaves, whole = and_leaves(options.where)
    lo, hi = _window(leaves)
    buckets = _Buckets(time_dim, stats.tz) if time_dim else None

    slot: int | None = None
    if buckets is not None:
        if lo is not None and hi is not None:
            if hi > lo:
                buckets.between(buckets.start_of(lo), buckets.start_of(hi - 1))  # size check
            span = (lo, max(lo, hi - 1))
        else:
            # Offsets over the stored span (any CDR, cheap on the started_at index).
            bounds = Cdr.objects.aggregate(first=Min("started_at"), last=Max("started_at"))
            first = int(bounds["first"].timestamp()) if bounds["first"] else 0
            last = int(bounds["last"].timestamp()) if bounds["last"] else 0
            span = (first if lo is None else lo, last if hi is None else hi)
        slot = _slot_seconds(stats.tz, min(span), max(span))

    rollup_where = _rollup_q(leaves) if whole else None
    served_by_rollup = (
        use_rollup
        and rollup_where is not None
        and all(d in rollup.DIMENSIONS for d in dims)
        and (slot is None or slot == 3600)
    )
    scope = domain_q(token=token) if token is not None else Q()
    # Nothing but time: the per-hour totals (a month is ~744 rows, not ~170,000).
    hours_only = not dims and not scope and all(_split(key)[0] == "started_at" for key, _ in leaves)
    source = "direct"
    if served_by_rollup:
        assert rollup_where is not None
        model = CdrHourlyTotals if hours_only else CdrHourlyStats
        source = "rollup:hours" if hours_only else "rollup"
        rows = _rollup_rows(model, scope, rollup_where, dims, slot is not None)
        slot_len = 3600
    else:
        base = cdrs_for_token(token=token) if token is not None else Cdr.objects.all()
        rows = _direct_rows(base.filter(options.where), dims, slot)
        slot_len = slot or 0

    # Merge slots into buckets: key = (bucket start or nothing, *dimension values).
    groups: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        if buckets is not None:
            key: tuple[Any, ...] = (
                buckets.start_of(int(row[0]) * slot_len),
                *row[1 : 1 + len(dims)],
            )
            values = row[1 + len(dims) :]
        else:
            key = tuple(row[: len(dims)])
            values = row[len(dims) :]
        acc = groups.get(key)
        if acc is None:
            acc = groups[key] = [0, 0, 0, 0, 0, 0]
        for i, v in enumerate(values):
            acc[i] += int(v or 0)

    total = [0, 0, 0, 0, 0, 0]
    for acc in groups.values():
        for i, v in enumerate(acc):
            total[i] += v

    if buckets is not None and lo is not None and hi is not None and hi <= lo:
        keys: list[tuple[Any, ...]] = []  # an empty window
    elif buckets is not None:
        starts = [k[0] for k in groups]
        first_b = buckets.start_of(lo) if lo is not None else (min(starts) if starts else None)
        last_b = buckets.start_of(hi - 1) if hi is not None else (max(starts) if starts else None)
        series = sorted({k[1:] for k in groups}) if dims else [()]
        keys = []
        if first_b is not None and last_b is not None and first_b <= last_b:
            all_starts = buckets.between(first_b, last_b)
            if len(all_starts) * len(series) > MAX_ITEMS:
                raise StatsTooLarge("group_by", f"more than {MAX_ITEMS} items: narrow the window")
            keys = [(b, *s) for b in all_starts for s in series]
    else:
        keys = sorted(groups, key=lambda k: (-groups[k][0], k))

    names = stats.group_by
    items = []
    for key in keys:
        labels: dict[str, Any] = {}
        rest = iter(key[1:] if buckets is not None else key)
        for name in names:
            if name in TIME_DIMENSIONS:
                assert buckets is not None
                labels[name] = buckets.label(key[0])
            else:
                labels[name] = next(rest)
        items.append({"key": labels, **_measures(groups.get(key, _ZERO), billing=billing)})
    return StatsResult(
        group_by=names,
        tz_name=stats.tz_name,
        items=items,
        total=_measures(total, billing=billing),
        source=source,
    )
