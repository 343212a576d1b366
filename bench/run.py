"""The read benchmark: the service vs the floor vs a FastAPI peer under wrk, on PostgreSQL.

    .venv/bin/python bench/run.py [--rows N] [--duration S] [--connections C]
                                  [--only S1,S5,...] [--servers service,floor,peer]
                                  [--skip-load]

See bench/README.md. Never part of the tests.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import DATA, RESULTS, Server, log

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/cdrbench"
DEEP_10M = 5_000_000

SCENARIOS = {
    "S1": "first page, top=100, exact count (unfiltered: counter table)",
    "S2": "filter=caller eq '<x>' (rotating real callers), top=50, with count",
    "S3": "one-day started_after/started_before window (rotating days), top=100, with count",
    "S4": "cursor page deep in the table (keyset), top=100, with count",
    "S4-skip": "the same depth by skip=<deep>, top=100, with count",
    "S5": "detail by id (rotating real ids, base64)",
    "S6": "search=<4 characters> (rotating real caller/callee substrings), top=100, with count",
    "S7": "first page, top=100, count=false",
    "S8": "GET /api/cdrs/stats?group_by=day over a calendar month (rotating months; UTC and "
    "Europe/Berlin), service only: neither the floor nor the peer has statistics",
}
# Scenarios the floor and the peer do not implement: measured on the service alone.
SERVICE_ONLY = {"S8"}
# The servers, measured in this order (one at a time): name, legend label, short name.
SERVERS = {
    "service": ("service (Django/DRF)", "s"),
    "floor": ("floor (bare WSGI)", "f"),
    "peer": ("peer (FastAPI + asyncpg)", "p"),
}
# Issue #16: the scenarios where the service must be at or above the peer (req/s, p99).
PEER_TARGETS = ("S2", "S3", "S5", "S7")


# --- loading ----------------------------------------------------------------------------------
def _db_comment(url: str) -> str:
    name = common.db_name(url)
    with common.pg_connect(url) as c:
        row = c.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    return (row and row[0]) or ""


def _set_db_comment(url: str, text: str) -> None:
    with common.pg_connect(url) as c:
        c.execute(f"COMMENT ON DATABASE \"{common.db_name(url)}\" IS '{text}'")


def _row_count(url: str) -> int:
    with common.pg_connect(url) as c:
        exists = c.execute("SELECT to_regclass('cdrs_cdr')").fetchone()[0]
        if exists is None:
            return 0
        return c.execute("SELECT count(*) FROM cdrs_cdr").fetchone()[0]


def load(url: str, rows: int, env: dict[str, str]) -> dict[str, float]:
    """Make sure the database holds exactly the ``rows`` generated CDRs (seed 1)."""
    marker_done = f"cdrbench rows={rows} seed=1 complete"
    marker_loading = f"cdrbench rows={rows} seed=1 loading"
    common.ensure_database(url)
    comment = _db_comment(url)
    count = _row_count(url)
    if comment == marker_done and count == rows:
        log(f"database already holds the {rows:,} CDRs: reusing it")
        common.manage(["migrate", "--no-input", "-v", "0"], env)  # the code may be newer
        return {}
    if count and comment != marker_loading:
        log(f"database holds {count:,} rows ({comment or 'no marker'}): recreating it")
        common.ensure_database(url, recreate=True)
    common.manage(["migrate", "--no-input", "-v", "0"], env)
    path = common.csv_for(rows, env)
    _set_db_comment(url, marker_loading)
    started = time.monotonic()
    out = common.manage(["import_cdrs", str(path), "--lenient", "--no-trailer", "--quiet"], env)
    import_s = time.monotonic() - started
    log(out.strip())
    log(f"imported in {import_s:,.0f} s ({rows / import_s:,.0f} rows/s); VACUUM ANALYZE ...")
    started = time.monotonic()
    with common.pg_connect(url) as c:
        c.execute("VACUUM ANALYZE")
    vacuum_s = time.monotonic() - started
    count = _row_count(url)
    if count != rows:
        raise SystemExit(f"expected {rows} rows after the import, found {count}")
    _set_db_comment(url, marker_done)
    log(f"VACUUM ANALYZE took {vacuum_s:,.0f} s")
    return {"import_s": import_s, "vacuum_s": vacuum_s}


# --- what the scenarios request ---------------------------------------------------------------
def sample_inputs(url: str, rows: int) -> dict[str, list]:
    rng = random.Random(1)
    pct = min(100.0, max(0.01, 4000 * 100.0 / max(rows, 1)))
    with common.pg_connect(url) as c:
        sample = c.execute(
            f"SELECT id, caller, callee FROM cdrs_cdr TABLESAMPLE BERNOULLI ({pct}) REPEATABLE (1)"
        ).fetchall()
        lo, hi = c.execute("SELECT min(started_at), max(started_at) FROM cdrs_cdr").fetchone()
    rng.shuffle(sample)
    ids = [base64.b64encode(str(r[0]).encode()).decode() for r in sample[:1000]]
    callers = [r[1] for r in sample[:300] if r[1]]
    subs: list[str] = []
    for _id, caller, callee in sample:
        for value in (caller, callee):
            digits = value.lstrip("+")[2:]  # past the country code of external numbers
            if len(digits) >= 6 and digits.isdigit():
                pos = rng.randrange(0, len(digits) - 3)
                subs.append(digits[pos : pos + 4])
        if len(subs) >= 200:
            break
    first_day = (lo + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    days = []
    day = first_day
    while day + timedelta(days=1) <= hi:
        days.append(day)
        day += timedelta(days=1)
    rng.shuffle(days)
    return {
        "ids": ids,
        "callers": callers,
        "subs": subs,
        "days": days,
        "months": _months(lo, hi),
    }


def _months(lo: datetime, hi: datetime) -> list[tuple[str, datetime, datetime]]:
    """(zone, start, end) of calendar months in UTC and Europe/Berlin, local midnights, that
    overlap the data; the newest first. Short data spans still give one 30-day window."""
    from zoneinfo import ZoneInfo

    out = []
    for zone in ("UTC", "Europe/Berlin"):
        tz = ZoneInfo(zone)
        last = (hi - timedelta(days=15)).astimezone(tz)  # not a month with a day of data
        year, month = last.year, last.month
        for _ in range(12):
            start = datetime(year, month, 1, tzinfo=tz)
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz)
            if end <= lo:
                break
            out.append((zone, start, end))
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return out


def _ts(d: datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def http_get(base: str, path: str, token: str, timeout: float = 600) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def deep_cursor(server: Server, token: str, deep: int) -> str:
    """A cursor pointing just before row ``deep`` (newest first), from the first server
    measured (the service unless --servers leaves it out: all of them sign alike)."""
    started = time.monotonic()
    status, body = http_get(server.url, f"/api/cdrs?top=1&skip={deep - 1}&count=false", token)
    if status != 200 or not body.get("next_cursor"):
        raise SystemExit(f"could not obtain a deep cursor: {status} {str(body)[:300]}")
    log(f"deep cursor at row {deep:,} obtained in {time.monotonic() - started:.1f} s")
    return body["next_cursor"]


def scenario_paths(name: str, inputs: dict, deep: int, cursor: str | None) -> list[str]:
    if name == "S1":
        return ["/api/cdrs?top=100"]
    if name == "S2":
        return [
            "/api/cdrs?" + urlencode({"filter": f"caller eq '{c}'", "top": 50}, quote_via=quote)
            for c in inputs["callers"]
        ]
    if name == "S3":
        return [
            "/api/cdrs?"
            + urlencode(
                {
                    "started_after": _ts(d),
                    "started_before": _ts(d + timedelta(days=1)),
                    "top": 100,
                },
                quote_via=quote,
            )
            for d in inputs["days"]
        ]
    if name == "S4":
        assert cursor is not None
        return ["/api/cdrs?" + urlencode({"top": 100, "cursor": cursor}, quote_via=quote)]
    if name == "S4-skip":
        return [f"/api/cdrs?top=100&skip={deep}"]
    if name == "S5":
        return [f"/api/cdrs/{quote(i, safe='')}" for i in inputs["ids"]]
    if name == "S6":
        return [
            "/api/cdrs?" + urlencode({"search": s, "top": 100}, quote_via=quote)
            for s in inputs["subs"]
        ]
    if name == "S7":
        return ["/api/cdrs?top=100&count=false"]
    if name == "S8":
        return [
            "/api/cdrs/stats?"
            + urlencode(
                {
                    "group_by": "day",
                    "tz": zone,
                    "started_after": _ts(start),
                    "started_before": _ts(end),
                },
                quote_via=quote,
            )
            for zone, start, end in inputs["months"]
        ]
    raise KeyError(name)


def _normalise(body: dict) -> dict:
    body = dict(body)
    if "next_cursor" in body:
        body["next_cursor"] = body["next_cursor"] is not None
    return body


def check_same(reference: Server, others: list[Server], token: str, name: str, paths) -> str:
    """Ask every server the same few requests; the JSON must equal the reference's (the
    first server: the service), the cursor only for presence."""
    problems = []
    for path in paths[:3]:
        r_status, r_body = http_get(reference.url, path, token)
        for other in others:
            o_status, o_body = http_get(other.url, path, token)
            if r_status != 200 or o_status != 200:
                problems.append(
                    f"{path[:80]}: {reference.name} {r_status}, {other.name} {o_status}: "
                    f"{str(r_body)[:200]} / {str(o_body)[:200]}"
                )
            elif _normalise(r_body) != _normalise(o_body):
                problems.append(
                    f"{path[:80]}: {reference.name} and {other.name} answered differently"
                )
    for p in problems:
        log(f"  ! {name}: {p}")
    return "; ".join(problems)


# --- wrk --------------------------------------------------------------------------------------
LUA = r"""
local paths = {
%(paths)s
}
wrk.headers["Authorization"] = "Bearer %(token)s"
%(threads_lua)s
function init(args)
  idx = (tid * 7919) %% #paths
  non2xx = 0
  first_bad = ""
end
function request()
  idx = idx %% #paths + 1
  return wrk.format("GET", paths[idx])
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_bad == "" then
      first_bad = status .. " " .. string.sub(body or "", 1, 300)
    end
  end
end
function done(summary, latency, requests)
  local bad = 0
  local sample = ""
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
    local fb = t:get("first_bad")
    if sample == "" and fb ~= nil then sample = fb end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"p50_us":%%d,"p90_us":%%d,' ..
    '"p99_us":%%d,"mean_us":%%.1f,"max_us":%%d,"err_connect":%%d,"err_read":%%d,' ..
    '"err_write":%%d,"err_status":%%d,"err_timeout":%%d,"non2xx":%%d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, bad))
  io.write("BENCHBAD " .. string.gsub(sample, "[\r\n]", " ") .. "\n")
end
"""


def lua_script(name: str, paths: list[str], token: str) -> Path:
    def lua_str(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    script = LUA % {
        "paths": ",\n".join(lua_str(p) for p in paths),
        "token": token,
        "threads_lua": common.WRK_THREADS_LUA,
    }
    path = DATA / "lua" / f"{name}.lua"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    return path


def run_wrk(
    url: str,
    script: Path,
    seconds: int,
    args: argparse.Namespace,
    threads: int | None = None,
    connections: int | None = None,
) -> dict:
    cmd = [
        "wrk",
        f"-t{threads or args.threads}",
        f"-c{connections or args.connections}",
        f"-d{seconds}s",
        f"--timeout={args.wrk_timeout}s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    result: dict = {"cmd": " ".join(cmd)}
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result.update(json.loads(line[len("BENCHJSON ") :]))
        elif line.startswith("BENCHBAD "):
            result["first_bad"] = line[len("BENCHBAD ") :].strip()
    if "requests" not in result:
        raise SystemExit(f"wrk failed: {out.stdout}\n{out.stderr}")
    secs = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / secs if secs else 0.0
    result["failed"] = (
        result["non2xx"]
        + result["err_connect"]
        + result["err_read"]
        + result["err_write"]
        + result["err_timeout"]
    )
    return result


def measure(
    name: str,
    side: str,
    server: Server,
    script: Path,
    meter: common.CpuMeter,
    args: argparse.Namespace,
    servers: list[Server],
) -> dict:
    """Warm up, then one measured wrk run (re-run when other load disturbed it), then a
    short one-connection probe for the unloaded latency."""
    best: dict | None = None
    for attempt in range(1 + args.retries):
        common.wait_idle(servers, args.database_url)
        waited, _ = meter.wait_quiet(args.quiet_threshold, args.quiet_wait)
        if args.warmup:
            run_wrk(server.url, script, args.warmup, args)
            common.wait_idle(servers, args.database_url)
        a = meter.snapshot()
        r = run_wrk(server.url, script, args.duration, args)
        r["foreign_cpu_pct"] = meter.foreign_pct(a, meter.snapshot())
        r["quiet_wait_s"] = waited
        r["attempt"] = attempt + 1
        log(
            f"{name:8} {side:7} {r['rps']:9,.1f} req/s  p50 {_ms(r['p50_us']):>7} ms  "
            f"p99 {_ms(r['p99_us']):>7} ms  non-2xx/errors {r['failed']}  "
            f"other load {r['foreign_cpu_pct']:.0f}%"
        )
        if r.get("first_bad"):
            log(f"         first non-2xx: {r['first_bad'][:160]}")
        if best is None or r["foreign_cpu_pct"] < best["foreign_cpu_pct"]:
            best = r
        if r["foreign_cpu_pct"] <= args.retry_above:
            break
        log(f"         other processes used {r['foreign_cpu_pct']:.0f}% of the CPUs: again")
    assert best is not None
    if args.probe:
        common.wait_idle(servers, args.database_url)
        probe = run_wrk(server.url, script, args.probe, args, threads=1, connections=1)
        # None when no request finished within the probe (S4-skip on 10M rows)
        best["c1_p50_us"] = probe["p50_us"] if probe["requests"] else None
        best["c1_rps"] = probe["rps"]
    return best


# --- report -----------------------------------------------------------------------------------
def _ms(us: float | None) -> str:
    if us is None:
        return "—"
    ms = us / 1000
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def evaluate(results: dict, rss_max_kb: int) -> list[tuple[str, str, bool | None]]:
    """(target, measured, passed) for every target the measured scenarios cover."""
    out: list[tuple[str, str, bool | None]] = []

    def side(n: str, name: str) -> dict | None:
        return results.get(n, {}).get(name)

    def svc(n: str) -> dict | None:
        return side(n, "service")

    def ratio(n: str, other: str = "floor") -> float | None:
        s, o = svc(n), side(n, other)
        return s["rps"] / o["rps"] if s and o and o["rps"] else None

    for n, min_ratio, max_p50 in (
        ("S5", 0.70, 5),
        ("S1", 0.60, 25),
        ("S2", 0.60, 25),
        ("S3", 0.60, 25),
        ("S7", 0.60, 25),
    ):
        s, r = svc(n), ratio(n)
        if s is None:
            continue
        p50 = s["p50_us"] / 1000
        if side(n, "floor"):
            out.append(
                (
                    f"{n} ≥ {min_ratio:.0%} of floor req/s",
                    f"{r:.0%}" if r else "—",
                    bool(r and r >= min_ratio),
                )
            )
        out.append((f"{n} p50 ≤ {max_p50} ms", f"{p50:,.1f} ms", p50 <= max_p50))
    for n in PEER_TARGETS:  # issue #16: at or above the FastAPI peer
        s, peer, r = svc(n), side(n, "peer"), ratio(n, "peer")
        if not s or not peer:
            continue
        out.append((f"{n} req/s ≥ peer's", f"{r:.2f}×" if r else "—", bool(r and r >= 1)))
        out.append(
            (
                f"{n} p99 ≤ peer's",
                f"{_ms(s['p99_us'])} vs {_ms(peer['p99_us'])} ms",
                s["p99_us"] <= peer["p99_us"],
            )
        )
    s1, s4 = svc("S1"), svc("S4")
    if s1 and s4:
        p = s4["p50_us"] / s1["p50_us"] if s1["p50_us"] else float("inf")
        r = s1["rps"] / s4["rps"] if s4["rps"] else float("inf")
        out.append(("S4 cursor p50 within 1.5× of S1 p50", f"{p:.2f}×", p <= 1.5))
        out.append(("S4 cursor req/s within 1.5× of S1 req/s", f"{r:.2f}×", r <= 1.5))
    s8 = svc("S8")
    if s8:
        p50 = s8["p50_us"] / 1000
        out.append(("S8 p50 ≤ 200 ms", f"{p50:,.1f} ms", p50 <= 200))
        if s8.get("c1_p50_us"):
            c1 = s8["c1_p50_us"] / 1000
            out.append(("S8 p50 @1 conn ≤ 200 ms", f"{c1:,.1f} ms", c1 <= 200))
    s6 = svc("S6")
    if s6:
        p50 = s6["p50_us"] / 1000
        out.append(("S6 p50 ≤ 150 ms", f"{p50:,.1f} ms", p50 <= 150))
    if rss_max_kb:
        out.append(
            ("service worker RSS < 150 MB", f"{rss_max_kb / 1024:,.0f} MB", rss_max_kb / 1024 < 150)
        )
    for n, by in results.items():
        for name in SERVERS:
            r = by.get(name)
            if r and r["failed"]:
                out.append((f"{n} {name}: every response 2xx", f"{r['failed']:,} failed", False))
    return out


def write_report(meta: dict, results: dict, rss: dict, targets: list, order: list[str]) -> str:
    sides = meta["servers"]
    short = "/".join(SERVERS[n][1] for n in sides)
    ratios = [o for o in ("floor", "peer") if "service" in sides and o in sides]
    servers_line = []
    if "service" in sides or "floor" in sides:
        servers_line.append(
            f"gunicorn -c gunicorn.conf.py ({meta['gunicorn']}) for "
            + " and ".join(
                f"the {n} (`{app}`)"
                for n, app in (("service", "cdrservice.wsgi"), ("floor", "bench/floor.py"))
                if n in sides
            )
        )
    if "peer" in sides:
        servers_line.append(f"the peer: `{meta['peer']}`")
    lines = [
        "# cdrservice read benchmark: " + " vs ".join(sides),
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- code: commit {meta['revision']}",
        f"- rows: {meta['rows']:,} CDRs (generate_cdrs --seed 1, import_cdrs --lenient, "
        "VACUUM ANALYZE)",
        f"- machine: {meta['machine']['nproc']} CPUs ({meta['machine']['cpu']}), "
        f"{meta['machine']['memory']} RAM, Linux {meta['machine']['kernel']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- load generator: **wrk** {meta['versions']['wrk']}, {meta['threads']} threads, "
        f"{meta['connections']} connections, {meta['warmup']} s warm-up then "
        f"{meta['duration']} s per scenario and server, one server after the other, on the "
        "same machine as the servers and PostgreSQL",
        "- servers: " + "; ".join(servers_line),
        f"- deep position (S4): row {meta['deep']:,}",
        "",
    ]
    header = (
        ["scenario"]
        + [f"{n} req/s" for n in sides]
        + [f"service/{o}" for o in ratios]
        + [f"{n} p50 ms" for n in sides]
        + [f"{n} p99 ms" for n in sides]
        + [f"p50 ms @1 conn {short}", f"failed {short}", f"other load % {short}"]
    )
    lines += ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]

    def each(by: dict, fmt) -> list[str]:
        return [fmt(by[n]) if by.get(n) else "—" for n in sides]

    for n in order:
        by = results.get(n, {})
        if not any(by.get(side) for side in sides):
            continue
        s = by.get("service")
        cells = [n, *each(by, lambda r: f"{r['rps']:,.0f}")]
        for o in ratios:
            o_rps = (by.get(o) or {}).get("rps")
            cells.append(f"{s['rps'] / o_rps:.0%}" if s and o_rps else "—")
        cells += each(by, lambda r: _ms(r["p50_us"]))
        cells += each(by, lambda r: _ms(r["p99_us"]))
        cells.append(" / ".join(each(by, lambda r: _ms(r.get("c1_p50_us")))))
        cells.append("/".join(each(by, lambda r: str(r["failed"]))))
        cells.append("/".join(each(by, lambda r: f"{r['foreign_cpu_pct']:.0f}")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{short}: " + ", ".join(SERVERS[n][0] for n in sides) + ". "
        "p50/p99 are at the fixed concurrency above (requests queue for the workers, so "
        "p50 ≈ connections/(workers × threads) × service time); `@1 conn` is the p50 of a "
        f'{meta["probe"]} s run with one connection (the unloaded latency). "other load": '
        "CPU used during the measured run by processes outside the benchmark (other people's "
        "work on this shared machine), in % of all CPUs; a run above "
        f"{meta['retry_above']:.0f}% was repeated (up to {meta['retries']} times) and the "
        "least disturbed kept.",
    ]
    lines += ["", "Scenarios:", ""]
    for n in order:
        if n in results:
            lines.append(f"- **{n}**: {SCENARIOS[n]}")
    rss_parts = []
    for n in sides:
        text = f"{n} max {rss[f'{n}_max_kb'] / 1024:,.0f} MB"
        rss_parts.append(f"**{text}**" if n == "service" else text)
    lines += [
        "",
        "Worker RSS (VmRSS of each worker process, sampled every second): "
        + ", ".join(rss_parts)
        + ".",
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---:|---|",
    ]
    for name, measured, passed in targets:
        lines.append(f"| {name} | {measured} | {'PASS' if passed else '**FAIL**'} |")
    notes = [
        f"- {n} {side}: first non-2xx: `{r['first_bad'][:200]}`"
        for n, by in results.items()
        for side, r in by.items()
        if isinstance(r, dict) and r.get("first_bad")
    ]
    notes += [f"- {n}: {by['mismatch']}" for n, by in results.items() if by.get("mismatch")]
    if notes:
        lines += ["", "## Problems seen", "", *notes]
    lines += ["", "![req/s and p50](latest.png)", ""]
    return "\n".join(lines)


CHART_COLOURS = {"service": "#3b6ea8", "floor": "#c9c9c9", "peer": "#e08a3c"}


def chart(results: dict, order: list[str], path: Path, meta: dict) -> None:
    try:
        import matplotlib
    except ImportError:  # the numbers are already written; the chart is optional
        log(f"no chart: matplotlib is missing (pip install -r bench/requirements.txt) -> {path}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = meta["servers"]
    # the scenarios measured on more than one server (not the service-only S8)
    names = [n for n in order if sum(1 for side in sides if results.get(n, {}).get(side)) > 1]
    if not names:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    x = range(len(names))
    w = 0.8 / len(sides)
    for ax, key, title, scale in (
        (ax1, "rps", "throughput (req/s, higher is better)", 1.0),
        (ax2, "p50_us", "p50 latency (ms, log scale, lower is better)", 1e-3),
    ):
        for k, side in enumerate(sides):
            values = [(results[n].get(side) or {}).get(key, 0) * scale for n in names]
            offset = (k - (len(sides) - 1) / 2) * w
            ax.bar(
                [i + offset for i in x],
                values,
                w,
                label=SERVERS[side][0],
                color=CHART_COLOURS[side],
            )
        ax.set_xticks(list(x), names)
        ax.set_title(title, fontsize=10)
        if key == "p50_us":
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(
        f"cdrservice read benchmark — {meta['rows']:,} CDRs, wrk -t{meta['threads']} "
        f"-c{meta['connections']} -d{meta['duration']}s, {meta['workers']} workers each, "
        f"{meta['machine']['nproc']} CPUs",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------
def peer_command(port: int, workers: int) -> list[str]:
    """The FastAPI peer as uvicorn serves it in production: its own worker processes,
    uvloop and httptools (uvicorn[standard]), no access log (the floor has none either)."""
    return [
        common.UVICORN,
        "peer_fastapi:app",
        "--app-dir",
        "bench",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def start_servers(names: list[str], env: dict[str, str], args: argparse.Namespace) -> list:
    """Start the chosen servers, each on its own port (the service first)."""
    if "peer" in names:
        import importlib.util

        missing = [m for m in ("fastapi", "uvicorn", "asyncpg") if not importlib.util.find_spec(m)]
        if missing:
            raise SystemExit(
                f"the peer needs {', '.join(missing)}: "
                ".venv/bin/pip install -r bench/requirements.txt"
            )
    servers: list[Server] = []
    port = args.port
    try:
        for name in names:
            port = common.free_port(port)
            if name == "service":
                server = Server("service", "cdrservice.wsgi", port, env, args.workers)
            elif name == "floor":
                server = Server(
                    "floor", "floor:application", port, env, args.workers, ["--pythonpath", "bench"]
                )
            else:
                server = Server(
                    "peer", "", port, env, args.workers, command=peer_command(port, args.workers)
                )
            servers.append(server)
            port += 1
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--duration", type=int, default=15, help="seconds per scenario and server")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each run")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--only", default="", help="comma-separated scenarios (S4 = S4 and S4-skip)")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated servers to measure, in this order: service, floor, peer "
        "(default: all three)",
    )
    p.add_argument("--skip-load", action="store_true", help="use the database as it is")
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    p.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    p.add_argument("--port", type=int, default=8901, help="first server's port (then: next free)")
    p.add_argument("--wrk-timeout", type=int, default=60, help="wrk per-request timeout, s")
    p.add_argument(
        "--probe",
        type=int,
        default=5,
        help="seconds of a 1-connection run per scenario and server (0: none)",
    )
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=10.0,
        help="before each run, wait for other processes to use < this %% of CPU",
    )
    p.add_argument("--quiet-wait", type=float, default=60.0, help="... for at most this long")
    p.add_argument(
        "--retry-above",
        type=float,
        default=15.0,
        help="re-run a measurement when other processes used > this %% of CPU",
    )
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--output", default=str(RESULTS / "latest.md"))
    args = p.parse_args()

    order = list(SCENARIOS)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in SCENARIOS]
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
        order = [n for n in order if n in wanted or n.split("-")[0] in wanted]
    chosen = {w.strip() for w in args.servers.split(",") if w.strip()}
    if not chosen or chosen - set(SERVERS):
        raise SystemExit(f"--servers: choose among {', '.join(SERVERS)}")
    sides = [n for n in SERVERS if n in chosen]
    if "service" not in sides:
        order = [n for n in order if n not in SERVICE_ONLY]

    env = common.service_env(args.database_url)
    load_times = {}
    if args.skip_load:
        common.ensure_database(args.database_url)
        common.manage(["migrate", "--no-input", "-v", "0"], env)
    else:
        load_times = load(args.database_url, args.rows, env)
    rows = _row_count(args.database_url)
    if args.skip_load and rows != args.rows:
        log(f"--skip-load: the database holds {rows:,} rows (not {args.rows:,}); using that")
    deep = DEEP_10M if rows >= 10_000_000 else rows // 2

    token = common.mint_token(env)
    log("sampling real callers, ids, days and substrings ...")
    inputs = sample_inputs(args.database_url, rows)
    log(
        f"  {len(inputs['callers'])} callers, {len(inputs['ids'])} ids, "
        f"{len(inputs['days'])} days, {len(inputs['subs'])} substrings"
    )

    servers = start_servers(sides, env, args)
    by_name = {s.name: s for s in servers}
    samplers = {s.name: common.RssSampler(s.pid) for s in servers}
    for sampler in samplers.values():
        sampler.start()
    results: dict[str, dict] = {}
    meta = {
        "date": common.now_utc(),
        "command": common.command_line(),
        "rows": rows,
        "machine": common.machine_info(),
        "revision": common.git_revision(),
        "servers": sides,
        "gunicorn": common.gunicorn_settings(env, args.workers),
        "peer": " ".join(peer_command(by_name["peer"].port, args.workers)).replace(
            str(common.ROOT) + "/", ""
        )
        if "peer" in by_name
        else None,
        "versions": common.versions(args.database_url),
        "threads": args.threads,
        "connections": args.connections,
        "duration": args.duration,
        "warmup": args.warmup,
        "workers": args.workers,
        "deep": deep,
        "load": load_times,
        "probe": args.probe,
        "retry_above": args.retry_above,
        "retries": args.retries,
    }
    log(
        f"load generator: wrk {meta['versions']['wrk']} -t{args.threads} -c{args.connections}, "
        f"{args.warmup} s warm-up + {args.duration} s per scenario; "
        + ", then ".join(f"the {n}" for n in sides)
        + ", one after the other (never two at once)"
    )
    meter = common.CpuMeter(servers, args.database_url)
    try:
        cursor = None
        if "S4" in order:
            cursor = deep_cursor(servers[0], token, deep)
        for name in order:
            paths = scenario_paths(name, inputs, deep, cursor)
            measured = [by_name["service"]] if name in SERVICE_ONLY else servers
            mismatch = ""
            if len(measured) > 1:
                mismatch = check_same(measured[0], measured[1:], token, name, paths)
            script = lua_script(name, paths, token)
            results[name] = {"paths": len(paths), "mismatch": mismatch}
            for server in measured:
                results[name][server.name] = measure(
                    name, server.name, server, script, meter, args, servers
                )
    finally:
        meter.close()
        for sampler in samplers.values():
            sampler.stop()
        for server in servers:
            server.stop()

    rss: dict = {f"{n}_max_kb": sampler.max_kb for n, sampler in samplers.items()}
    rss.update({f"{n}_by_pid": sampler.max_by_pid for n, sampler in samplers.items()})
    targets = evaluate(results, rss.get("service_max_kb", 0))
    report = write_report(meta, results, rss, targets, order)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"meta": meta, "results": results, "rss": rss, "targets": targets},
            indent=1,
            default=str,
        )
    )
    chart(results, order, out.with_suffix(".png"), meta)
    print()
    print(report)
    log(f"wrote {out}, {out.with_suffix('.png')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
