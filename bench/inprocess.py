"""Per-request Python cost of the read scenarios, in process, without HTTP.

Calls the production WSGI application (``cdrservice.wsgi.application``) with a WSGI environ
per request, as gunicorn would, against the benchmark database, and prints per scenario the
wall time and the CPU time of this process per request (the CPU time excludes PostgreSQL's
work, which runs in another process). With ``--floor`` it does the same to bench/floor.py,
the framework-free floor, for the difference that is Django's and DRF's. ``--profile S``
prints a cProfile of scenario S instead.

    .venv/bin/python bench/inprocess.py [--database-url URL] [--requests N] [--floor]
                                        [--only S2,S5] [--profile S5]

It needs a database loaded by bench/run.py (``--skip-load`` is implied). Not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import io
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

SCENARIOS = ("S1", "S2", "S3", "S5", "S7")


def environ(path: str, token: str) -> dict:
    path_info, _, query = path.partition("?")
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": unquote(path_info),
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8887",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8887",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def call(app, path: str, token: str) -> int:
    status: list[str] = []
    body = app(environ(path, token), lambda s, h, exc_info=None: status.append(s))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/cdrbench")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--only", default=",".join(SCENARIOS))
    p.add_argument("--floor", action="store_true", help="also measure bench/floor.py")
    p.add_argument("--profile", metavar="S", help="cProfile one scenario (service)")
    args = p.parse_args()

    env = common.service_env(args.database_url)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cdrservice.settings")
    token = common.mint_token(env)

    rows = run._row_count(args.database_url)
    inputs = run.sample_inputs(args.database_url, rows)
    random.seed(1)

    sys.path.insert(0, str(common.ROOT))
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
