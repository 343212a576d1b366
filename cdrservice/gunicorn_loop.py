"""gunicorn worker: connections on an event loop, the (WSGI) Django app run on the loop's thread.

gunicorn.conf.py runs this class by default (``cdrservice.gunicorn_loop.LoopWorker``).

Why: the read benchmark (bench/README.md) found the thread worker's handoffs expensive.
gthread parses each request in a pool thread and hands the connection back to its poller
thread for keep-alive, and every request crosses threads (and the GIL) at least twice. On
2 cores that cost about 0.2 ms a request, as much as the detail query. Measured with wrk
on 1M CDRs (bench/README.md, "Server"):
- detail by id: about 1,000–1,300 req/s under the thread worker, 1,700–1,900 here;
- an asyncio loop handing each request to a thread pool: 1,200–1,300 (the handoff, not
  the parser, is the cost).

How:
- The loop is gunicorn's own ASGI worker (asyncio or uvloop; gunicorn_h1c's C parser when
  installed). It reads each request whole, head and body, before the app sees it. So a slow
  client (trickling headers, a body that never comes) holds a few bytes of buffer, not a
  thread.
- ``WsgiOnLoop`` then calls the WSGI application directly on the loop's thread: no
  handoff. The loop waits for the app, so each request should be short. The API's list,
  detail and ingest requests are milliseconds, and each statement has
  ``CDR_STATEMENT_TIMEOUT_MS`` (default 5 s) as its bound.
- Requests that may run long go to a thread pool of ``GUNICORN_THREADS`` instead
  (``runs_inline``): the export, which streams for minutes, statistics, full-text
  search, and everything outside the API (admin pages, the docs). The loop stays free
  meanwhile. A streamed response is produced in its thread and handed to the loop chunk
  by chunk.
- Each thread keeps its own database connection (Django's are per thread). The loop
  thread's serves every inline request, one after the other.

Bounds and error bodies, as the thread worker (cdrservice.gunicorn_worker) has them:
- From a request's first byte, its head must arrive within
  ``GUNICORN_REQUEST_READ_TIMEOUT`` seconds (408), and then its body within as long again
  (408).
- The head may not exceed ``GUNICORN_MAX_REQUEST_HEAD_BYTES`` (431).
- A client that reads nothing of a response for ``GUNICORN_SEND_TIMEOUT`` seconds is
  dropped.
- Every error the server answers itself carries the API's JSON error body.

Django refuses database calls from a thread that runs an event loop unless
``DJANGO_ALLOW_ASYNC_UNSAFE`` is set (a guard against blocking a loop by mistake). This
worker blocks the loop on purpose, and no coroutine runs meanwhile, so it sets the switch
in its own process.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import logging
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

from gunicorn.asgi import protocol as asgi_protocol
from gunicorn.workers import gasgi

from cdrservice.gunicorn_worker import (
    KEEPALIVE_MAX_REQUESTS,
    MAX_REQUEST_HEAD_BYTES,
    REQUEST_READ_TIMEOUT,
    SEND_TIMEOUT,
    HeadMeter,
    json_error_bytes,
    json_error_response,
)

_log = logging.getLogger("gunicorn.error")
# A streamed response reaches the loop in pieces of about this size (an export yields one
# line at a time: a hop to the loop per line would cost more than the line).
STREAM_PIECE_BYTES = 65536
# After answering a request whose body it did not read to the end (a 413 for a body over the
# limit, a 408), the worker half-closes the connection and reads on, discarding, for up to
# this long and this much, before it closes. Closing with unread input makes the kernel
# reset the connection, and a client still sending its body then gets the reset (a broken
# pipe, seen in tests/test_http_edges.py under load) instead of the JSON error (nginx's
# lingering_close does the same).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 4 * 1024 * 1024
# Paths whose requests run in the thread pool (may take long); everything else under /api/
# runs inline. The list's full-text search can read many rows before its page is full.
_THREAD_PATHS = ("/api/cdrs/export", "/api/cdrs/stats", "/api/schema", "/api/docs")


def runs_inline(environ: dict[str, Any]) -> bool:
    """Whether a request runs on the loop's thread (short by design) or in the pool."""
    path = environ["PATH_INFO"]
    if not path.startswith("/api/") or path.startswith(_THREAD_PATHS):
        return path in ("/healthz", "/metrics")
    return "search=" not in environ["QUERY_STRING"]


def _latin1(value: bytes) -> str:
    return value.decode("latin-1")


def wsgi_environ(scope: dict[str, Any]) -> dict[str, Any]:
    """The WSGI environ gunicorn's WSGI workers would build for this ASGI request scope."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", ""),
        # WSGI: the undecoded bytes of the %-decoded path, as latin-1 text (PEP 3333).
        "PATH_INFO": _latin1(unquote_to_bytes(raw_path)),
        "QUERY_STRING": _latin1(scope.get("query_string", b"")),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for raw_name, raw_value in scope["headers"]:
        name = _latin1(raw_name).upper()
        if "_" in name:
            # As gunicorn's WSGI workers (header_map="drop"): X_Forwarded_Proto must not
            # pass for X-Forwarded-Proto once both are spelled HTTP_X_FORWARDED_PROTO.
            continue
        key = name.replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = _latin1(raw_value)
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class _Response:
    """Status, headers and body of one WSGI call, collected as the app hands them over."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.status = int(status[:3])
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return self._write_unsupported

    @staticmethod
    def _write_unsupported(data: bytes) -> None:
        raise NotImplementedError("the WSGI write() callable is not supported")

    def start_message(self) -> dict[str, Any]:
        return {"type": "http.response.start", "status": self.status, "headers": self.headers}


def _close(result: Iterable[bytes]) -> None:
    """The WSGI response's ``close()`` (PEP 3333), on the thread that produced it."""
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _body_message(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


class WsgiOnLoop:
    """An ASGI application that runs a WSGI application (module docstring)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], threads: int) -> None:
        self.app = app
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="long-request")
        # Inline requests run one after another in this context, not in their own task's:
        # what the app keeps in context-local storage (Django's cache clients) then lasts
        # from one request to the next, as it does in a thread. (A new one per request
        # cost about 10 ms.)
        self.inline_context = contextvars.Context()

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Any],
        send: Callable[[dict[str, Any]], Any],
        abort: Callable[[], None] | None = None,
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no WebSockets here: the server closes the connection
        environ = wsgi_environ(scope)
        body = await self._read_body(environ, receive, send)
        if body is None:
            return
        environ["wsgi.input"] = io.BytesIO(body)

        loop = asyncio.get_running_loop()

        def drop_client() -> None:
            # The client read nothing for SEND_TIMEOUT s: drop it (close() would wait to
            # flush what it never reads); the send waiting on it fails.
            _log.info("Dropped a client that read nothing for %s s", SEND_TIMEOUT)
            if abort is not None:
                abort()

        async def send_in_time(message: dict[str, Any]) -> None:
            # A timer, not asyncio.wait_for: that wraps every send in a task, which costs
            # time and yields to other connections between a response's head and body.
            timer = loop.call_later(SEND_TIMEOUT, drop_client) if SEND_TIMEOUT > 0 else None
            try:
                await send(message)
            finally:
                if timer is not None:
                    timer.cancel()

        if runs_inline(environ):
            response = _Response()
            content = self.inline_context.run(self._inline, environ, response)
            await send_in_time(response.start_message())
            await send_in_time(_body_message(content))
            return
        await loop.run_in_executor(self.pool, self._in_thread, environ, loop, send_in_time)

    def _inline(self, environ: dict[str, Any], response: _Response) -> bytes:
        result = self.app(environ, response.start_response)
        try:
            return b"".join(result)
        finally:
            _close(result)

    def _in_thread(
        self,
        environ: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        send: Callable[[dict[str, Any]], Any],
    ) -> None:
        """A long request, in a pool thread; what it sends goes to the loop piece by piece."""

        def deliver(message: dict[str, Any]) -> None:
            # send() gives up after SEND_TIMEOUT itself; the margin covers a loop that has
            # stopped (a worker shutting down), so this thread cannot wait forever.
            wait = SEND_TIMEOUT + 5 if SEND_TIMEOUT > 0 else None
            asyncio.run_coroutine_threadsafe(send(message), loop).result(wait)

        response = _Response()
        result = self.app(environ, response.start_response)
        try:
            started = False
            pending: list[bytes] = []
            size = 0
            for chunk in result:
                if not chunk:
                    continue
                pending.append(chunk)
                size += len(chunk)
                if size >= STREAM_PIECE_BYTES:
                    if not started:
                        deliver(response.start_message())
                        started = True
                    deliver(_body_message(b"".join(pending), more=True))
                    pending, size = [], 0
            if not started:
                deliver(response.start_message())
            deliver(_body_message(b"".join(pending)))
        finally:
            _close(result)  # ends a cut-off export's transaction in this thread

    async def _read_body(
        self,
        environ: dict[str, Any],
        receive: Callable[[], Any],
        send: Callable[[dict[str, Any]], Any],
    ) -> bytes | None:
        """The request body, read within the deadline; None when a response went out already
        (408) or the client left. A body over the limit is not read past the limit: the app
        answers 413 (cdrservice.body_limits) and the connection closes."""
        from django.conf import settings

        declared = environ.get("CONTENT_LENGTH", "")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and declared in ("", "0"):
            return b""
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if declared.isdigit() and int(declared) > limit:
            return b""  # 413 at once, before any of it arrives
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_READ_TIMEOUT
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                headers, body = json_error_response(
                    408, f"request body not received within {REQUEST_READ_TIMEOUT:g} s"
                )
                await send({"type": "http.response.start", "status": 408, "headers": headers})
                await send(_body_message(body))
                return None
            if message["type"] == "http.disconnect":
                return None
            piece = message.get("body", b"")
            parts.append(piece)
            size += len(piece)
            if not message.get("more_body") or size > limit:
                break
        body = b"".join(parts)
        if chunked and size <= limit:
            # Whole and within the limit: hand it on with its length, as a plain body.
            environ["CONTENT_LENGTH"] = str(size)
            del environ["HTTP_TRANSFER_ENCODING"]
        return body

    @staticmethod
    async def _lifespan(receive: Callable[[], Any], send: Callable[[dict[str, Any]], Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


class _WorkerSeenByConnection:
    """The worker as one connection sees it: neither stopped nor at max_requests while
    the connection's last response promised keep-alive.

    gunicorn's connection loop decides again whether to keep a connection after each
    response, from ``worker.alive`` and ``worker.nr >= worker.max_requests``, after a pause
    in which other connections' requests run and count. When they reached max_requests
    meanwhile, a connection whose response had just said "keep-alive" was closed under the
    client's next request: wrk counted 17–25 read errors in 5 s with a recycle every 1,000
    requests a worker (one connection alone: none). With this view that connection serves
    its next request, answered with ``Connection: close``, and then closes.
    """

    def __init__(self, worker: Any, connection: LoopProtocol) -> None:
        object.__setattr__(self, "_worker", worker)
        object.__setattr__(self, "_connection", connection)

    @property
    def alive(self) -> bool:
        return bool(self._worker.alive or self._connection.promised_keepalive)

    @property
    def max_requests(self) -> int:
        promised = self._connection.promised_keepalive
        return sys.maxsize if promised else int(self._worker.max_requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._worker, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._worker, name, value)


class LoopProtocol(asgi_protocol.ASGIProtocol):
    """gunicorn's HTTP/1 protocol, with:
    - the head's deadline and byte cap, and JSON errors;
    - a way for the app to drop a connection whose client stopped reading;
    - keep-alive promises kept while the worker stops (``_WorkerSeenByConnection``);
    - at most ``KEEPALIVE_MAX_REQUESTS`` requests a connection;
    - a lingering close after a request body left unread (``LINGER_SECONDS``)."""

    _closed: bool  # gunicorn's: the transport is closed (or closing) for good

    def __init__(self, worker: Any) -> None:
        self.promised_keepalive = False
        self._lingered: int | None = None  # bytes discarded while lingering; None: not
        self._linger_timer: asyncio.TimerHandle | None = None
        super().__init__(_WorkerSeenByConnection(worker, self))
        app: WsgiOnLoop = worker.asgi
        self.app = functools.partial(app, abort=self._abort)
        self._head = HeadMeter()
        self._head_timer: asyncio.TimerHandle | None = None

    async def _serve_http_request(self, *args: Any) -> bool:
        self.promised_keepalive = False  # this response announces close if the worker stops
        keepalive = bool(await super()._serve_http_request(*args))
        self.promised_keepalive = keepalive
        return keepalive

    def _will_close(self, request: Any, response_requires_close: bool) -> bool:
        # gunicorn's one place for "this response closes the connection": it announces
        # Connection: close and ends the connection loop. req_count numbers this request
        # on its connection. See KEEPALIVE_MAX_REQUESTS for why connections are capped.
        if KEEPALIVE_MAX_REQUESTS and self.req_count >= KEEPALIVE_MAX_REQUESTS:
            return True
        return bool(super()._will_close(request, response_requires_close))

    def _close_transport(self) -> None:
        # A request body left unread: linger (LINGER_SECONDS) instead of closing at once.
        receiver = self._body_receiver
        transport = self.transport
        if (
            self._lingered is None
            and not self._closed
            and receiver is not None
            and not receiver._complete
            and transport is not None
            and not transport.is_closing()
            and transport.can_write_eof()
        ):
            self._lingered = 0
            try:
                transport.write_eof()  # the answer is sent; the client sees our end close
                self._resume_reading()
            except (OSError, RuntimeError):
                super()._close_transport()
                return
            self._linger_timer = self.worker.loop.call_later(LINGER_SECONDS, self._end_linger)
            return
        super()._close_transport()

    def _stop_linger_timer(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _end_linger(self) -> None:
        self._stop_linger_timer()
        if self.transport is not None and not self._closed:
            self.transport.close()  # our end was shut for writing when the lingering began
            self._closed = True

    def data_received(self, data: bytes) -> None:
        if self._lingered is not None:  # discarding the rest of an unread body
            self._lingered += len(data)
            if self._lingered > LINGER_MAX_BYTES:
                self._end_linger()
            return
        if self._current_request is None and not self._closed and self._websocket is None:
            self._head.feed(data)
            if self._head.over_cap:
                self._refuse(431, f"request line and headers exceed {MAX_REQUEST_HEAD_BYTES} bytes")
                return
            if self._head.done:
                self._head_done()
            elif self._head_timer is None:
                self._head_timer = self.worker.loop.call_later(
                    REQUEST_READ_TIMEOUT, self._head_timed_out
                )
        super().data_received(data)

    def _head_done(self) -> None:
        self._head.reset()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._current_request is None and not self._closed:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            self.log.warning("Request head timeout from %s", peer)
            self._refuse(408, f"request not received within {REQUEST_READ_TIMEOUT:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._head_done()
        self._send_error_response(status, message)
        self._close_transport()

    def _send_error_response(
        self, status: int, message: str, extra_headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        reason = asgi_protocol._REASON_PHRASES.get(status, "Error")
        self._safe_write(json_error_bytes(status, reason, message, extra_headers))

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        self._stop_linger_timer()
        super().connection_lost(exc)


class LoopWorker(gasgi.ASGIWorker):
    """gunicorn's ASGI worker serving the WSGI app through ``WsgiOnLoop`` (module docstring)."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        return None  # threads is this worker's pool for long requests, not unused

    def init_process(self) -> None:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # see the module docstring
        # gunicorn's ASGI worker builds each connection's protocol by this module-level
        # name; this process serves with ours.
        gasgi.ASGIProtocol = LoopProtocol  # type: ignore[misc]
        super().init_process()

    def load_wsgi(self) -> None:
        self.asgi = WsgiOnLoop(self.app.wsgi(), threads=self.cfg.threads)
