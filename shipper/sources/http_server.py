"""The HTTP listener of `kong-ship receive`, shared by what it serves (Kong event hooks, Kong's http-log): the
connection bounds, the request-body checks every delivery passes, the spool write and the answers.

Each delivery kind is a `route` of the receiver: a function given the request handler, which calls `body()`
(the checks below, in order) and then `spool()`. `body()` answers, and returns None, with:

- 400 and closed, first, when the headers frame the body ambiguously (`http_limits.framing_error`: RFC 9112 §6.3);
- 503 and closed at once when `max_connections` connections are already being handled (each holds a thread);
- 431 and closed when the header lines pass `MAX_HEADER_BYTES` in all (all an unauthenticated client can make us hold);
- 411 without a Content-Length (Kong always sends one), 413 over `max_body_bytes` (not read; closed after it);
- 503 when bodies being read or stored at once would pass `READING_BODIES` × `max_body_bytes` (a body is read whole
  before it can be checked, and held, parsed and encoded, until its fsync: unauthenticated clients could fill the
  memory); a sender its headers authenticated (http-log's token) has a budget of its own, which unsigned hooks cannot fill;
- 503 with Retry-After when the bytes the sinks have not acknowledged yet exceed `max_backlog_bytes` (or the
  connection is closed without an answer, with `overload="close"`: Kong's webhook handler retries only that).

`spool()` answers 503 when the spool cannot be written (disk full) or a stop began (the client retries), else 200
`{"accepted": N}` once every record of the body is durable (at most one fsync per request, shared by requests
arriving together: `http_commit.py`). A client taking longer than `read_timeout` to send its request (headers and
body) is disconnected; with a TLS context, each connection's handshake runs in its own thread, under that timeout."""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import orjson

from shipper.sources.http_commit import Committer
from shipper.sources.http_limits import (
    Backlog, Budget, Deadlines, HeaderBytes, Throttled, accept_failed, framing_error,
)
from shipper.sources.spool import Spool
from shipper.threads import start_thread

log = logging.getLogger("kong-ship")

RETRY_AFTER_SECONDS = 2
READ_TIMEOUT = 10.0  # seconds a client may take to send its request
MAX_CONNECTIONS = 64
READING_BODIES = 16  # bodies of --max-body-bytes that may be being read (or stored) at once
LISTEN_BACKLOG = 1024  # the stdlib's 5 made a burst of connections wait for SYN retransmits (seconds each)
ENVELOPE_BYTES = 96  # what the spool adds around each record, roughly
MAX_HEADER_BYTES = 64 << 10  # header lines of a request, in all (Kong's stay well under 8 KiB): over, 431 and close
_OVERFULL_BODY = b'{"error":"too many connections, retry later"}'
_OVERFULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: %d\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
) % (RETRY_AFTER_SECONDS, len(_OVERFULL_BODY), _OVERFULL_BODY)

Route = Callable[["RequestHandler"], None]


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every reply carries Content-Length
    server: Server
    held: tuple[Budget, int] | None = None  # the reading budget, and bytes of it, the body took until its route returns
    delivery = ""  # the route's name once dispatched ("http-log", "event-hooks"): its requests are counted under it

    def setup(self) -> None:
        # Without TCP_NODELAY, Nagle plus the client's delayed ACK stall each small reply by ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Each wait for the client, headers and idle keep-alive. typeshed declares `timeout` a ClassVar, but
        # StreamRequestHandler.setup (super().setup() below) reads it from the instance: a per-handler value holds.
        self.timeout = self.server.receiver.read_timeout  # type: ignore[misc]
        context = self.server.receiver.tls
        if context is not None:
            # Here, in the connection's thread, not in the accepting one: a client stalling its handshake holds
            # only its own thread, for at most the read timeout (CPython's handshake counts its timeout for the
            # whole handshake, not per read, so trickling does not extend it); a failed one ends quietly (OSError).
            self.request.settimeout(self.timeout)
            try:
                self.request = context.wrap_socket(self.request, server_side=True)
            except OSError:  # ssl.SSLError included; counted for the metrics, then ended quietly (handle_error)
                self.server.receiver.handshake_failed()
                raise
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("receive: %s %s", self.address_string(), format % args)

    def reply(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None, close: bool = False) -> None:
        body = orjson.dumps(obj)
        if close:
            self.close_connection = True
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        self.log_request(status, len(body))
        # One write for status line, headers and body: split writes stall on Nagle/delayed ACK.
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.wfile.flush()

    def refuse(self, status: int, error: str, **kw: Any) -> None:
        self.server.receiver.count(status, self.delivery)
        self.reply(status, {"error": error}, **kw)

    def refuse_unread(self, status: int, error: str, **kw: Any) -> None:
        """Refuse before reading the body (no reading budget is spent on a client refused by its headers)."""
        self.refuse(status, error, close=True, **kw)
        self.linger(self.content_length())

    def content_length(self) -> int:
        """The announced body length; -1 when missing, malformed or chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return -1
        try:
            return int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            return -1

    def over_budget(self, budget: Budget, close: bool = False) -> bool:
        """Bodies being read at once over `budget`: answered 503, Retry-After (True), or closed unanswered (False)."""
        receiver = self.server.receiver
        receiver.warn_overload("bodies being read at once over %d bytes", budget.limit)
        if receiver.overload == "close":
            receiver.count(503, self.delivery)
            self.close_connection = True
            return False
        self.refuse(503, "too many deliveries being read, retry later",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, close=close)
        return True

    def body(self, authenticated: bool = False) -> bytes | None:
        """The body once past the bounds (module docstring), else None; `authenticated`: a token proved the sender."""
        receiver, body = self.server.receiver, None
        budget = receiver.reading_authenticated if authenticated else receiver.reading
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.refuse(411, "send a Content-Length (chunked bodies are not accepted)", close=True)
            self.linger()
            return None
        length = self.content_length()
        if length < 0:
            self.refuse(411, "a Content-Length is required", close=True)
            self.linger()
            return None
        if length > receiver.max_body_bytes:
            self.refuse(413, f"body over {receiver.max_body_bytes} bytes", close=True)
            self.linger(length)
            return None
        if not budget.take(length):
            if self.over_budget(budget, close=True):
                self.linger(length)
            return None
        try:
            body = self._read_body(length)
        finally:
            if body is None:
                budget.give(length)
            else:  # held until the route returns: the records parsed from it, then encoded, outweigh the body
                self.held = (budget, length)
        if body is None:
            self.close_connection = True  # the client gave up, or stalled, mid-body
            return None
        if receiver.overloaded():
            receiver.warn_overload(
                "backlog over --max-backlog-bytes (%d) until the sinks catch up", receiver.max_backlog_bytes
            )
            if receiver.overload == "close":
                receiver.count(503, self.delivery)
                self.close_connection = True  # no answer: Kong's webhook handler retries a failed request, not a 503
                return None
            self.refuse(503, "backlog full, retry later", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            return None
        return body

    def spool(self, kind: str, records: list[dict[str, Any]], nbytes: int, **answer: Any) -> None:
        """Append the records (an fsync shared with the requests writing at the same moment: http_commit.py) and
        answer 200 `{"accepted": N, **answer}`; 503 if the spool cannot be written (nothing of them kept) or stopping."""
        receiver = self.server.receiver
        if receiver.stopping:  # once a stop began, a record spooled would wait for the next start: the client retries
            self.refuse(503, "stopping, retry later", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, close=True)
            return
        try:
            receiver.committer.append(kind, records)
        except orjson.JSONEncodeError:  # parsed (orjson reads 1024 levels) but too deep to write (254)
            self.refuse(400, "the body is nested too deep to be stored")
            return
        except (OSError, ValueError) as exc:  # ValueError: the spool was closed by a stop (not a failure: unlogged)
            if isinstance(exc, OSError):
                receiver.spool_failed(exc)
            self.refuse(503, "cannot store the records", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, close=True)
            return
        receiver.accepted(kind, len(records), nbytes + ENVELOPE_BYTES * len(records), self.delivery)
        self.reply(200, {"accepted": len(records), **answer})

    def parse_request(self) -> bool:
        # The header lines read through a bounded file (http_limits.HeaderBytes): past the bound, the stdlib
        # answers 431, and what the client still sends is read and dropped so that it reads the answer.
        rfile, headers = self.rfile, HeaderBytes(self.rfile, MAX_HEADER_BYTES)
        self.rfile = headers  # type: ignore[assignment]
        try:
            parsed: bool = super().parse_request()
        finally:
            self.rfile = rfile
        if headers.passed:
            self.server.receiver.count(431)
            self.linger()
        return parsed

    def handle_one_request(self) -> None:
        # From the first byte awaited to the last byte of the body, `read_timeout` in all (idle keep-alive too).
        deadlines = self.server.receiver.deadlines
        deadlines.arm(self.connection)
        try:
            super().handle_one_request()
        finally:
            deadlines.disarm(self.connection)

    def _read_body(self, length: int) -> bytes | None:
        """The body, read as it arrives (not a buffer of `length` allocated up front), or None when the client
        closes or passes its deadline."""
        chunks, remaining = [], length
        try:
            while remaining > 0:
                chunk = self.rfile.read1(min(remaining, 65536))
                if not chunk:
                    return None
                chunks.append(chunk)
                remaining -= len(chunk)
        except OSError:  # socket.timeout included
            return None
        self.server.receiver.deadlines.disarm(self.connection)  # what follows (spool, fsync) is ours, not theirs
        return b"".join(chunks)

    def linger(self, length: int | None = None) -> None:
        """After refusing a body without reading it: stop writing, then read and discard what the client is still
        sending (64 KiB at a time, for at most a second), so the close is a FIN and not a reset that would
        destroy the answer before the client reads it."""
        self.close_connection = True
        deadline = time.monotonic() + 1.0
        remaining = length if length is not None and length >= 0 else 1 << 30
        try:
            if not isinstance(self.connection, ssl.SSLSocket):  # its shutdown would drop the TLS layer first
                self.connection.shutdown(socket.SHUT_WR)
            while remaining > 0 and time.monotonic() < deadline:
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.rfile.read1(min(65536, remaining)) if hasattr(self.rfile, "read1") else b""
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        self.delivery = self.server.receiver.delivery(path)
        if (ambiguous := framing_error(self.headers)) is not None:
            self.refuse(400, f"the body's length is ambiguous: {ambiguous}", close=True)
            self.linger()
            return
        route = self.server.receiver.route(path, self.command)
        try:
            route(self)
        finally:
            if self.held is not None:
                self.held[0].give(self.held[1])
                self.held = None

    do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _dispatch  # noqa: N815 - the base class's naming

    def do_HEAD(self) -> None:  # noqa: N802
        self.close_connection = True
        allow = self.server.receiver.allowed(self.path.split("?", 1)[0])
        self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                         % allow.encode())


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    receiver: HTTPReceiver

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:  # socketserver drops it and selects again: out of descriptors, that spun
            accept_failed(exc, self.receiver.accept_warnings, "http")
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        # One thread per connection, but no more than max_connections: beyond, a short 503 and close, in the
        # accepting thread (a non-blocking send of a small answer), so stalled clients cannot pile up threads.
        if not self.receiver.slots.acquire(blocking=False):
            self.receiver.count(503)
            self.receiver.warn_overload("over --max-connections (%d) at once", self.receiver.max_connections)
            if self.receiver.overload == "503" and self.receiver.tls is None:  # over TLS, plain bytes are noise
                try:
                    request.setblocking(False)
                    request.send(_OVERFULL)
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.receiver.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.receiver.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # a client that went away mid-request, or failed its TLS handshake
        log.error("receive: error handling a request from %s: %r", client_address[0], exc)


class HTTPReceiver:
    """The HTTP server, bound at construction (so a taken port fails at start), serving in a thread. What it
    serves is `route(path, method)`'s, a subclass's; `allowed(path)` is the Allow header of a 405 there."""

    def __init__(
        self, host: str, port: int, spool: Spool, *, max_body_bytes: int, max_backlog_bytes: int,
        backlog: Callable[[], int], on_accept: Callable[[], None] = lambda: None, overload: str = "503",
        max_connections: int = MAX_CONNECTIONS, read_timeout: float = READ_TIMEOUT, tls: ssl.SSLContext | None = None,
    ):
        self.spool = spool
        self.committer = Committer(spool)
        self.max_body_bytes = max_body_bytes
        self.max_backlog_bytes = max_backlog_bytes
        self.backlog = Backlog(backlog)
        self.on_accept = on_accept
        self.overload = overload
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.reading = Budget(READING_BODIES * max_body_bytes)
        self.reading_authenticated = Budget(READING_BODIES * max_body_bytes)  # body(authenticated=True)
        self.read_timeout = read_timeout
        self.deadlines = Deadlines(read_timeout)
        self.tls = tls
        self.counts: dict[int, int] = {}  # every answer by status, those given before any route too
        self.requests: dict[tuple[str, int], int] = {}  # (delivery, status) → requests, once routed
        self.failed_handshakes = 0
        self.records_accepted: dict[str, int] = {}  # spool kind → records
        self._lock = threading.Lock()
        self._auth_warnings = Throttled()
        self.accept_warnings = Throttled()
        self._overload_warnings: dict[str, Throttled] = {}
        self._spool_failing: str | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (Server,), {"address_family": family})
        self._server: Server = server_class((host, port), RequestHandler)
        self._server.receiver = self
        self._thread: threading.Thread | None = None
        self._shutdown_lock = threading.Lock()
        self._closed = False
        self.stopping = False  # set by shutdown: requests still being handled are answered 503, not spooled

    def route(self, path: str, method: str) -> Route:
        raise NotImplementedError

    def allowed(self, path: str) -> str:
        raise NotImplementedError

    def delivery(self, path: str) -> str:
        """The name its requests are counted under (the metrics' `listener` label)."""
        raise NotImplementedError

    def not_allowed(self, path: str) -> Route:
        allow = self.allowed(path)
        return lambda handler: handler.refuse(405, f"use {allow} here", headers={"Allow": allow})

    @property
    def address(self) -> tuple[str, int]:
        # typeshed's server_address covers every address family; an AF_INET/AF_INET6 server's is (host: str, port, …).
        host, port = cast(tuple[str, int], self._server.server_address[:2])
        return host, port

    def start(self, on_death: Callable[[str], None]) -> None:
        """Serve in threads of its own; one that dies tells `on_death` (exit 1, not a silent healthy look)."""
        self.deadlines.start(on_death)
        self._thread = start_thread(lambda: self._server.serve_forever(poll_interval=0.1), "receive", on_death)

    def shutdown(self) -> None:
        """Stop accepting (idempotent): connections and requests; a request being stored finishes (200 once durable)."""
        self.stopping = True
        with self._shutdown_lock:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join(timeout=5)
                self._thread = None
            if not self._closed:
                self._server.server_close()
                self.deadlines.stop()
                self._closed = True

    def overloaded(self) -> bool:
        return self.backlog.value() > self.max_backlog_bytes

    def spool_failed(self, exc: Exception) -> None:
        """Logged once per kind of failure (a full disk refuses every delivery until it is freed)."""
        message = f"receive: cannot write the spool ({getattr(exc, 'strerror', None) or exc}): answering 503"
        with self._lock:
            first, self._spool_failing = message != self._spool_failing, message
        if first:
            log.error("%s until it can", message)

    def accepted(self, kind: str, records: int, nbytes: int, delivery: str = "") -> None:
        self.backlog.add(nbytes)
        with self._lock:
            if self._spool_failing:
                log.info("receive: the spool is written again")
                self._spool_failing = None
            self.records_accepted[kind] = self.records_accepted.get(kind, 0) + records
        self.count(200, delivery)
        self.on_accept()

    def count(self, status: int, delivery: str = "") -> None:
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            if delivery:
                self.requests[delivery, status] = self.requests.get((delivery, status), 0) + 1

    def handshake_failed(self) -> None:
        with self._lock:
            self.failed_handshakes += 1

    def warn_auth(self, message: str, *args: Any) -> None:
        self._auth_warnings.warn(message, *args)

    def warn_overload(self, why: str, *args: Any) -> None:
        """Throttled per kind of overload, so that one does not hide another."""
        with self._lock:
            throttle = self._overload_warnings.setdefault(why, Throttled())
        how = "closing connections unanswered" if self.overload == "close" else "answering 503"
        throttle.warn(f"receive: {why}: {how}", *args)
