"""`receive --listen-tcp`: Kong's tcp-log plugin, NDJSON over TCP (optionally TLS).

What Kong does (kong/plugins/tcp-log/handler.lua): for each request, in a timer, it takes a connection from the
worker's keepalive pool (or opens one, with a TLS handshake when `tls` is true, without verifying the
certificate unless `ssl_verify`), sends `cjson.encode(record) .. "\\n"`, and puts the connection back in the pool
for `keepalive` ms (60 s by default). There is no answer: a record counts as delivered on Kong's side once its
send returned, so what is lost when we fail is lost for good.

So every connection is read as a stream of lines, each a record, spooled as it arrives (through the spool's
group commit: fsynced within 100 ms or 1,000 records), and:

- a line over `max_line_bytes` is dead-lettered `too_long` (its first bytes), and the rest of it skipped as it
  arrives: nothing is buffered beyond the limit;
- bytes left without a newline when the connection closes (or idles out, or the listener stops) are
  dead-lettered `unterminated`: a record cut off mid-send;
- a line that is not a JSON object is dead-lettered with the parser's reason (`not_json`, `not_object`, …);
- dead letters beyond `intake.DEAD_LETTERS_PER_SECOND` a second from one peer host, or beyond
  `DEAD_LETTERS_PER_SECOND_PER_LISTENER` from all, are counted and summarised (`held_back`), not written one by
  one: nothing authenticates the port, and garbage is cheap to send;
- while the spool's backlog is over `--max-backlog-bytes` (`overloaded()`), no connection is read: the kernel's
  buffers fill and TCP pushes back on Kong, which then waits up to its `timeout` and drops (logging it) rather
  than having us drop silently;
- at most `max_connections` connections are served at once (a thread each); beyond, new ones wait in the
  listen queue until one closes;
- a connection idle for `idle_timeout` (longer than Kong's default keepalive, so Kong closes first) is closed;
- past 64 KiB, an unfinished line takes one of a few places shared by all connections (memory: see
  `FREE_LINE_BYTES`); one that holds it for `unfinished_timeout` while read is cut off, its connection closed.

When a connection ends, what it sent is fsynced before our side closes: a client that sees the close (EOF
after its own shutdown) knows its records are durable.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

from shipper.deadletter import PREFIX_BYTES
from shipper.sources import sockets
from shipper.sources.http_limits import Budget, Throttled, accept_failed
from shipper.sources.intake import Intake
from shipper.threads import start_thread

log = logging.getLogger("kong-ship")

MAX_CONNECTIONS = 1024  # Kong keeps up to lua_socket_pool_size (30) idle connections per worker and target
IDLE_TIMEOUT = 120.0  # seconds; over Kong's keepalive default (60 s), so that Kong closes its idle ones first
HANDSHAKE_TIMEOUT = 10.0  # Kong's own send timeout default
POLL = 0.2  # seconds between looks at the stop flag and the backlog while a connection is quiet
READ_BYTES = 65536
LISTEN_BACKLOG = 1024
# Memory: each connection (1,024 at once) could hold an unfinished line of --max-body-bytes, and each thread parse
# one, up to ~32 times its size in Python objects: 100 connections with 1 MiB unterminated grew RSS by 113 MiB,
# 30 lines of 1 MiB of `[]`s by 240 MiB. So:
FREE_LINE_BYTES = 64 << 10  # of an unfinished line, held by any connection without charge (Kong's: 1-3 KB)
UNFINISHED_LINES = 16  # lines of --max-body-bytes all connections' unfinished lines may hold beyond that, together
UNFINISHED_TIMEOUT = 30.0  # seconds a line holding a place may take to arrive while read (Kong sends one in one send,
# under its `timeout`, 10 s by default): a client trickling bytes would otherwise keep its place, and with 16 such,
# every line over 64 KiB of every other connection waits
DECODING_LINES = 1  # lines of --max-body-bytes being decoded at once, in all (the GIL runs one at a time anyway)


class LineFramer:
    """Splits a byte stream into lines without ever holding more than `limit` bytes of one: a longer line is
    reported once (`too_long`, with its first bytes) and the rest of it dropped as it arrives."""

    def __init__(self, limit: int):
        self.limit = limit
        self.buffer = bytearray()
        self._skipping: tuple[bytes, int] | None = None  # (first bytes, length so far) of an over-long line

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes, int]]:
        """Yields ("line", line, length) and ("too_long", first bytes, length); a trailing `\\r` is dropped
        (Kong 0.11 ended records with CRLF)."""
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            piece = data[start:end]
            start = end + 1
            if self._skipping is not None:
                prefix, length = self._skipping
                self._skipping = None
                yield "too_long", prefix, length + len(piece)
                continue
            if self.buffer:
                self.buffer += piece
                line, self.buffer = bytes(self.buffer), bytearray()
            else:
                line = piece
            if len(line) > self.limit:
                yield "too_long", line[:PREFIX_BYTES], len(line)
            elif line.strip():
                yield "line", line[:-1] if line.endswith(b"\r") else line, len(line)
        rest = data[start:]
        if self._skipping is not None:
            self._skipping = (self._skipping[0], self._skipping[1] + len(rest))
        elif rest:
            self.buffer += rest
            if len(self.buffer) > self.limit:
                self._skipping = (bytes(self.buffer[:PREFIX_BYTES]), len(self.buffer))
                self.buffer = bytearray()

    def pending(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self.buffer)

    def leftover(self) -> tuple[bytes, int] | None:
        """What the stream ended in the middle of: (first bytes, length), or None."""
        if self._skipping is not None:
            return self._skipping
        if self.buffer.strip():
            return bytes(self.buffer), len(self.buffer)
        return None


class Charge:
    """One connection's unfinished line, charged to the listener's shared budget once over `FREE_LINE_BYTES`: by
    the whole of `limit` at once (what it may grow to), so that a connection holding a charge can always finish
    its line. Charged bit by bit, connections each holding part of the budget and waiting for more would wait
    for one another forever."""

    def __init__(self, budget: Budget, limit: int):
        self.budget = budget
        self.limit = limit
        self.held = 0
        self.since = 0.0  # when the place was taken (or the reading paused by us resumed)

    def settle(self, pending: int) -> bool:
        """Charge (or give back) for an unfinished line of `pending` bytes; False when the budget cannot cover
        it yet: the connection is not read meanwhile (what it sends waits in the kernel's buffers)."""
        want = self.limit if pending > FREE_LINE_BYTES else 0
        if want == self.held:
            return True
        if want == 0:
            self.budget.give(self.held)
        elif not self.budget.take(want):
            return False
        else:
            self.since = time.monotonic()
        self.held = want
        return True

    def overdue(self, timeout: float) -> bool:
        """The line holding a place has been read for longer than `timeout`."""
        return self.held > 0 and time.monotonic() - self.since > timeout

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


class TcpLogListener:
    """Bound at construction (a taken port fails the start), serving in threads of its own once started."""

    def __init__(
        self,
        host: str,
        port: int,
        intake: Intake,
        *,
        max_line_bytes: int,
        overloaded: Callable[[], bool],
        tls: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        unfinished_timeout: float = UNFINISHED_TIMEOUT,
    ):
        self.intake = intake
        self.max_line_bytes = max_line_bytes
        self.overloaded = overloaded
        self.tls = tls
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.unfinished_timeout = unfinished_timeout
        self.connections = 0  # accepted in all
        self.failed_handshakes = 0
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._overload_warnings = Throttled()
        self._cap_warnings = Throttled()
        self._accept_warnings = Throttled()
        self._unfinished_warnings = Throttled()
        self._unfinished = Budget(UNFINISHED_LINES * max_line_bytes)
        self._decoding = Budget(DECODING_LINES * max_line_bytes)
        self._accepting: threading.Thread | None = None
        self._sock = sockets.bound(host, port, socket.SOCK_STREAM, listen_backlog=LISTEN_BACKLOG, timeout=POLL,
                                   options=[(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)])

    @property
    def address(self) -> tuple[str, int]:
        return sockets.address(self._sock)

    def start(self, on_death: Callable[[str], None]) -> None:
        self._accepting = start_thread(self._accept_loop, "tcp-log", on_death)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            # At the cap, stop accepting: newcomers wait in the listen queue (Kong's connect timeout applies),
            # rather than being closed, which would lose the record Kong is about to send.
            if not self._slots.acquire(timeout=POLL):
                self._cap_warnings.warn("receive: tcp-log: %d connections at once (the cap): new ones wait",
                                        self.max_connections)
                continue
            try:
                conn, peer = self._sock.accept()
            except OSError as exc:  # TimeoutError included: the stop flag is looked at again
                self._slots.release()
                accept_failed(exc, self._accept_warnings, "tcp-log", self._stop.wait)
                self.intake.held_back()  # a quiet moment here too: no connection may be left to say it
                continue
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn, peer), name="tcp-log-conn", daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        where = f"{peer[0]}:{peer[1]}"
        try:
            self._read(conn, where)
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not end the listener
            log.error("receive: tcp-log: connection from %s failed: %r", where, exc)
        finally:
            try:
                conn.close()
            except OSError:
                pass
            self._slots.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _read(self, conn: socket.socket, where: str) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError) as exc:  # a plain-text client, a wrong protocol, a timeout
                with self._lock:
                    self.failed_handshakes += 1
                log.debug("receive: tcp-log: TLS handshake with %s failed: %s", where, exc)
                return
        conn.settimeout(POLL)
        framer = LineFramer(self.max_line_bytes)
        charge = Charge(self._unfinished, self.max_line_bytes)
        try:
            self._read_lines(conn, where, framer, charge)
        finally:
            charge.release()

    def _read_lines(self, conn: socket.socket, where: str, framer: LineFramer, charge: Charge) -> None:
        last_data = time.monotonic()
        unfinished = "no newline"
        while not self._stop.is_set():
            if not charge.settle(framer.pending()):
                self._unfinished_warnings.warn(
                    "receive: tcp-log: unfinished lines over %d bytes at once: connections with one wait",
                    self._unfinished.limit)
                self._stop.wait(POLL)
                last_data = time.monotonic()  # not the client's idleness: ours
                continue
            if self.overloaded():
                # Back-pressure: not reading leaves Kong's sends in the socket buffers, then blocks them.
                self._overload_warnings.warn(
                    "receive: tcp-log: backlog over --max-backlog-bytes: not reading until the sinks catch up")
                self._stop.wait(POLL)
                last_data = charge.since = time.monotonic()  # our pause, not the client's
                continue
            if charge.overdue(self.unfinished_timeout):
                unfinished = f"not finished within {self.unfinished_timeout:g} s"
                break
            try:
                data = conn.recv(READ_BYTES)
            except TimeoutError:
                self.intake.held_back()  # a quiet moment: the dead letters held back a second ago are said
                if time.monotonic() - last_data >= self.idle_timeout:
                    break
                continue
            except OSError:  # reset by the peer, or a TLS error mid-stream
                break
            if not data:
                break
            last_data = time.monotonic()
            self._take(framer.feed(data), where)
        else:
            self._drain(conn, framer, where)  # stopping: what already arrived is still taken
        leftover = framer.leftover()
        if leftover is not None:
            first, length = leftover
            self.intake.reject("unterminated", f"tcp-log from {where}: the connection ended {length} bytes into a "
                               f"record ({unfinished})", first, truncated=length > len(first), peer=where)
        self.intake.held_back(where)
        self.intake.commit.sync()  # durable before our side closes: the client may take the close as an ack

    def _drain(self, conn: socket.socket, framer: LineFramer, where: str) -> None:
        conn.settimeout(0.05)
        deadline = time.monotonic() + 1.0  # a client that never pauses does not hold the shutdown
        try:
            while time.monotonic() < deadline and (data := conn.recv(READ_BYTES)):
                self._take(framer.feed(data), where)
        except OSError:  # nothing more for now (timeout), or the peer is gone
            pass

    def _take(self, items: Iterator[tuple[str, bytes, int]], where: str) -> None:
        for kind, data, length in items:
            if kind == "line":
                # Parsed, a line weighs up to ~32 times its size: a bounded few bytes of them at once.
                while not self._decoding.take(len(data)):
                    time.sleep(0.005)  # its holders are parsing (CPU), never waiting for a client
                try:
                    self.intake.take(data, where, wait=True)
                finally:
                    self._decoding.give(len(data))
            else:
                self.intake.reject("too_long", f"tcp-log record from {where}: {length} bytes, over --max-body-bytes "
                                   f"({self.max_line_bytes})", data, truncated=True, peer=where)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting and reading (idempotent); each connection takes what already arrived, and its
        records are fsynced, before this returns (or `timeout` passes)."""
        self._stop.set()
        if self._accepting is not None:
            self._accepting.join(timeout)
            self._accepting = None
        try:
            self._sock.close()
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.intake.held_back(everything=True)  # what is still held back, from any host, is said
