"""Answers no honest vendor gives, for any fake: `hostile(FakeMoesif)(...)` is the fake, with `misbehave(...)`
queuing answers taken by the next requests whose path starts with a given prefix (others are answered as usual).

    with hostile(FakeWebhook)() as fake:
        fake.misbehave("/", Endless(503))          # a 503 whose body never ends
        fake.misbehave("/", Trickle(200, 0.5))     # a 200 whose body comes one byte every 0.5 s, forever
        fake.misbehave("/", Cut(200, 5_000, 10))   # a 200 announcing 5,000 bytes, closed after 10

Each misbehaving answer goes on until the client hangs up (or the fake stops); `sent` counts the bytes written
for each, so a test sees how much of it the client read. Requests answered so are kept in `hostile_requests`.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .httpfake import Request


@dataclass
class Endless:
    """A status line and headers, then a chunked body that never ends (`chunk` repeated)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    chunk: bytes = b"x" * 65536


@dataclass
class Trickle:
    """A status line, a Content-Length of a gigabyte, then one byte every `interval` seconds."""

    status: int
    interval: float = 0.5
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Cut:
    """A status line announcing `declared` bytes of body, `given` of them, then the connection closed (`reset`:
    with a RST instead of a FIN)."""

    status: int
    declared: int = 5_000
    given: int = 10
    reset: bool = False
    headers: dict[str, str] = field(default_factory=dict)


Misbehaviour = Endless | Trickle | Cut


def hostile(fake_class: type) -> type:
    """`fake_class` that can be told to misbehave (see the module's docstring)."""

    class Hostile(fake_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kw: Any):
            super().__init__(*args, **kw)
            self._misbehaviours: deque[tuple[str, Misbehaviour]] = deque()
            self.hostile_requests: list[Request] = []
            self.sent: list[int] = []  # bytes written for each misbehaving answer, in order
            self.ended: list[str] = []  # how each ended: "hung up" (the client), "stopped" (the fake), "done"
            self._hostile_lock = threading.Lock()

        def misbehave(self, prefix: str, *answers: Misbehaviour) -> None:
            with self._hostile_lock:
                self._misbehaviours.extend((prefix, answer) for answer in answers)

        def take(self, path: str) -> Misbehaviour | None:
            with self._hostile_lock:
                for i, (prefix, answer) in enumerate(self._misbehaviours):
                    if path.startswith(prefix):
                        del self._misbehaviours[i]
                        return answer
            return None

        @property
        def misbehaving_left(self) -> int:
            with self._hostile_lock:
                return len(self._misbehaviours)

        def start(self):
            super().start()
            base = self._server.RequestHandlerClass
            handle = _handler(base)
            self._server.RequestHandlerClass = type("HostileHandler", (base,), {
                "do_GET": handle, "do_POST": handle, "do_PUT": handle, "do_PATCH": handle, "do_DELETE": handle})
            return self

        def _answered(self, sent: int, how: str) -> None:
            with self._hostile_lock:
                self.sent.append(sent)
                self.ended.append(how)
            self.notify()

    Hostile.__name__ = f"Hostile{fake_class.__name__}"
    return Hostile


def _handler(base: type):
    def handle(self) -> None:
        fake = self.server.fake
        answer = fake.take(self.path)
        if answer is None:
            return base.do_POST(self)  # the usual answer (do_POST is the base's one handler for every method)
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.command, self.path, headers, self._read_body())
        with fake._hostile_lock:
            fake.hostile_requests.append(request)
        fake.notify()
        self.close_connection = True
        sent, how = 0, "done"
        try:
            sent, how = _misbehave(self.connection, answer, fake._stopping)
        except OSError:
            how = "hung up"
        fake._answered(sent, how)

    return handle


def _head(status: int, headers: dict[str, str], framing: str) -> bytes:
    lines = [f"HTTP/1.1 {status} Hostile", framing, *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _misbehave(conn: socket.socket, answer: Misbehaviour, stopping: threading.Event) -> tuple[int, str]:
    sent = 0
    if isinstance(answer, Endless):
        conn.sendall(_head(answer.status, answer.headers, "Transfer-Encoding: chunked"))
        frame = f"{len(answer.chunk):x}\r\n".encode() + answer.chunk + b"\r\n"
        while not stopping.is_set():
            try:
                conn.sendall(frame)
            except OSError:
                return sent, "hung up"
            sent += len(answer.chunk)
        return sent, "stopped"
    if isinstance(answer, Trickle):
        conn.sendall(_head(answer.status, answer.headers, "Content-Length: 1000000000"))
        while not stopping.wait(answer.interval):
            try:
                conn.sendall(b"x")
            except OSError:
                return sent, "hung up"
            sent += 1
        return sent, "stopped"
    conn.sendall(_head(answer.status, answer.headers, f"Content-Length: {answer.declared}") + b"y" * answer.given)
    if answer.reset:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    return answer.given, "done"
