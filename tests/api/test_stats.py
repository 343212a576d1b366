"""GET /api/cdrs/stats through HTTP with real tokens, against a direct computation in Python."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdrs.models import Cdr
from cdrs.values import format_ts
from tests.factories import cdr_payload, create_cdrs

pytestmark = pytest.mark.django_db

URL = "/api/cdrs/stats"


def body(response: Any) -> Any:
    return json.loads(response.content, parse_float=Decimal)  # exact numbers


def stats(client: Any, **params: str) -> Any:
    response = client.get(URL, params)
    assert response.status_code == 200, response.content
    return body(response)


# --- behaviour a user sees ---------------------------------------------------------------


def test_daily_buckets_shape_totals_and_zero_days(client_full):
    t0 = datetime(2024, 5, 1, 10, tzinfo=UTC)
    create_cdrs(
        cdr_payload(started=t0, cost=Decimal("0.123456"), duration=30),
        cdr_payload(started=t0 + timedelta(hours=1), answered_at=None, rang_at=None, duration=0),
        cdr_payload(started=t0 + timedelta(days=2), cost=Decimal("1.000001"), duration=90),
    )
    data = stats(
        client_full,
        group_by="day",
        started_after="2024-04-30T00:00:00Z",
        started_before="2024-05-05T00:00:00Z",
    )
    assert set(data) == {"group_by", "tz", "items", "total"}
    assert data["group_by"] == ["day"] and data["tz"] == "UTC"
    days = [i["key"]["day"] for i in data["items"]]
    assert days == [
        "2024-04-30T00:00:00+00:00",
        *(f"2024-05-0{d}T00:00:00+00:00" for d in range(1, 5)),
    ]
    by_day = {i["key"]["day"][:10]: i for i in data["items"]}
    assert by_day["2024-04-30"]["calls"] == 0 and by_day["2024-04-30"]["asr"] == 0
    first = by_day["2024-05-01"]
    assert (first["calls"], first["answered"], first["total_duration"]) == (2, 1, 30)
    assert first["asr"] == Decimal("0.5") and str(first["asr"]) == "0.5000"
    assert first["acd"] == 30 and first["avg_pdd"] == 4  # answered 4 s after ringing
    assert first["cost"] == Decimal("0.123456")
    assert by_day["2024-05-02"]["calls"] == 0
    assert data["total"]["calls"] == 3
    assert data["total"]["cost"] == Decimal("1.123457")
    assert data["total"]["asr"] == Decimal("0.6667")


def test_dst_days_have_23_and_25_hours_in_the_zone(client_ro):
    # Europe/Berlin: 2024-03-31 loses an hour, 2024-10-27 gains one.
    spring = datetime(2024, 3, 30, 23, tzinfo=UTC)  # 2024-03-31 00:00 +01:00
    autumn = datetime(2024, 10, 26, 22, tzinfo=UTC)  # 2024-10-27 00:00 +02:00
    create_cdrs(*[cdr_payload(started=spring + timedelta(minutes=30 * i)) for i in range(46)])
    create_cdrs(*[cdr_payload(started=autumn + timedelta(minutes=30 * i)) for i in range(50)])
    days = stats(client_ro, group_by="day", tz="Europe/Berlin")["items"]
    counts = {i["key"]["day"]: i["calls"] for i in days}
    assert counts["2024-03-31T00:00:00+01:00"] == 46  # 23 hours × 2
    assert counts["2024-10-27T00:00:00+02:00"] == 50  # 25 hours × 2
    assert counts["2024-04-01T00:00:00+02:00"] == 0  # inside the window: present, zero
    hours = stats(
        client_ro,
        group_by="hour",
        tz="Europe/Berlin",
        started_after="2024-10-26T22:00:00Z",
        started_before="2024-10-27T23:00:00Z",
    )["items"]
    labels = [i["key"]["hour"] for i in hours]
    assert len(labels) == 25
    assert labels[2:4] == ["2024-10-27T02:00:00+02:00", "2024-10-27T02:00:00+01:00"]
    assert all(i["calls"] == 2 for i in hours)


def test_half_hour_zone_buckets(client_ro):
    # Asia/Kolkata is +05:30: its days start at 18:30 UTC.
    create_cdrs(
        cdr_payload(started=datetime(2024, 5, 1, 18, 29, tzinfo=UTC)),
        cdr_payload(started=datetime(2024, 5, 1, 18, 30, tzinfo=UTC)),
    )
    items = stats(client_ro, group_by="day", tz="Asia/Kolkata")["items"]
    assert [(i["key"]["day"], i["calls"]) for i in items] == [
        ("2024-05-01T00:00:00+05:30", 1),
        ("2024-05-02T00:00:00+05:30", 1),
    ]


def test_domain_limited_token_only_aggregates_its_domains(api_client):
    create_cdrs(
        cdr_payload(caller_domain="a.example", callee_domain="a.example"),
        cdr_payload(caller_domain="B.example", callee_domain="x.example"),
        cdr_payload(caller_domain="c.example", callee_domain="c.example"),
    )
    limited = api_client(scopes=("read",), domains=("b.example",))
    data = stats(limited, group_by="caller_domain")
    assert [(i["key"]["caller_domain"], i["calls"]) for i in data["items"]] == [("B.example", 1)]
    assert data["total"]["calls"] == 1


def test_cost_only_with_billing_and_billed_account_is_forbidden_without(client_ro, client_full):
    create_cdrs(cdr_payload(cost=Decimal("2.5"), billed_account="ACC-1"))
    ro = stats(client_ro, group_by="direction")
    assert "cost" not in ro["items"][0] and "cost" not in ro["total"]
    full = stats(client_full, group_by="billed_account")
    assert full["items"][0]["key"] == {"billed_account": "ACC-1"}
    assert full["items"][0]["cost"] == Decimal("2.5")
    response = client_ro.get(URL, {"group_by": "billed_account"})
    assert response.status_code == 403
    assert body(response)["errors"][0]["code"] == "FORBIDDEN"
    response = client_ro.get(URL, {"filter": "cost gt 1"})
    assert response.status_code == 400  # the list's rule: private fields need billing


@pytest.mark.parametrize(
    ("params", "option"),
    [
        ({"group_by": "minute"}, "group_by"),
        ({"group_by": "day,hour"}, "group_by"),
        ({"group_by": "trunk,direction,day"}, "group_by"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"tz": "../../etc/passwd"}, "tz"),
        ({"format": "xml"}, "format"),
        ({"top": "10"}, "top"),
        ({"cursor": "x"}, "cursor"),
        ({"started_after": "yesterday"}, "started_after"),
        ({"filter": "caller eq"}, "filter"),
        ({"nonsense": "1"}, "nonsense"),
        (
            {
                "group_by": "hour",
                "started_after": "2000-01-01T00:00:00Z",
                "started_before": "2030-01-01T00:00:00Z",
            },
            "group_by",
        ),
    ],
)
def test_client_mistakes_are_400_in_contract_shape(client_ro, params, option):
    response = client_ro.get(URL, params)
    assert response.status_code == 400
    error = body(response)["errors"][0]
    assert error["code"] == "VALIDATE_FAILED"
    assert error["detail"]["option"] == option


def test_needs_a_token_with_read_scope(client, api_client):
    assert client.get(URL).status_code == 401
    assert api_client(scopes=("write",)).get(URL).status_code == 403


def test_stats_is_not_taken_for_a_cdr_id(client_ro):
    create_cdrs(cdr_payload())
    for path in (URL, URL + "/"):
        response = client_ro.get(path)
        assert response.status_code == 200
        assert body(response)["total"]["calls"] == 1


def test_csv_for_spreadsheets(client_full):
    create_cdrs(
        cdr_payload(trunk="=cmd", cost=Decimal("0.1")),
        cdr_payload(trunk="sipgate", cost=Decimal("0.2")),
        cdr_payload(trunk="sipgate"),
    )
    response = client_full.get(URL, {"group_by": "trunk", "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    lines = response.content.decode().split("\r\n")
    assert lines[0] == "trunk,calls,answered,asr,total_duration,acd,avg_pdd,cost"
    assert lines[1] == "sipgate,2,2,1.0000,120,60.00,4.00,0.200000"
    assert lines[2].startswith("'=cmd,1,")  # no formula for a spreadsheet to run


# --- the endpoint against a direct computation over the rows (hypothesis) ----------------

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu")
START = datetime(2024, 3, 8, tzinfo=UTC)  # windows cross US (03-10) and EU (03-31) DST
HOURS = 26 * 24
TRUNKS = ("", "sipgate", "twilio-eu")
DOMAINS = ("a.example", "B.example", "c.example")
DIRECTIONS = ("INBOUND_CALL", "OUTBOUND_CALL", "EXTENSION_CALL")


@pytest.fixture
def stored_rows(db: None) -> list[dict[str, Any]]:
    rng = random.Random(15)
    payloads = []
    for _ in range(160):
        started = START + timedelta(seconds=rng.randrange(HOURS * 3600))
        answered = rng.random() < 0.7
        rang = rng.random() < 0.8
        payloads.append(
            cdr_payload(
                started=started,
                rang_at=format_ts(started + timedelta(seconds=1)) if rang else None,
                answered_at=format_ts(started + timedelta(seconds=rng.randrange(1, 30)))
                if answered
                else None,
                duration=rng.randrange(0, 600) if answered else 0,
                direction=rng.choice(DIRECTIONS),
                end_reason=rng.choice(("CALLER_DISCONNECTED", "CANCELLED")),
                trunk=rng.choice(TRUNKS),
                caller_domain=rng.choice(DOMAINS),
                callee_domain=rng.choice(DOMAINS),
                cost=Decimal(rng.randrange(0, 10**7)).scaleb(-6) if rng.random() < 0.5 else None,
                billed_account=rng.choice(("", "ACC-1", "ACC-2")),
            )
        )
    create_cdrs(*payloads)
    return _Rows(Cdr.objects.values())


class _Rows(list):
    def __repr__(self) -> str:  # hypothesis prints its arguments
        return f"<{len(self)} stored CDRs>"


def _round(value: Fraction, places: int) -> Decimal:
    q = Decimal(1).scaleb(-places)
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return exact.quantize(q, rounding=ROUND_HALF_UP)


def _measures(rows: list[dict[str, Any]], billing: bool) -> dict[str, Any]:
    calls = len(rows)
    answered = sum(r["answered_at"] is not None for r in rows)
    duration = sum(r["duration"] for r in rows)
    pdds = [
        int((r["answered_at"] - r["rang_at"]).total_seconds())
        for r in rows
        if r["answered_at"] is not None and r["rang_at"] is not None
    ]
    out = {
        "calls": calls,
        "answered": answered,
        "asr": _round(Fraction(answered, calls), 4) if calls else Decimal(0),
        "total_duration": duration,
        "acd": _round(Fraction(duration, answered), 2) if answered else Decimal(0),
        "avg_pdd": _round(Fraction(sum(pdds), len(pdds)), 2) if pdds else Decimal(0),
    }
    if billing:
        out["cost"] = sum((r["cost"] for r in rows if r["cost"] is not None), Decimal(0))
    return out


def _bucket(dim: str, instant: datetime, tz: ZoneInfo) -> datetime:
    """The start of ``instant``'s local hour/day/week/month, as an instant."""
    local = instant.astimezone(tz)
    if dim == "hour":
        start = local.replace(minute=0, second=0)
    else:
        day = local.date()
        if dim == "week":
            day -= timedelta(days=day.weekday())
        elif dim == "month":
            day = day.replace(day=1)
        start = datetime.combine(day, time(0), tzinfo=tz)
    return start.astimezone(UTC)


def expected(
    rows: list[dict[str, Any]],
    group_by: list[str],
    tz_name: str,
    filters: dict[str, Any],
    domains: tuple[str, ...],
    billing: bool,
) -> dict[str, Any]:
    tz = ZoneInfo(tz_name)
    lo, hi = filters.get("started_after"), filters.get("started_before")

    def keep(r: dict[str, Any]) -> bool:
        if domains and not (
            r["caller_domain"].lower() in domains or r["callee_domain"].lower() in domains
        ):
            return False
        if lo is not None and r["started_at"] < lo:
            return False
        if hi is not None and r["started_at"] >= hi:
            return False
        if "answered" in filters and (r["answered_at"] is not None) != filters["answered"]:
            return False
        if "min_duration" in filters and r["duration"] < filters["min_duration"]:
            return False
        # An empty plain filter filters nothing (as on the list).
        names = [f for f in ("direction", "trunk", "caller_domain") if filters.get(f, "") != ""]
        return all(r[f] == filters[f] for f in names)

    chosen = [r for r in rows if keep(r)]
    time_dim = next((d for d in group_by if d in ("hour", "day", "week", "month")), None)
    value_dims = [d for d in group_by if d != time_dim]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in chosen:
        key = tuple(r[d] for d in value_dims)
        if time_dim:
            key = (_bucket(time_dim, r["started_at"], tz), *key)
        groups.setdefault(key, []).append(r)
    if time_dim:
        first = lo if lo is not None else min((r["started_at"] for r in chosen), default=None)
        last = (
            hi - timedelta(seconds=1)
            if hi is not None
            else max((r["started_at"] for r in chosen), default=None)
        )
        buckets: set[datetime] = set()
        if first is not None and last is not None and first <= last:
            t = first  # every 15 minutes: each local hour of these zones is visited
            while t <= last:
                buckets.add(_bucket(time_dim, t, tz))
                t += timedelta(minutes=15)
            buckets.add(_bucket(time_dim, last, tz))
        series = sorted({k[1:] for k in groups}) if value_dims else [()]
        keys = [(b, *s) for b in sorted(buckets) for s in series]
    else:
        keys = sorted(groups, key=lambda k: (-len(groups[k]), k))
    items = []
    for key in keys:
        labels: dict[str, Any] = {}
        rest = iter(key[1:] if time_dim else key)
        for d in group_by:
            labels[d] = key[0].astimezone(tz).isoformat() if d == time_dim else next(rest)
        items.append({"key": labels, **_measures(groups.get(key, []), billing)})
    return {
        "group_by": group_by,
        "tz": tz_name,
        "items": items,
        "total": _measures(chosen, billing),
    }


def _instants() -> st.SearchStrategy[datetime]:
    whole_hours = st.integers(0, HOURS).map(lambda h: START + timedelta(hours=h))
    any_second = st.integers(0, HOURS * 3600).map(lambda s: START + timedelta(seconds=s))
    return st.one_of(whole_hours, any_second)


GROUP_BYS = [
    ["hour"],
    ["day"],
    ["week"],
    ["month"],
    ["direction"],
    ["trunk"],
    ["caller_domain"],
    ["day", "trunk"],
    ["end_reason", "week"],
    ["direction", "callee_domain"],
    ["billed_account"],
    ["hour", "direction"],
]


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if draw(st.booleans()):
        filters["started_after"] = draw(_instants())
    if draw(st.booleans()):
        filters["started_before"] = draw(_instants())
    if draw(st.booleans()):
        filters["direction"] = draw(st.sampled_from(DIRECTIONS))
    if draw(st.booleans()):
        filters["trunk"] = draw(st.sampled_from(TRUNKS))
    if draw(st.integers(0, 3)) == 0:
        filters["caller_domain"] = draw(st.sampled_from(DOMAINS))
    if draw(st.integers(0, 3)) == 0:
        filters["answered"] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        filters["min_duration"] = draw(st.integers(0, 600))
    group_by = draw(st.sampled_from(GROUP_BYS))
    if "hour" in group_by and not ("started_after" in filters and "started_before" in filters):
        group_by = ["day", *group_by[1:]]  # keeps the number of hourly buckets small
    return {
        "filters": filters,
        "group_by": group_by,
        "tz": draw(st.sampled_from(ZONES)),
        "limited": draw(st.integers(0, 3)) == 0,
    }


def _wire(filters: dict[str, Any]) -> dict[str, str]:
    out: dict[str, Any] = {}
    for name, value in filters.items():
        if isinstance(value, datetime):
            out[name] = format_ts(value)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_stats_equal_a_direct_computation(stored_rows, api_client, request):
    domains = ("b.example",) if request["limited"] else ()
    client = api_client(scopes=("read", "billing"), domains=domains)
    params = {**_wire(request["filters"]), "group_by": ",".join(request["group_by"])}
    params["tz"] = request["tz"]
    got = stats(client, **params)
    want = expected(
        stored_rows, request["group_by"], request["tz"], request["filters"], domains, True
    )
    assert got["total"] == want["total"], params
    assert len(got["items"]) == len(want["items"]), params
    for got_item, want_item in zip(got["items"], want["items"], strict=True):
        assert got_item == want_item, params
    assert got == want


def test_month_buckets_and_week_starts_on_monday(client_ro):
    create_cdrs(
        cdr_payload(started=datetime(2024, 1, 31, 23, 30, tzinfo=UTC)),
        cdr_payload(started=datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
    )
    months = stats(client_ro, group_by="month", tz="America/New_York")["items"]
    assert [(i["key"]["month"], i["calls"]) for i in months] == [
        ("2024-01-01T00:00:00-05:00", 1),
        ("2024-02-01T00:00:00-05:00", 1),  # 2024-02-29 19:00 in New York
    ]
    weeks = stats(client_ro, group_by="week")["items"]
    assert date.fromisoformat(weeks[0]["key"]["week"][:10]).weekday() == 0
