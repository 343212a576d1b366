"""PortSIP webhook throughput: single-event POSTs to /api/webhooks/portsip, as a PBX sends them.

    .venv/bin/python bench/webhook.py [--duration 5] [--connections 8] [--workers 2]
                                      [--token-domain acme.example.com] [--output PATH]

Re-creates the database of --database-url (default cdrbench_webhook on 127.0.0.1), migrates
it, mints a write token (manage.py create_token), starts the service exactly as production
does (gunicorn -c gunicorn.conf.py cdrservice.wsgi, WEB_CONCURRENCY=--workers) and drives it
with wrk: every request is one call_cdr event (the newest shape from the reference, with
call_targets) with its own cdr_id and Call-ID, so every one is a real insert. Phases: a
1-second warm-up, then "new" (--duration seconds of unique events), then "re-delivered"
(--duration seconds re-sending events the "new" phase stored: de-duplication). Counts every
non-200 answer, then checks that the table holds one CDR per event answered 200 in the
warm-up and "new" phases and that re-delivery stored nothing. Writes
bench/results/webhook-latest.md and .json.

The load generator, PostgreSQL and both workers share the machine; the report records the
load average, the CPU other processes used during each phase, and the CPU time each part
(service workers, PostgreSQL, wrk) spent per request, from which it derives the rate the
machine would sustain with nothing else running on it (CPU-bound ceiling; commits also wait
for the disk, which that ceiling leaves out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import DATA, RESULTS, ROOT, Server, log

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/cdrbench_webhook"
EVENT = ROOT / "tests" / "fixtures" / "portsip" / "newest.event.json"
PATH = "/api/webhooks/portsip"

# Each wrk thread numbers its events from its own range: cdr_id = <prefix><tid * 10^9 + n>, so
# no two requests of a run carry the same event unless the phase re-delivers on purpose. Built
# as text: LuaJIT's numbers are doubles, exact only up to 2^53.
LUA = r"""
local head = %(head)s
local middle = %(middle)s
local tail = %(tail)s
local prefix = "%(prefix)s"
local redeliver = %(redeliver)s
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer %(token)s"
wrk.headers["Content-Type"] = "application/json"
%(threads_lua)s
function init(args)
  n = 0
  non200 = 0
  created = 0
  duplicates = 0
  first_bad = ""
end
function request()
  n = n + 1
  local seq = n
  -- wrk calls request() once on the first thread to check the script and never sends that
  -- one, so an earlier phase's sequence number 1 may be missing: re-deliver from 2.
  if redeliver > 0 then seq = (n - 1) %% redeliver + 2 end
  local id = prefix .. string.format("%%d", tid * 1000000000 + seq)
  return wrk.format(nil, "%(path)s", nil, head .. id .. middle .. id .. tail)
end
function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 300) end
  elseif string.find(body, '"created":1', 1, true) then
    created = created + 1
  elseif string.find(body, '"duplicates":1', 1, true) then
    duplicates = duplicates + 1
  end
end
function done(summary, latency, requests)
  local bad = 0
  local new = 0
  local dup = 0
  local sample = ""
  for _, t in ipairs(threads) do
    bad = bad + t:get("non200")
    new = new + t:get("created")
    dup = dup + t:get("duplicates")
    local fb = t:get("first_bad")
    if sample == "" and fb ~= nil then sample = fb end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"err_connect":%%d,"err_read":%%d,"err_write":%%d,"err_timeout":%%d,"non200":%%d,' ..
    '"created":%%d,"duplicates":%%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect, e.read, e.write, e.timeout, bad, new, dup))
  io.write("BENCHBAD " .. string.gsub(sample, "[\r\n]", " ") .. "\n")
end
"""


def lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lua_script(name: str, token: str, prefix: str, redeliver: int) -> Path:
    # cdr_id first, so the id comes before the Call-ID in the text.
    event = {"cdr_id": "CDRID", **json.loads(EVENT.read_text())}
    event["call_id"] = "bench-CALLID"
    text = json.dumps(event, separators=(",", ":"))
    head, rest = text.split("CDRID", 1)
    middle, tail = rest.split("CALLID", 1)
    script = LUA % {
        "threads_lua": common.WRK_THREADS_LUA,
        "head": lua_str(head),
        "middle": lua_str(middle),
        "tail": lua_str(tail),
        "prefix": prefix,
        "redeliver": redeliver,
        "token": token,
        "path": PATH,
    }
    path = DATA / "lua" / f"webhook-{name}.lua"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    return path


def run_wrk(server: Server, script: Path, seconds: int, args: argparse.Namespace) -> dict:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--timeout=10s"]
    cmd += ["-s", str(script), server.url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    result: dict = {"cmd": " ".join(cmd)}
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result.update(json.loads(line[len("BENCHJSON ") :]))
        elif line.startswith("BENCHBAD "):
            result["first_bad"] = line[len("BENCHBAD ") :].strip()
    if "requests" not in result:
        raise SystemExit(f"wrk failed: {out.stdout}\n{out.stderr}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    errors = ("err_connect", "err_read", "err_write", "err_timeout")
    result["failed"] = result["non200"] + sum(result[k] for k in errors)
    return result


def cpu_seconds(server: Server, database_url: str) -> dict[str, float]:
    """CPU time so far of the gunicorn workers, PostgreSQL's processes, and wrk (children)."""
    hz = os.sysconf("SC_CLK_TCK")
    with common.pg_connect(database_url) as c:
        pg_pids = [
            r[0]
            for r in c.execute(
                "SELECT pid FROM pg_stat_activity WHERE (datname = %s OR backend_type <> "
                "'client backend') AND pid <> pg_backend_pid()",
                (common.db_name(database_url),),
            ).fetchall()
        ]
        postmaster = common.postmaster_pid(c)
    children = os.times()
    # The gunicorn master and the postmaster count their exited children: a phase in which
    # workers recycle (max_requests) keeps the CPU of the workers and backends that ended.
    service = common.cpu_ticks(server.pid, reaped_children=True)
    service += sum(common.cpu_ticks(p) for p in server.workers())
    database = sum(common.cpu_ticks(p) for p in pg_pids)
    if postmaster is not None:
        database += common.cpu_ticks(postmaster, reaped_children=True)
    return {
        "service": service / hz,
        "database": database / hz,
        "wrk": children.children_user + children.children_system,
    }


def phase(
    name: str,
    server: Server,
    token: str,
    prefix: str,
    redeliver: int,
    seconds: int,
    args: argparse.Namespace,
    meter: common.CpuMeter,
) -> dict:
    script = lua_script(name, token, prefix, redeliver)
    before = meter.snapshot()
    cpu_before = cpu_seconds(server, args.database_url)
    result = run_wrk(server, script, seconds, args)
    cpu_after = cpu_seconds(server, args.database_url)
    result["foreign_cpu_pct"] = meter.foreign_pct(before, meter.snapshot())
    result["loadavg"] = os.getloadavg()[0]
    # CPU per request of each part: what the machine would sustain with nothing else on it.
    for part in ("service", "database", "wrk"):
        spent = cpu_after[part] - cpu_before[part]
        result[f"cpu_ms_{part}"] = spent * 1000 / max(result["requests"], 1)
    per_request = sum(result[f"cpu_ms_{p}"] for p in ("service", "database", "wrk"))
    result["cpu_bound_rps"] = (os.cpu_count() or 1) * 1000 / per_request if per_request else 0
    log(
        f"{name}: {result['requests']:,} requests, {result['rps']:,.0f} req/s, "
        f"p50 {result['p50_us'] / 1000:.1f} ms, p99 {result['p99_us'] / 1000:.1f} ms, "
        f"{result['failed']} failed, other processes {result['foreign_cpu_pct']:.0f}% CPU; "
        f"CPU per request: service {result['cpu_ms_service']:.2f} ms, PostgreSQL "
        f"{result['cpu_ms_database']:.2f} ms, wrk {result['cpu_ms_wrk']:.2f} ms"
    )
    return result


def settled_count(database_url: str, timeout: float = 60) -> int:
    """The number of stored CDRs once it has stopped changing for a second (a worker starved
    of CPU by other load may still be finishing a request wrk has stopped waiting for)."""
    deadline = time.monotonic() + timeout
    with common.pg_connect(database_url) as c:
        last = -1
        while True:
            now = int(c.execute("SELECT count(*) FROM cdrs_cdr").fetchone()[0])
            if now == last or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=5, help="seconds per measured phase")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    p.add_argument(
        "--database-url", default=os.environ.get("BENCH_WEBHOOK_DATABASE_URL", DEFAULT_DB)
    )
    p.add_argument("--port", type=int, default=8931)
    p.add_argument("--output", default=str(RESULTS / "webhook-latest.md"))
    p.add_argument(
        "--token-domain",
        metavar="DOMAIN",
        help="a tenant's token, limited to DOMAIN (the event's callee_domain is "
        "acme.example.com); default: a token without domain limit",
    )
    args = p.parse_args()

    url = args.database_url
    env = common.service_env(url)
    log(f"re-creating the database {common.db_name(url)}")
    common.ensure_database(url, recreate=True)
    common.manage(["migrate", "--no-input", "-v", "0"], env)
    if args.token_domain:
        out = common.manage(
            ["create_token", "bench", "--scope", "write", "--domain", args.token_domain], env
        )
        token = out.strip().splitlines()[-1].strip()
    else:
        token = common.mint_token(env)
    meta = {
        "date": common.now_utc(),
        "command": common.command_line(),
        "machine": common.machine_info(),
        "revision": common.git_revision(),
        "gunicorn": common.gunicorn_settings(env, args.workers),
        "versions": common.versions(url),
    }
    # 19-digit ids below 2^63, like PortSIP's snowflakes: 90000000<phase><tid><9 digits>.
    server = Server(
        "webhook-service", "cdrservice.wsgi", common.free_port(args.port), env, args.workers
    )
    meter = common.CpuMeter([server], url)
    try:
        warm = phase("warm-up", server, token, "900000000", 0, 1, args, meter)
        new = phase("new", server, token, "900000001", 0, args.duration, args, meter)
        stored_after_new = settled_count(url)  # the requests still in flight finish first
        # Re-send, over and over, events each thread stored in the "new" phase: its first
        # `stored_each` (half its share, so every one of them was surely sent).
        stored_each = max(1, new["requests"] // (2 * args.threads))
        # Every event of the run has the same start time (one fixture), so until statistics
        # say so the planner may look duplicates up by started_at and filter thousands of
        # rows (2.4 ms) instead of using the (natural_key, started_at) key (0.03 ms). A real
        # table's calls spread over time and autovacuum keeps statistics: analyze first.
        with common.pg_connect(url) as c:
            c.execute("ANALYZE cdrs_cdr")
        again = phase(
            "re-delivered", server, token, "900000001", stored_each, args.duration, args, meter
        )
        stored = settled_count(url)
    finally:
        server.stop()
        meter.close()
    with common.pg_connect(url) as c:
        dead = c.execute("SELECT count(*) FROM cdrs_portsip_dead_letter").fetchone()[0]
    answered = warm["created"] + new["created"]
    # Every answer says what became of its event: each new one created, each re-delivered
    # one a duplicate. wrk does not see the answers to the requests still in flight when a
    # phase stops (at most one per connection), but the service completes them.
    exact = (
        new["created"] == new["requests"] - new["failed"]
        and again["duplicates"] == again["requests"] - again["failed"]
        and again["created"] == 0
        and answered <= stored_after_new <= answered + 2 * args.connections
        and dead == 0
    )
    log(
        f"answers: new {new['created']:,} created of {new['requests']:,}; re-delivered "
        f"{again['duplicates']:,} duplicates and {again['created']} created of "
        f"{again['requests']:,}; {stored:,} CDRs stored, {dead} dead letters"
    )

    target = 1000
    lines = [
        "# cdrservice PortSIP webhook benchmark",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- code: commit {meta['revision']}",
        f"- machine: {meta['machine']['nproc']} CPUs ({meta['machine']['cpu']}), "
        f"{meta['machine']['memory']} RAM, **shared**: wrk, PostgreSQL and the service on the "
        "same CPUs, with other people's work running",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- server: gunicorn -c gunicorn.conf.py cdrservice.wsgi: {meta['gunicorn']}",
        f"- load: wrk -t{args.threads} -c{args.connections}, one `call_cdr` event "
        f"({len(EVENT.read_bytes()):,} bytes, 2 call_targets) per POST, Bearer token"
        + (f" limited to {args.token_domain}" if args.token_domain else ""),
        "",
        "| phase | seconds | requests | req/s | p50 | p90 | p99 | failed | other processes' CPU "
        "| load avg | CPU ms/request: service / PostgreSQL / wrk | CPU-bound ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("new events (insert)", new), ("re-delivered (duplicates)", again)):
        lines.append(
            f"| {name} | {r['duration_us'] / 1e6:.1f} | {r['requests']:,} | {r['rps']:,.0f} | "
            f"{r['p50_us'] / 1000:.1f} ms | {r['p90_us'] / 1000:.1f} ms | "
            f"{r['p99_us'] / 1000:.1f} ms | {r['failed']} | {r['foreign_cpu_pct']:.0f}% | "
            f"{r['loadavg']:.2f} | {r['cpu_ms_service']:.2f} / {r['cpu_ms_database']:.2f} / "
            f"{r['cpu_ms_wrk']:.2f} | {r['cpu_bound_rps']:,.0f} req/s |"
        )
    lines += [
        "",
        f"Answers: every new event `created` ({new['created']:,} of {new['requests']:,}), "
        f"every re-delivered one a `duplicate` ({again['duplicates']:,} of "
        f"{again['requests']:,}, {again['created']} created). Table: {stored:,} CDRs for "
        f"{answered:,} `created` answers seen (wrk misses the answers to the up to "
        f"{2 * args.connections} requests in flight when the warm-up and the new phase stop), "
        f"{dead} dead letters: {'one CDR per event' if exact else '**MISMATCH**'}.",
        "",
        f"Target ≥ {target:,} new events/s: "
        f"{'PASS' if new['rps'] >= target and new['failed'] == 0 else '**FAIL**'} "
        f"({new['rps']:,.0f}/s).",
        "",
    ]
    report = "\n".join(lines)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"meta": meta, "warm_up": warm, "new": new, "redelivered": again, "stored": stored},
            indent=1,
            default=str,
        )
    )
    print()
    print(report)


if __name__ == "__main__":
    main()
