"""The bounds `kong-ship receive` keeps on what clients may hold: bytes being read, header bytes, what a body's
JSON may weigh once parsed, time to send a request, warnings about refusals, and the spool's backlog."""

from __future__ import annotations

import errno
import http.client
import logging
import resource
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from shipper.threads import start_thread

log = logging.getLogger("kong-ship")

# What one body's JSON may hold, per byte of --max-body-bytes (so whatever that limit, Kong's batches that fit it
# pass). Each JSON object or array becomes a Python object of 56-64 bytes or more, and each record a spooled line
# (its envelope, ~100 bytes, and copies until the fsync): a 1 MiB body of `{}` (349,525 records) grew RSS by
# 150 MiB, `[[],…]` and nested arrays by 31-51 MiB before it was refused, where a 1 MiB batch of Kong records
# (1-3 KB each, one object or array per ~140 bytes) takes about 8 MiB.
STRUCTURE_BYTES = 32  # one JSON object or array per 32 bytes: 32,768 in a body at 1 MiB (counted before parsing)
RECORD_BYTES = 256  # one record per 256 bytes: 4,096 in a body at 1 MiB (a Kong record weighs 1-3 KB)

ACCEPT_PAUSE = 0.1  # seconds a listener waits after an accept() failed for want of descriptors or memory
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Backlog:
    """Bytes written to the spool and not yet acknowledged by every sink. `measure` is costly (a stat per file
    and sink), so it runs at most every `ttl` seconds; bytes appended in between are added on top."""

    def __init__(self, measure: Callable[[], int], ttl: float = 0.1):
        self._measure = measure
        self._ttl = ttl
        self._lock = threading.Lock()
        self._base = 0
        self._since = 0
        self._at = float("-inf")

    def add(self, nbytes: int) -> None:
        with self._lock:
            self._since += nbytes

    def value(self) -> int:
        with self._lock:
            if time.monotonic() - self._at < self._ttl:
                return self._base + self._since
        base = self._measure()
        with self._lock:
            self._base, self._since, self._at = base, 0, time.monotonic()
            return self._base


class Throttled:
    """A warning at most every `every` seconds, with the count of what was held back."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._held = 0

    def warn(self, message: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        log.warning(message + (f" (and {held} more since the last such warning)" if held else ""), *args)


class HeaderBytes:
    """The request's file for its header lines only: at most `limit` bytes of them in all. The stdlib allows 100
    lines of 64 KiB each, held about three times over while parsed, before any check of ours: 60 connections
    without credentials held over 1 GiB. Past the limit, `http.client.LineTooLong` (the stdlib's 431)."""

    def __init__(self, rfile: Any, limit: int):
        self.rfile = rfile
        self.limit = limit
        self.left = limit
        self.passed = False

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self.rfile.readline(min(size, self.left + 1) if size >= 0 else self.left + 1)
        self.left -= len(line)
        if self.left < 0:
            self.passed = True
            raise http.client.LineTooLong(f"header lines over {self.limit} bytes")
        return line


def framing_error(headers: Any) -> str | None:
    """Why the request's headers frame its body ambiguously (RFC 9112 §6.3: answered 400 and closed), else None:
    several Transfer-Encoding headers, Content-Length values that differ, or one that is not ASCII digits only
    (Python's int() takes `+12` and `1_2`). A proxy in front that read the other value would take the rest of the
    body for the next request (request smuggling)."""
    if len(headers.get_all("Transfer-Encoding") or ()) > 1:
        return "several Transfer-Encoding headers"
    lengths = {value.strip(" \t") for value in headers.get_all("Content-Length") or ()}
    if len(lengths) > 1:
        return "Content-Length values that differ"
    if lengths and not all(value.isascii() and value.isdigit() for value in lengths):
        return "a Content-Length that is not a number"
    return None


def crowded_json(body: bytes, max_body_bytes: int) -> str | None:
    """Why the body holds more JSON objects and arrays than a body may (`STRUCTURE_BYTES`), before it is parsed;
    None when it does not. Braces and brackets inside strings are counted too (an overestimate: Kong's records
    hold few), at the cost of two passes of `bytes.count` (~0.1 ms a MiB each)."""
    limit = max_body_bytes // STRUCTURE_BYTES
    structures = body.count(b"{") + body.count(b"[")
    if structures <= limit:
        return None
    return (f"the body holds {structures:,} JSON objects and arrays, over {limit:,} (one per {STRUCTURE_BYTES} bytes "
            "of --max-body-bytes): nothing of this request was stored")


# What a body's JSON weighs once parsed, roughly: each object or array ~64 bytes, each value (after a comma) ~40
# (a small str, float or the slot pointing at it), on top of its bytes. A Kong record weighs about its size this
# way; the reading budget counts a body by its length, and that stands for what Kong's bodies cost parsed
# (~8 MiB for 1 MiB). Denser bodies are charged the rest: 1 MiB of 2-character strings or floats weighs 16-20 MiB.
STRUCTURE_WEIGHT = 64
VALUE_WEIGHT = 40
WEIGHT_PER_BYTE_CHARGED = 3  # a body is charged its length, or this fraction of its weight when that is more


def parsing_charge(body: bytes) -> int:
    """Bytes of the reading budget the body should take beyond its length once read, for what its JSON weighs
    parsed (0 for Kong's records; ~2 MiB for 1 MiB of tiny values). Commas and braces inside strings count too:
    an overestimate, at the cost of three passes of `bytes.count` (~0.1 ms a MiB each)."""
    structures = body.count(b"{") + body.count(b"[")
    weight = len(body) + STRUCTURE_WEIGHT * structures + VALUE_WEIGHT * body.count(b",")
    return max(0, weight // WEIGHT_PER_BYTE_CHARGED - len(body))


def too_many_records(records: int, max_body_bytes: int) -> str | None:
    """Why a body of this many records is refused (`RECORD_BYTES`); None when it is not."""
    limit = max_body_bytes // RECORD_BYTES
    if records <= limit:
        return None
    return (f"{records:,} records in one request, over {limit:,} (one per {RECORD_BYTES} bytes of --max-body-bytes; "
            "a Kong record weighs 1-3 KB): nothing of this request was stored")


def accept_failed(exc: OSError, warnings: Throttled, listener: str, wait: Callable[[float], Any] = time.sleep) -> None:
    """After a listener's accept() failed: out of file descriptors (or kernel memory), its socket stays readable
    and the connection stays queued, so going straight back to accept spun a CPU at 100 %, silently. Warn (at
    most every `warnings.every` seconds) and wait `ACCEPT_PAUSE` first; other errors (a timeout, a client gone
    before it was accepted) pass."""
    if exc.errno not in OUT_OF_RESOURCES:
        return
    warnings.warn("receive: %s: cannot accept connections (%s; open files limit %d): new ones wait",
                  listener, exc.strerror, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    wait(ACCEPT_PAUSE)


class Budget:
    """Bytes that may be reserved at once; `take` never waits (a refused client is told to come back)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self._used + n > self.limit:
                return False
            self._used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self._used -= n


class Deadlines:
    """Connections that must have sent their request by a deadline. A socket timeout bounds each wait, not the
    whole: a client trickling a byte at a time would hold its connection (and thread) forever. A watchdog shuts
    down the connections past their deadline, which wakes their blocked reads."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._armed: dict[socket.socket, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket) -> None:
        with self._lock:
            self._armed[sock] = time.monotonic() + self.seconds

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._armed.pop(sock, None)

    def start(self, on_death: Callable[[str], None]) -> None:
        self._thread = start_thread(self._watch, "receive-deadlines", on_death)

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(0.25, self.seconds / 4)):
            now = time.monotonic()
            with self._lock:
                late = [sock for sock, deadline in self._armed.items() if deadline <= now]
                for sock in late:
                    del self._armed[sock]
            for sock in late:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
