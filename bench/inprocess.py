"""Per-request Python cost of the read scenarios, in process, without HTTP.

Calls the production WSGI application (``cdrservice.wsgi.application``) with a WSGI environ
per request, as gunicorn would, against the benchmark database, and prints per scenario the
wall time and the CPU time of this process per request (the CPU time excludes PostgreSQL's
work, which runs in another process). With ``--floor`` it does the same to bench/floor.py,
the framework-free floor, for the difference that is Django's and DRF's. ``--profile S``
prints a cProfile of scenario S instead.

``--webhook`` measures single-event PortSIP webhook POSTs instead (each one a new CDR,
with its own cdr_id and Call-ID, as bench/webhook.py sends them), against the database
bench/webhook.py made (default cdrbench_webhook); with ``--profile W`` it profiles them.

    .venv/bin/python bench/inprocess.py [--database-url URL] [--requests N] [--floor]
                                        [--only S2,S5] [--profile S5]
    .venv/bin/python bench/inprocess.py --webhook [--requests N] [--profile W]

It needs a database loaded by bench/run.py (``--skip-load`` is implied), or for
``--webhook`` one bench/webhook.py has migrated. Not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import sys
import time
from pathlib import Path
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import run
import webhook

SCENARIOS = ("S1", "S2", "S3", "S5", "S7")


def environ(path: str, token: str, body: bytes | None = None) -> dict:
    path_info, _, query = path.partition("?")
    extra = {}
    if body is not None:
        extra = {"CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body))}
    return {
        **extra,
        "REQUEST_METHOD": "GET" if body is None else "POST",
        "PATH_INFO": unquote(path_info),
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8887",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8887",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body or b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def call(app, path: str, token: str, post: bytes | None = None) -> int:
    status: list[str] = []
    body = app(environ(path, token, post), lambda s, h, exc_info=None: status.append(s))
    for _chunk in body:
        pass
    if hasattr(body, "close"):
        body.close()
    return int(status[0][:3])


def measure(app, paths: list[str], token: str, n: int) -> tuple[float, float]:
    for p in paths[:50]:  # warm: connections, prepared statements, token cache
        assert call(app, p, token) == 200, p
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
        call(app, paths[i % len(paths)], token)
    return (time.perf_counter() - wall0) / n * 1e3, (time.process_time() - cpu0) / n * 1e3


def webhook_events(n: int) -> list[bytes]:
    """``n`` distinct call_cdr events (cdr_id and Call-ID unique to this run)."""
    event = json.loads(webhook.EVENT.read_text())
    run_tag = random.SystemRandom().randrange(10**6)
    out = []
    for i in range(n):
        event["cdr_id"] = str(4 * 10**17 + run_tag * 10**8 + i)
        event["call_id"] = f"inprocess-{run_tag}-{i}"
        out.append(json.dumps(event).encode())
    return out


def measure_webhook(app, token: str, n: int, profile: bool) -> None:
    events = webhook_events(n + 50)
    for body in events[:50]:
        assert call(app, webhook.PATH, token, body) == 200
    prof = cProfile.Profile() if profile else None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    for body in events[50:]:
        call(app, webhook.PATH, token, body)
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(60)
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        return
    wall, cpu = (time.perf_counter() - wall0) / n * 1e3, (time.process_time() - cpu0) / n * 1e3
    print(f"webhook call_cdr, {n} new events: {wall:.3f} ms wall, {cpu:.3f} ms CPU per request")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/cdrbench")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--only", default=",".join(SCENARIOS))
    p.add_argument("--floor", action="store_true", help="also measure bench/floor.py")
    p.add_argument("--profile", metavar="S", help="cProfile one scenario (service)")
    p.add_argument("--webhook", action="store_true", help="single-event webhook POSTs")
    args = p.parse_args()
    if args.webhook and args.database_url == p.get_default("database_url"):
        args.database_url = webhook.DEFAULT_DB

    env = common.service_env(args.database_url)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cdrservice.settings")
    token = common.mint_token(env)
    sys.path.insert(0, str(common.ROOT))
    if args.webhook:
        from cdrservice.wsgi import application

        measure_webhook(application, token, args.requests, profile=bool(args.profile))
        return

    rows = run._row_count(args.database_url)
    inputs = run.sample_inputs(args.database_url, rows)
    random.seed(1)

    from cdrservice.wsgi import application as service

    apps = {"service": service}
    if args.floor:
        import floor

        apps["floor"] = floor.application
    names = [s for s in args.only.split(",") if s]
    if args.profile:
        paths = run.scenario_paths(args.profile, inputs, 0, None)
        measure(service, paths, token, 200)
        prof = cProfile.Profile()
        prof.enable()
        for i in range(args.requests):
            call(service, paths[i % len(paths)], token)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    print(f"{rows:,} rows, {args.requests} requests per scenario; ms per request")
    print(f"{'scenario':8} " + " ".join(f"{a + ' wall':>13} {a + ' cpu':>12}" for a in apps))
    for name in names:
        paths = run.scenario_paths(name, inputs, 0, None)
        cells = []
        for app in apps.values():
            wall, cpu = measure(app, paths, token, args.requests)
            cells.append(f"{wall:13.3f} {cpu:12.3f}")
        print(f"{name:8} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
