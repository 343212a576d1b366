"""Running it for real: health and readiness, deploy checks, metrics, API docs, static files.

Whatever needs production settings (DEBUG off, another database, several gunicorn workers)
runs in a subprocess with its own environment, bounded in time and always cleaned up.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.db import reset_queries
from django.test import Client, override_settings
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import cdr_payload, create_cdrs
from tests.helpers import AllQueries

BASE_DIR = Path(settings.BASE_DIR)
PYTHON = sys.executable
SUBPROCESS_TIMEOUT = 120


# --- helpers ---------------------------------------------------------------------------


def production_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    """A clean production-like environment: DEBUG off, a real SECRET_KEY, a scratch DB."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "DJANGO_SETTINGS_MODULE": "cdrservice.settings",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'scratch.sqlite3'}",
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run([PYTHON, "manage.py", *args], env)


# Calls a URL through Django's test client inside a subprocess; prints one marked JSON line.
_CALL = """
import orjson
from django.test import Client
r = Client().get({path!r})
print("RESULT " + orjson.dumps({{"status": r.status_code, "body": r.content.decode()}}).decode())
"""


def call_in_subprocess(path: str, env: dict[str, str]) -> tuple[dict, str]:
    """(``{"status", "body"}``, all output) of GET ``path`` with the settings of ``env``."""
    env = {**env, "ALLOWED_HOSTS": "testserver"}
    done = manage("shell", "--no-imports", "-c", _CALL.format(path=path), env=env)
    output = done.stdout + done.stderr
    marked = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and marked, output
    return orjson.loads(marked[-1].removeprefix("RESULT ")), output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@contextmanager
def gunicorn(env: dict[str, str], tmp_path: Path, workers: int = 1) -> Iterator[str]:
    """A real gunicorn (gunicorn.conf.py) on a free port; yields its base URL."""
    port = free_port()
    env = {**env, "BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers)}
    log = (tmp_path / f"gunicorn-{port}.log").open("w")
    process = subprocess.Popen(
        [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "cdrservice.wsgi"],
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / f"gunicorn-{port}.log").read_text()
            try:
                if http_get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer within 30 s"
            time.sleep(0.2)
        yield base
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        log.close()


def scrape(client: Client, **extra: Any) -> dict[tuple[str, tuple], float]:
    """/metrics as ``{(sample name, sorted labels): value}``."""
    response = client.get("/metrics", **extra)
    assert response.status_code == 200
    return parse_metrics(response.content.decode())


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def requests_total(samples: dict, endpoint: str, status: str = "200", method: str = "GET") -> float:
    labels = (("endpoint", endpoint), ("method", method), ("status", status))
    return samples.get(("cdr_http_requests_total", labels), 0.0)


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def error_of(body: str | bytes) -> dict:
    errors = orjson.loads(body)["errors"]
    assert len(errors) == 1
    return errors[0]


# --- /healthz and /readyz ----------------------------------------------------------------


def test_healthz_answers_without_a_token_or_a_database():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert orjson.loads(response.content) == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_200_on_a_migrated_database():
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert orjson.loads(response.content) == {"status": "ready"}


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path):
    password = "pw-" + secrets.token_hex(8)
    env = production_env(tmp_path, DATABASE_URL=f"postgres://postgres:{password}@127.0.0.1:1/x")
    result, output = call_in_subprocess("/readyz", env)
    assert result["status"] == 503
    error = error_of(result["body"])
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert "database" in error["message"]
    assert "Traceback" not in result["body"] and "SELECT" not in result["body"]
    assert password not in output


@pytest.fixture
def empty_sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'empty.sqlite3'}"


@pytest.mark.parametrize(
    "database",
    ["empty_sqlite", pytest.param("empty_postgresql", marks=pytest.mark.postgresql)],
)
def test_readyz_is_503_until_migrations_are_applied(request, tmp_path, database):
    env = production_env(tmp_path, DATABASE_URL=request.getfixturevalue(database))
    result, _ = call_in_subprocess("/readyz", env)
    assert result["status"] == 503
    error = error_of(result["body"])
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert "migration" in error["message"]

    migrated = manage("migrate", "--no-input", "-v", "0", env=env)
    assert migrated.returncode == 0, migrated.stderr
    result, _ = call_in_subprocess("/readyz", env)
    assert (result["status"], orjson.loads(result["body"])) == (200, {"status": "ready"})


# --- production settings -----------------------------------------------------------------


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = production_env(tmp_path, ALLOWED_HOSTS="cdr.example.com")
    done = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


@pytest.mark.parametrize(
    "overrides",
    [{"SECRET_KEY": None}, {"SECRET_KEY": ""}, {"SECRET_KEY": None, "DEBUG": "false"}],
    ids=["unset", "empty", "debug-false"],
)
def test_refuses_to_start_without_secret_key(tmp_path, overrides):
    pepper = "pepper-" + secrets.token_hex(8)
    db_password = "dbpw-" + secrets.token_hex(8)
    env = production_env(
        tmp_path,
        CDR_TOKEN_PEPPER=pepper,
        DATABASE_URL=f"postgres://cdr:{db_password}@127.0.0.1:1/cdr",
        **overrides,
    )
    done = manage("check", env=env)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert "SECRET_KEY must be set" in last_line
    assert pepper not in output
    assert db_password not in output


def test_gunicorns_app_refuses_to_load_without_secret_key(tmp_path):
    env = production_env(tmp_path, SECRET_KEY=None)
    done = run([PYTHON, "-c", "import cdrservice.wsgi"], env)
    assert done.returncode != 0
    assert "SECRET_KEY must be set" in done.stderr.strip().splitlines()[-1]


def test_migration_commands_run_without_secret_key(tmp_path):
    # They read only the code and the migrations: CI runs `makemigrations --check` bare.
    env = production_env(tmp_path, SECRET_KEY=None)
    done = manage("makemigrations", "--check", "--dry-run", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No changes detected" in done.stdout
    shown = manage("showmigrations", "cdrs", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "0001_initial" in shown.stdout


# --- /metrics ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_count_requests_by_route_name_not_by_path(client_ro):
    create_cdrs(cdr_payload(), cdr_payload())
    listing = orjson.loads(client_ro.get("/api/cdrs").content)
    public_ids = [item["id"] for item in listing["items"]]
    assert len(public_ids) == 2
    before = scrape(Client())
    for public_id in public_ids:
        assert client_ro.get(f"/api/cdrs/{public_id}").status_code == 200
    client_ro.get("/api/cdrs/not-a-real-id")
    client_ro.get("/no/such/page/12345")
    text = Client().get("/metrics").content.decode()
    after = parse_metrics(text)

    assert requests_total(after, "cdr-detail") - requests_total(before, "cdr-detail") == 2
    assert requests_total(after, "cdr-detail", "404") - requests_total(before, "cdr-detail", "404")
    assert requests_total(after, "unmatched", "404") > requests_total(before, "unmatched", "404")
    assert sample(
        after,
        "cdr_http_request_duration_seconds_count",
        endpoint="cdr-detail",
        method="GET",
        status="200",
    ) == requests_total(after, "cdr-detail")
    # In the samples' names and labels, not their values: a duration of 0.0012345... s is
    # no leak (it failed a CI run once).
    labelled = "\n".join(
        line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")
    )
    for leaked in [*public_ids, "not-a-real-id", "12345", "/api/cdrs"]:
        assert leaked not in labelled


@pytest.mark.django_db
def test_metrics_count_the_sql_statements_of_each_request(client_ro):
    create_cdrs(cdr_payload(), cdr_payload(), cdr_payload())
    before = scrape(Client())
    reset_queries()  # the request starts with an empty query log: capture from index 0
    with AllQueries() as captured:
        assert client_ro.get("/api/cdrs", {"top": "2"}).status_code == 200
    expected = len(captured)  # before the next request clears the query log
    after = scrape(Client())
    counted = sample(after, "cdr_db_queries_total", endpoint="cdr-list") - sample(
        before, "cdr_db_queries_total", endpoint="cdr-list"
    )
    assert counted == expected > 0


@pytest.mark.django_db
def test_metrics_count_cdrs_ingested_once_committed(api_client, django_capture_on_commit_callbacks):
    writer = api_client(scopes=("write",))
    batch = {"items": [cdr_payload(), cdr_payload(), cdr_payload()]}

    def ingested() -> float:
        return sample(scrape(Client()), "cdr_cdrs_ingested_total")

    start = ingested()
    with django_capture_on_commit_callbacks(execute=True):
        response = writer.post("/api/cdrs", batch, content_type="application/json")
    assert response.status_code == 201
    assert ingested() - start == 3
    with django_capture_on_commit_callbacks(execute=True):  # all duplicates: nothing new
        response = writer.post("/api/cdrs", batch, content_type="application/json")
    assert orjson.loads(response.content)["duplicates"] == 3
    bad = {"items": [cdr_payload(), cdr_payload(direction="SIDEWAYS")]}
    with django_capture_on_commit_callbacks(execute=True):  # rejected: nothing stored
        assert writer.post("/api/cdrs", bad, content_type="application/json").status_code == 400
    assert ingested() - start == 3


@pytest.mark.parametrize(
    ("remote", "headers", "allowed"),
    [
        ("127.0.0.1", {}, True),
        ("::1", {}, True),
        ("10.20.30.40", {}, True),
        ("172.18.0.5", {}, True),
        ("192.168.1.9", {}, True),
        ("::ffff:10.0.0.7", {}, True),
        ("203.0.113.9", {}, False),
        ("2001:db8::1", {}, False),
        ("172.32.0.1", {}, False),
        # A local proxy relaying a public client: not let through.
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "203.0.113.9"}, False),
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "10.0.0.2, 127.0.0.1"}, True),
        ("127.0.0.1", {"HTTP_FORWARDED": 'for="[2001:db8::1]:4711"'}, False),
        ("127.0.0.1", {"HTTP_FORWARDED": "for=192.168.0.3;proto=http"}, True),
        ("127.0.0.1", {"HTTP_X_REAL_IP": "198.51.100.1"}, False),
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "unknown"}, False),
    ],
)
def test_metrics_only_for_allowed_clients_by_default(remote, headers, allowed):
    response = Client().get("/metrics", REMOTE_ADDR=remote, **headers)
    if allowed:
        assert response.status_code == 200
        assert b"cdr_http_requests_total" in response.content
    else:
        assert response.status_code == 404
        assert b"cdr_" not in response.content


def test_metrics_allow_list_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CDR_METRICS_ALLOW", "203.0.113.0/24, 2001:db8::7")
    client = Client()
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="2001:db8::7").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 404
    assert client.get("/metrics", REMOTE_ADDR="198.51.100.1").status_code == 404


def test_metrics_allow_list_typo_stops_the_service(tmp_path):
    env = production_env(tmp_path, CDR_METRICS_ALLOW="10.0.0.0/8, 10.0.0.300")
    done = run(
        [PYTHON, "-c", "import cdrservice.wsgi"],
        env={**env, "PYTHONPATH": str(BASE_DIR)},
    )
    assert done.returncode != 0
    assert "CDR_METRICS_ALLOW: '10.0.0.300' is not an IP address or CIDR network" in done.stderr


def test_metrics_can_be_turned_off():
    before = scrape(Client())
    with override_settings(CDR_METRICS=False):
        client = Client()
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 404
    after = scrape(Client())
    assert requests_total(after, "healthz") == requests_total(before, "healthz")
    assert requests_total(after, "metrics", "404") == requests_total(before, "metrics", "404")


def healthz_by_worker(multiproc: Path) -> list[float]:
    """The healthz request count in each worker's own file."""
    counts: list[float] = []
    for path in multiproc.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)]):
            counts.extend(
                s.value
                for s in family.samples
                if s.name == "cdr_http_requests_total" and s.labels["endpoint"] == "healthz"
            )
    return counts


def test_metrics_add_up_across_gunicorn_workers(tmp_path):
    multiproc = tmp_path / "prometheus"
    env = production_env(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    with gunicorn(env, tmp_path, workers=2) as base:
        start = requests_total(parse_metrics(http_get(f"{base}/metrics")[2].decode()), "healthz")
        sent = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            # Concurrent requests until both workers have served some (a few rounds at most).
            while sent < 400 and len(healthz_by_worker(multiproc)) < 2:
                statuses = list(pool.map(lambda _: http_get(f"{base}/healthz")[0], range(40)))
                assert statuses == [200] * 40
                sent += 40
        assert len(healthz_by_worker(multiproc)) == 2, "both workers should have served"
        totals = []
        for _ in range(8):
            status, headers, body = http_get(f"{base}/metrics")
            assert status == 200
            assert headers["Content-Type"].startswith("text/plain")
            totals.append(requests_total(parse_metrics(body.decode()), "healthz"))
    # Whichever worker answers the scrape, it reports the requests of all workers.
    assert totals == [start + sent] * 8


def test_metrics_survive_worker_recycling_without_piling_up_files(tmp_path):
    multiproc = tmp_path / "prometheus"
    env = production_env(
        tmp_path,
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        GUNICORN_MAX_REQUESTS="10",  # a new worker every 10 requests
        GUNICORN_MAX_REQUESTS_JITTER="0",
    )
    with gunicorn(env, tmp_path, workers=2) as base:
        start = requests_total(parse_metrics(http_get(f"{base}/metrics")[2].decode()), "healthz")
        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(lambda _: http_get(f"{base}/healthz")[0], range(60)))
        assert statuses == [200] * 60
        # A worker past max_requests stops at its next heartbeat (the loop worker's is 1 s).
        deadline = time.monotonic() + 15
        while not (multiproc / "counter_archive.db").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        totals = [
            requests_total(parse_metrics(http_get(f"{base}/metrics")[2].decode()), "healthz")
            for _ in range(5)
        ]
        # Workers came and went: their counts live on in one archive file per type.
        counter_files = sorted(p.name for p in multiproc.glob("counter_*.db"))
    assert totals == [start + 60] * 5
    assert "counter_archive.db" in counter_files
    assert len(counter_files) <= 3, counter_files  # the archive and the two live workers


@pytest.mark.parametrize(
    "worker_class",
    ["cdrservice.gunicorn_loop.LoopWorker", "cdrservice.gunicorn_worker.ThreadWorker"],
)
def test_keep_alive_clients_lose_no_request_while_workers_recycle(tmp_path, worker_class):
    """Clients that keep their connections open, as a PBX's webhook sender or a billing
    poller does, and reconnect when a response says ``Connection: close``: a worker that
    recycles every 15 requests closes each connection only after announcing it. (The loop
    worker used to close a connection under the client's next request when other
    connections had reached max_requests meanwhile.)"""
    env = production_env(
        tmp_path,
        GUNICORN_WORKER_CLASS=worker_class,
        GUNICORN_MAX_REQUESTS="15",
        GUNICORN_MAX_REQUESTS_JITTER="0",
        LOG_LEVEL="WARNING",
    )

    def client(base: str) -> list[str]:
        outcomes = []
        conn = http.client.HTTPConnection(urlsplit(base).netloc, timeout=10)
        for _ in range(40):
            try:
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                response.read()
                outcomes.append(str(response.status))
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()  # announced: the next request opens a new connection
            except (OSError, http.client.HTTPException) as exc:
                outcomes.append(type(exc).__name__)
                conn.close()
        conn.close()
        return outcomes

    with gunicorn(env, tmp_path, workers=2) as base, ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = [o for found in pool.map(client, [base] * 6) for o in found]
    assert outcomes == ["200"] * 240, sorted(set(outcomes))


@pytest.mark.parametrize(
    "worker_class",
    ["cdrservice.gunicorn_loop.LoopWorker", "cdrservice.gunicorn_worker.ThreadWorker"],
)
def test_a_keep_alive_connection_is_closed_after_its_request_cap(tmp_path, worker_class):
    """A client that never closes its connection is asked to reconnect every
    GUNICORN_KEEPALIVE_MAX_REQUESTS requests (``Connection: close`` on the last one), so
    long-lived clients spread over the workers again after a recycle instead of all staying
    on the worker that booted first."""
    env = production_env(
        tmp_path,
        GUNICORN_WORKER_CLASS=worker_class,
        GUNICORN_KEEPALIVE_MAX_REQUESTS="3",
        LOG_LEVEL="WARNING",
    )
    with gunicorn(env, tmp_path) as base:
        host, port = urlsplit(base).hostname, urlsplit(base).port
        assert port is not None
        request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"

        def answers(count: int) -> tuple[list[str], bytes]:
            """The Connection headers of ``count`` requests sent one after the other on one
            socket, and what the socket gives after the last (b"" once the server closed)."""
            with socket.create_connection((host, port), timeout=10) as sock:
                announced = []
                for _ in range(count):
                    sock.sendall(request)
                    response = http.client.HTTPResponse(sock)
                    response.begin()
                    response.read()
                    assert response.status == 200
                    announced.append((response.getheader("Connection") or "").lower())
                sock.settimeout(1)
                try:
                    after = sock.recv(1)
                except TimeoutError:
                    after = b"(still open)"
                return announced, after

        announced, after = answers(3)
        assert "close" not in announced[:2]
        assert announced[2] == "close"
        assert after == b""  # the server closed its end after announcing it
        # Below the cap the connection stays open, and a new connection counts from 1.
        announced, after = answers(2)
        assert "close" not in announced
        assert after == b"(still open)"


# --- API schema and docs -----------------------------------------------------------------


@pytest.mark.django_db
def test_schema_is_openapi_3_with_the_bearer_scheme(client_ro):
    response = client_ro.get("/api/schema")
    assert response.status_code == 200
    assert response.content.startswith(b"openapi: 3.")  # YAML by default
    response = client_ro.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    schema = orjson.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    paths = {path.rstrip("/"): item for path, item in schema["paths"].items()}
    list_op = paths["/api/cdrs"]["get"]
    assert {"bearerAuth": []} in list_op["security"]


@pytest.mark.django_db
def test_docs_page_loads_only_local_assets(client_ro):
    response = client_ro.get("/api/docs")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert 'id="swagger-ui"' in html
    assets = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith(settings.STATIC_URL if settings.STATIC_URL.startswith("/") else "/")
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a static file here"
    assert not re.search(r"https?://|//cdn|unpkg|jsdelivr", html)


# --- static files ------------------------------------------------------------------------


def test_admin_css_is_served_by_whitenoise_with_debug_off(tmp_path):
    static_root = tmp_path / "static"
    (tmp_path / "ops_settings.py").write_text(
        f"from cdrservice.settings import *  # noqa: F403\nSTATIC_ROOT = {str(static_root)!r}\n"
    )
    env = production_env(tmp_path, DJANGO_SETTINGS_MODULE="ops_settings", PYTHONPATH=str(tmp_path))
    collected = manage("collectstatic", "--no-input", "-v", "0", env=env)
    assert collected.returncode == 0, collected.stderr

    with gunicorn(env, tmp_path) as base:
        status, _, body = http_get(f"{base}/admin/login/")
        assert status == 200
        css = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', body.decode())
        assert css, "the admin should link its CSS under a hashed name"
        status, headers, content = http_get(base + css.group(1))
        assert status == 200
        assert headers["Content-Type"].startswith("text/css")
        assert "immutable" in headers["Cache-Control"]
        assert b"body" in content
        status, headers, _ = http_get(base + css.group(1), {"Accept-Encoding": "gzip"})
        assert (status, headers.get("Content-Encoding")) == (200, "gzip")
        assert http_get(f"{base}/static/admin/css/no-such-file.css")[0] == 404
