"""A base for loopback fake vendor servers, with fault injection.

    with FakeHTTPServer() as fake:
        fake.script([429, (429, {"Retry-After": "1"}), "reset", "hang:2", "slow:0.5"])
        ...  # point the client at fake.url
        fake.wait_for(lambda: fake.request_count >= 5)

Subclasses override `respond(req) -> (status, headers, body)`; everything else (keep-alive, recording,
scripted faults, down mode) is shared.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Request(NamedTuple):
    method: str
    path: str  # as sent, query string included
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes  # raw, still compressed if the client compressed it


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def json_response(status: int, obj: Any = None, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj or {}).encode())


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.005, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate}")
        time.sleep(interval)


# -- scripted actions ---------------------------------------------------------------------------------------
# Parsed when scripted, so that a typo fails in the test thread rather than inside the server.
class _Action(NamedTuple):
    kind: str  # "reply" | "reset" | "hang" | "slow"
    response: Response | None = None
    seconds: float = 0.0


def _parse_action(action: Any) -> _Action:
    if isinstance(action, bool):
        raise ValueError(f"bad scripted action {action!r}")
    if isinstance(action, int):
        return _Action("reply", json_response(action))
    if isinstance(action, tuple) and len(action) in (2, 3) and isinstance(action[0], int):
        status, headers, *body = action
        response = json_response(status, headers=headers)
        if body:
            raw = body[0] if isinstance(body[0], bytes) else json.dumps(body[0]).encode()
            response = response._replace(body=raw)
        return _Action("reply", response)
    if action == "reset":
        return _Action("reset")
    if isinstance(action, str) and action.partition(":")[0] in ("hang", "slow"):
        kind, _, seconds = action.partition(":")
        return _Action(kind, seconds=float(seconds))
    raise ValueError(f"bad scripted action {action!r}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    server: _Server

    def setup(self) -> None:
        # Without TCP_NODELAY, Nagle plus the client's delayed ACK stall each small reply by ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()
        self.server.fake._track(self.request, True)

    def finish(self) -> None:
        self.server.fake._track(self.request, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, response: Response) -> None:
        status, headers, body = response
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
        if self.close_connection:
            lines.append("Connection: close")
        # One sendall for status line, headers and body: split writes stall on Nagle/delayed ACK.
        self.connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST instead of FIN: the client sees a reset, not a clean EOF.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()  # rfile holds a reference that would otherwise keep the fd open
        self.connection.close()

    def _handle(self) -> None:
        fake = self.server.fake
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        req = Request(self.command, self.path, headers, self._read_body())
        action = fake._next(req)
        if action is None:
            response = json_response(503, {"error": "down"}) if fake.down else fake.respond(req)
        elif action.kind == "reply":
            response = action.response
        elif action.kind == "reset":
            self._reset()
            return
        elif action.kind == "hang":
            response = fake.respond(req)  # processed now, answered late: the "lost response" case
            fake._stopping.wait(action.seconds)
        else:  # slow
            fake._stopping.wait(action.seconds)
            response = fake.respond(req)
        self._send(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeHTTPServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gives up mid-request is normal in fault tests; anything else is a bug worth seeing.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class FakeHTTPServer:
    """A loopback HTTP/1.1 server in a daemon thread. Thread-safe; usable as a context manager.

    `record=False` keeps only `request_count` (no `requests` list), for benchmarks.
    """

    def __init__(self, *, record: bool = True) -> None:
        self.record = record
        self.requests: list[Request] = []
        self.rejections: list[tuple[int, str]] = []  # (status, error) of every refused request
        self.request_count = 0
        self.down = False
        self._lock = threading.Condition(threading.RLock())
        self._script: deque[_Action] = deque()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._generation = 0  # bumped on every state change, so wait_for never misses a wake-up
        self._port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> FakeHTTPServer:
        """Start serving; after stop(), start() again rebinds the same port (a vendor outage and return)."""
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.fake = self
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name=type(self).__name__
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self.drop_connections()  # idle keep-alive ones would stay open; clients should see the server go away
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeHTTPServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._port, "not started"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- fault injection ----------------------------------------------------------------------------------
    def script(self, actions: Iterable[Any]) -> None:
        """Queue actions, consumed one per incoming request before normal handling (and before down mode):
        an int status; (status, headers) or (status, headers, body); "reset"; "hang:S" (process now, reply
        after S seconds); "slow:S" (wait S seconds, then process and reply)."""
        parsed = [_parse_action(a) for a in actions]
        with self._lock:
            self._script.extend(parsed)

    @property
    def script_remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def clear_script(self) -> None:
        with self._lock:
            self._script.clear()

    def set_down(self, down: bool = True) -> None:
        """While down, every request not taken by the script is answered 503."""
        with self._lock:
            self.down = down

    # -- for subclasses -----------------------------------------------------------------------------------
    def respond(self, req: Request) -> Response:
        return json_response(200, {})

    def refuse(self, status: int, error: str) -> Response:
        """Record a refused request in `rejections` and answer it with `{"error": ...}`."""
        with self._lock:
            self.rejections.append((status, error))
        self.notify()
        return json_response(status, {"error": error})

    # -- inspection ---------------------------------------------------------------------------------------
    def drop_connections(self) -> None:
        """Cut every open connection, as a vendor's idle timeout or a restart does (the clients see them close)."""
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def open_connections(self) -> int:
        """Client connections open right now (keep-alive reuse shows as 1 for a sequential client)."""
        with self._lock:
            return len(self._connections)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0, what: str = "") -> T:
        """Return predicate()'s first truthy value, re-checked after each request and every 5 ms;
        AssertionError (with the request count) after `timeout`. The predicate runs outside the lock, so it
        may itself call the fake."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = self._generation
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"condition not met within {timeout}s: {what or predicate} ({self.request_count} requests received)"
                )
            with self._lock:
                if self._generation == seen:
                    self._lock.wait(min(remaining, 0.005))

    def notify(self) -> None:
        """Wake `wait_for` (subclasses call it after changing state)."""
        with self._lock:
            self._generation += 1
            self._lock.notify_all()

    # -- internals ----------------------------------------------------------------------------------------
    def _next(self, req: Request) -> _Action | None:
        with self._lock:
            self.request_count += 1
            if self.record:
                self.requests.append(req)
            self._generation += 1
            self._lock.notify_all()
            return self._script.popleft() if self._script else None

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)
