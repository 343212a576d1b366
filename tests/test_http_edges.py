"""Slow clients, HTTP edges and proxy headers, against gunicorn as deployed (gunicorn.conf.py).

Every test here talks to a real gunicorn subprocess over real sockets.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import orjson
import pytest

from tests.factories import cdr_payload
from tests.test_ops import gunicorn, manage, production_env

EXPORT_ROWS = 12_000  # ~8 MB of NDJSON: far more than loopback socket buffers hold


def seeded_env(request, tmp_path: Path, database: str | None, rows: int, **overrides: str):
    env = production_env(tmp_path, LOG_LEVEL="WARNING", **overrides)
    if database:
        env["DATABASE_URL"] = request.getfixturevalue(database)
    assert manage("migrate", "--no-input", env=env).returncode == 0
    seeded = manage("seed_demo", "--rows", str(rows), env=env)
    assert seeded.returncode == 0, seeded.stderr
    token = next(w for w in seeded.stdout.split() if w.startswith("cdr_"))
    return env, token


def address(base: str) -> tuple[str, int]:
    url = urlsplit(base)
    assert url.hostname and url.port
    return url.hostname, url.port


def raw_exchange(base: str, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes, float]:
    """Send ``data`` as is; (status, headers, body, seconds until the answer was complete)."""
    started = time.monotonic()
    with socket.create_connection(address(base), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return (*parse_response(received), time.monotonic() - started)


def parse_response(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def contract_error(body: bytes) -> dict:
    errors = orjson.loads(body)["errors"]
    assert len(errors) == 1 and set(errors[0]) == {"code", "message", "detail"}
    return errors[0]


@contextmanager
def trickling_client(base: str, stop: threading.Event) -> Iterator[None]:
    """A client that sends a request head one short header line every 0.3 s, never ending it."""
    sock = socket.create_connection(address(base), timeout=5)

    def trickle() -> None:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        n = 0
        while not stop.wait(0.3):
            n += 1
            try:
                sock.sendall(b"X-Slow-%d: 1\r\n" % n)
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


@contextmanager
def stalled_export(base: str, token: str) -> Iterator[socket.socket]:
    """A client that asks for the whole export and then does not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.settimeout(5)
    sock.connect(address(base))
    sock.sendall(
        b"GET /api/cdrs/export?format=ndjson HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    try:
        yield sock
    finally:
        sock.close()


def best_latency(base: str, path: str, token: str, tries: int = 5) -> float:
    """The fastest of a few complete 200 answers (seconds); 99 when none came within 3 s."""
    best = 99.0
    for _ in range(tries):
        conn = http.client.HTTPConnection(*address(base), timeout=3)
        started = time.monotonic()
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                best = min(best, time.monotonic() - started)
        except OSError:
            pass
        finally:
            conn.close()
        if best < 0.2:
            break
    return best


# --- item 3: slow clients do not take the service down ------------------------------------


@pytest.mark.parametrize(
    "database",
    [None, pytest.param("empty_postgresql", marks=pytest.mark.postgresql)],
    ids=["sqlite", "postgresql"],
)
def test_others_are_answered_within_a_second_while_slow_clients_hold_connections(
    request, tmp_path, database
):
    env, token = seeded_env(request, tmp_path, database, EXPORT_ROWS)
    with gunicorn(env, tmp_path, workers=2) as base:
        conn = http.client.HTTPConnection(*address(base), timeout=10)
        conn.request("GET", "/api/cdrs?top=1", headers={"Authorization": f"Bearer {token}"})
        cdr_id = orjson.loads(conn.getresponse().read())["items"][0]["id"]
        conn.close()
        with ExitStack() as held:
            for _ in range(8):
                held.enter_context(trickling_client(base, threading.Event()))
            for _ in range(4):
                held.enter_context(stalled_export(base, token))
            time.sleep(1.5)  # exports fill their socket buffers and block; heads keep trickling
            healthz = best_latency(base, "/healthz", token)
            detail = best_latency(base, f"/api/cdrs/{cdr_id}", token)
    assert healthz < 1.0, f"/healthz took {healthz:.2f} s"
    assert detail < 1.0, f"detail took {detail:.2f} s"


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(request, tmp_path):
    # One thread for long requests: while the stalled export holds it, no other export runs.
    env, token = seeded_env(
        request, tmp_path, None, EXPORT_ROWS, GUNICORN_SEND_TIMEOUT="2", GUNICORN_THREADS="1"
    )
    other_export = "/api/cdrs/export?filter=" + quote("caller eq 'nobody'")
    with gunicorn(env, tmp_path, workers=1) as base, stalled_export(base, token):
        time.sleep(1)
        # Short requests run on the worker's loop, not in the thread the export holds.
        assert best_latency(base, "/healthz", token, tries=1) < 1
        assert best_latency(base, other_export, token, tries=1) > 1  # held by the export
        deadline = time.monotonic() + 30
        while best_latency(base, other_export, token, tries=1) > 1:  # 3 s per try
            assert time.monotonic() < deadline, "the stalled export kept its thread"


@pytest.fixture(
    scope="module",
    params=["cdrservice.gunicorn_loop.LoopWorker", "cdrservice.gunicorn_worker.ThreadWorker"],
    ids=["loop-worker", "thread-worker"],
)
def edge_server(request, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """gunicorn as deployed (the default worker, then the thread worker it replaced), with a
    2 s read deadline and a 64 KiB body limit; (base, token)."""
    tmp_path = tmp_path_factory.mktemp("edges")
    env = production_env(
        tmp_path,
        GUNICORN_WORKER_CLASS=request.param,
        LOG_LEVEL="WARNING",
        GUNICORN_REQUEST_READ_TIMEOUT="2",
        CDR_MAX_BODY_BYTES="65536",
    )
    assert manage("migrate", "--no-input", env=env).returncode == 0
    seeded = manage("seed_demo", "--rows", "10", env=env)
    assert seeded.returncode == 0, seeded.stderr
    token = next(w for w in seeded.stdout.split() if w.startswith("cdr_"))
    with gunicorn(env, tmp_path, workers=1) as base:
        yield base, token


def test_a_head_that_never_ends_is_cut_off_with_408(edge_server):
    base, _ = edge_server
    stop = threading.Event()
    with socket.create_connection(address(base), timeout=10) as sock:

        def trickle() -> None:  # one header line every 0.25 s: never idle, never done
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            n = 0
            while not stop.wait(0.25):
                n += 1
                try:
                    sock.sendall(b"X-Slow-%d: 1\r\n" % n)
                except OSError:
                    return

        started = time.monotonic()
        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        received = b""
        try:
            while chunk := sock.recv(65536):  # until the server closes the connection
                received += chunk
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - started
        stop.set()
        thread.join(timeout=5)
    status, headers, body = parse_response(received)
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert contract_error(body)["code"] == "REQUEST_TIMEOUT"
    assert 1.5 < elapsed < 6


def test_a_body_shorter_than_its_content_length_gets_408_not_a_held_thread(edge_server):
    base, token = edge_server
    head = (
        "POST /api/cdrs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(address(base), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + b'{"call_id": ')
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        elapsed = time.monotonic() - started
    status, _, body = parse_response(received)
    assert status == 408
    assert contract_error(body)["code"] == "REQUEST_TIMEOUT"
    assert elapsed < 6


def test_a_declared_length_over_the_limit_is_413_before_any_body(edge_server):
    base, token = edge_server
    head = (
        "POST /api/cdrs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 1000000000\r\n\r\n"
    )
    with socket.create_connection(address(base), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head.encode())  # and no body at all
        sock.settimeout(5)
        received = sock.recv(65536)
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            received += sock.recv(65536)  # the body may come in a segment of its own
        elapsed = time.monotonic() - started
    status, _, body = parse_response(received)
    assert status == 413
    assert contract_error(body)["code"] == "PAYLOAD_TOO_LARGE"
    assert elapsed < 1.5


def chunked_post(base: str, token: str, body: bytes, pause: float = 0.0) -> tuple[int, bytes]:
    """POST ``body`` in 1,000-byte chunks, ``pause`` seconds before each."""
    conn = http.client.HTTPConnection(*address(base), timeout=10)
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]

    def paced() -> Iterator[bytes]:
        for chunk in chunks:
            time.sleep(pause)
            yield chunk

    conn.request(
        "POST",
        "/api/cdrs",
        body=paced(),
        encode_chunked=True,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
    )
    response = conn.getresponse()
    result = response.status, response.read()
    conn.close()
    return result


def test_a_chunked_post_is_read_and_stored(edge_server):
    base, token = edge_server
    payload = cdr_payload(call_id="chunked-post-1")
    status, body = chunked_post(base, token, orjson.dumps(payload))
    assert status == 201, body
    created = orjson.loads(body)
    assert created["created"] == 1
    conn = http.client.HTTPConnection(*address(base), timeout=10)
    conn.request(
        "GET", f"/api/cdrs/{created['ids'][0]}", headers={"Authorization": f"Bearer {token}"}
    )
    stored = orjson.loads(conn.getresponse().read())["items"][0]
    assert stored["call_id"] == "chunked-post-1"


def test_a_chunked_post_over_the_limit_is_413(edge_server):
    base, token = edge_server
    status, body = chunked_post(base, token, b"[" + b" " * 70_000 + b"]")
    assert status == 413
    assert contract_error(body)["code"] == "PAYLOAD_TOO_LARGE"


def test_a_slow_upload_over_the_limit_still_reads_its_413(edge_server):
    """A client still sending its body when the server has answered 413 reads the answer,
    not a reset: the server shuts its end and reads on, discarding, for a while before it
    closes (the loop worker's lingering close). Closing at once made this client's next
    send fail with a broken pipe in 39 of 40 tries."""
    base, token = edge_server
    status, body = chunked_post(base, token, b"[" + b" " * 70_000 + b"]", pause=0.002)
    assert status == 413
    assert contract_error(body)["code"] == "PAYLOAD_TOO_LARGE"


def test_the_longest_contract_filter_reaches_the_api(edge_server):
    base, token = edge_server
    # 2,000 characters of 4-byte UTF-8: 24,000 bytes once percent-encoded.
    literal = "\U0001d11e" * (2000 - len("contains(caller,'')"))
    query = quote(f"contains(caller,'{literal}')", safe="")
    assert len(query) > 20_000
    status, headers, body, _ = raw_exchange(
        base,
        f"GET /api/cdrs?filter={query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status == 200, body[:300]
    assert orjson.loads(body)["items"] == []
    assert "x-request-id" in headers  # answered by the application, not by gunicorn


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"GET /healthz?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            431,
            "HEADERS_TOO_LARGE",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n",
            431,
            "HEADERS_TOO_LARGE",
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, "VALIDATE_FAILED"),
        (b"\x16\x03\x01 not http\r\n\r\n", 400, "VALIDATE_FAILED"),
    ],
    ids=["request-line-over-cap", "header-over-limit", "bad-header-name", "not-http"],
)
def test_what_gunicorn_refuses_gets_the_contract_body(edge_server, request_bytes, status, code):
    base, _ = edge_server
    got, headers, body, _ = raw_exchange(base, request_bytes)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert contract_error(body)["code"] == code


# --- item 11: proxy headers only from trusted proxies -------------------------------------


@pytest.mark.parametrize(
    ("trusted", "expected"), [(None, 301), ("127.0.0.1", 401)], ids=["untrusted", "trusted"]
)
def test_x_forwarded_proto_counts_only_from_a_trusted_proxy(tmp_path, trusted, expected):
    env = production_env(tmp_path, SECURE_SSL_REDIRECT="true", CDR_TRUSTED_PROXIES=trusted)
    assert manage("migrate", "--no-input", env=env).returncode == 0
    with gunicorn(env, tmp_path) as base:
        conn = http.client.HTTPConnection(*address(base), timeout=10)
        conn.request("GET", "/api/cdrs", headers={"X-Forwarded-Proto": "https"})
        response = conn.getresponse()
        response.read()
        conn.close()
        # Health probes are never redirected, proxy or not.
        conn = http.client.HTTPConnection(*address(base), timeout=10)
        conn.request("GET", "/healthz")
        probe = conn.getresponse()
        probe.read()
        conn.close()
    assert response.status == expected
    if expected == 301:
        assert response.getheader("Location", "").startswith("https://")
    assert probe.status == 200
