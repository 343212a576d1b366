"""gunicorn's gthread worker with bounds on slow clients and contract-shaped protocol errors.

gunicorn.conf.py ran this class by default until ``cdrservice.gunicorn_loop.LoopWorker``
(which shares its bounds and error bodies from here); ``GUNICORN_WORKER_CLASS`` still
selects it. Threads keep the service answering while some
clients are slow (trickling headers, not reading an export): each holds one thread, not a
whole worker. What stock gthread lacks, added here:

- A deadline for receiving a request: from its first byte, the request line, headers and
  body must arrive within ``GUNICORN_REQUEST_READ_TIMEOUT`` seconds (gunicorn only bounds
  the wait for the first byte and idle keep-alive connections). A head that misses it is
  answered 408 and closed; a body that misses it fails its read (the API answers 408).
- A bound on a client that stops reading the response (an export nobody reads): a write
  that makes no progress for ``GUNICORN_SEND_TIMEOUT`` seconds drops the connection, which
  ends the export and its database transaction instead of holding them for good.
- A byte cap on the request head (request line plus headers, ``GUNICORN_MAX_REQUEST_HEAD_BYTES``):
  gunicorn.conf.py lifts gunicorn's own request-line limit (8,190 bytes at most, too small
  for the contract's 2,000-character filter once percent-encoded), so this is the limit.
- gunicorn's own error responses (malformed request, head too large, timeout) carry the
  API's JSON error body instead of an HTML page.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

import orjson
from gunicorn.http.errors import LimitRequestHeaders
from gunicorn.workers import gthread

from cdrs.error_codes import error_code

REQUEST_READ_TIMEOUT = float(os.environ.get("GUNICORN_REQUEST_READ_TIMEOUT") or 30)
MAX_REQUEST_HEAD_BYTES = int(os.environ.get("GUNICORN_MAX_REQUEST_HEAD_BYTES") or 65536)
SEND_TIMEOUT = int(os.environ.get("GUNICORN_SEND_TIMEOUT") or 60)
# Requests one keep-alive connection carries before the server closes it, announcing
# ``Connection: close`` (Apache's MaxKeepAliveRequests, 100 there too; 0 = no limit).
# Clients that keep their connections for good (a PBX's webhook sender, a proxy's pool)
# otherwise stay on the worker that accepted them: after a max_requests recycle the worker
# that booted first held all 8 of the webhook benchmark's connections and served them alone
# at half the rate (about 530 events/s instead of 1,100) while its sibling idled. A client
# that reconnects lands on the worker that accepts first, mostly the idle one. At 1,000 the
# load spread again 18 s after the recycle; at 100 within about 2 s, for one new connection
# per 100 requests.
KEEPALIVE_MAX_REQUESTS = int(os.environ.get("GUNICORN_KEEPALIVE_MAX_REQUESTS") or 100)
_END_OF_HEAD = b"\r\n\r\n"


def json_error_response(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers, body) of an error the server answers itself, in the API's shape."""
    error = {"code": error_code(status), "message": message, "detail": {}}
    body = orjson.dumps({"errors": [error]})
    return [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))], body


def json_error_bytes(
    status: int, reason: str, message: str, extra_headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """A whole HTTP/1.1 error response written to the socket by the server itself (the
    connection then closes); no detail of a server error reaches the client."""
    text = message[:200] if status < 500 else "internal error"
    headers, body = json_error_response(status, text or reason)
    lines = [f"HTTP/1.1 {status} {reason}", "Connection: close"]
    lines += [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in headers]
    lines += [f"{name}: {value}" for name, value in extra_headers]
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + body


class HeadMeter:
    """Bytes of a request head (request line and headers) as they arrive, however the reads
    split it; ``done`` once its end, the blank line, has been seen."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.size = 0
        self.done = False
        self._tail = b""  # the last bytes seen, to find an end of head split across reads

    def feed(self, data: bytes) -> None:
        seen = self._tail + data
        end = seen.find(_END_OF_HEAD)
        if end >= 0:
            self.done = True
            self.size += end + len(_END_OF_HEAD) - len(self._tail)
        else:
            self.size += len(data)
            self._tail = seen[-3:]

    @property
    def over_cap(self) -> bool:
        return self.size > MAX_REQUEST_HEAD_BYTES


class RequestHeadTimeout(Exception):
    """The request line and headers did not arrive within the read deadline."""


class RequestBodyTimeout(TimeoutError):
    """The body did not arrive within the read deadline (an OSError: the app's read fails)."""


class _ReadDeadlineSocket:
    """The connection's socket as gunicorn's request parser reads it.

    Every ``recv`` waits at most until the current request's deadline, which starts with the
    first ``recv`` of each request (``start_request`` re-arms it); bytes before the end of
    the head are counted against the head cap. Everything else goes to the real socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.start_request()

    def start_request(self) -> None:
        self.deadline: float | None = None
        self.head = HeadMeter()

    def recv(self, size: int) -> bytes:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + REQUEST_READ_TIMEOUT
        remaining = self.deadline - now
        if remaining <= 0:
            self._expired()
        previous = self._sock.gettimeout()
        # gunicorn may bound a read itself (draining an unread body): keep the shorter.
        self._sock.settimeout(remaining if previous is None else min(previous, remaining))
        try:
            data = self._sock.recv(size)
        except TimeoutError:
            if time.monotonic() >= self.deadline:
                self._expired()
            raise
        finally:
            self._sock.settimeout(previous)
        if not self.head.done and data:
            self.head.feed(data)
            if self.head.over_cap:
                raise LimitRequestHeaders(
                    f"request line and headers exceed {MAX_REQUEST_HEAD_BYTES} bytes"
                )
        return data

    def _expired(self) -> None:
        if not self.head.done:
            raise RequestHeadTimeout(f"request not received within {REQUEST_READ_TIMEOUT:g} s")
        raise RequestBodyTimeout(f"request body not received within {REQUEST_READ_TIMEOUT:g} s")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _CapturedError:
    """Stands in for the client socket while gunicorn writes its HTML error page."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float | None:
        return None

    def setblocking(self, flag: bool) -> None:
        return None

    def sendall(self, data: bytes) -> None:
        self.data += data


class ThreadWorker(gthread.ThreadWorker):
    def handle(self, conn: Any) -> Any:
        if SEND_TIMEOUT > 0 and not getattr(conn, "send_timeout_set", False):
            # Kernel-level, so it holds while the socket is in blocking mode: a send() with no
            # room in the buffers for this long fails with EAGAIN.
            conn.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_TIMEOUT, 0)
            )
            conn.send_timeout_set = True
        wrapped = self._deadline_socket(conn)
        if wrapped is None and conn.parser is not None:
            # gunicorn before 24 creates the parser in the main thread, before this runs.
            wrapped = self._wrap_parser_socket(conn)
        if wrapped is not None:
            wrapped.start_request()
        elif conn.parser is None and not getattr(conn, "read_deadline_armed", False):
            # The parser is created in the thread (TConn.init); wrap its socket as it appears.
            conn.read_deadline_armed = True
            original_init = conn.init

            def init_with_deadline() -> None:
                original_init()
                self._wrap_parser_socket(conn)

            conn.init = init_with_deadline
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Any) -> Any:
        if KEEPALIVE_MAX_REQUESTS and req.req_number >= KEEPALIVE_MAX_REQUESTS:
            req.must_close = True  # this response says Connection: close (see the constant)
        try:
            return super().handle_request(req, conn)
        except BlockingIOError as exc:  # SO_SNDTIMEO: the client stopped reading
            self.log.info("Dropped a client that read nothing for %s s: %s", SEND_TIMEOUT, exc)
            raise StopIteration("client stopped reading") from exc

    @staticmethod
    def _wrap_parser_socket(conn: Any) -> _ReadDeadlineSocket | None:
        unreader = getattr(conn.parser, "unreader", None)
        if unreader is None or not isinstance(getattr(unreader, "sock", None), socket.socket):
            return None
        unreader.sock = _ReadDeadlineSocket(unreader.sock)
        return unreader.sock

    @staticmethod
    def _deadline_socket(conn: Any) -> _ReadDeadlineSocket | None:
        unreader = getattr(conn.parser, "unreader", None)
        sock = getattr(unreader, "sock", None)
        return sock if isinstance(sock, _ReadDeadlineSocket) else None

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, RequestHeadTimeout):
            self.log.warning("Request head timeout from ip=%s: %s", (addr or ("",))[0], exc)
            self._write_json_error(client, 408, "Request Timeout", str(exc))
            return
        captured = _CapturedError()
        super().handle_error(req, captured, addr, exc)
        status_line = captured.data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            status = 500
        reason = parts[2] if len(parts) > 2 else "Error"
        self._write_json_error(client, status, reason, str(exc))

    def _write_json_error(self, client: Any, status: int, reason: str, message: str) -> None:
        try:
            client.settimeout(1.0)  # a client that does not read does not keep this thread
            client.sendall(json_error_bytes(status, reason, message))
        except OSError:
            self.log.debug("Failed to send error message.")
