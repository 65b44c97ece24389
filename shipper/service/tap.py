"""`GET /tap` on the metrics endpoint: the events as the senders hand them to the vendors, streamed as NDJSON to
whoever is attached (`kong-ship tap`), like `vector tap`.

What is shown is the bytes of each event the sink made, so after every mask: what the masks removed was never
in them. Each line is `{"sink": NAME, "event": EVENT}`; a line `{"tap": {...}}` comes first and then every
second (what was shown, filtered, over the rate, lost), which also finds a reader that went away.

Nobody attached costs the senders nothing per event and one attribute check per batch (`Sender.tap` is None).
A reader never slows a sender: a sender only appends the batch to each reader's bounded buffer, under a lock
held for that append, and a full buffer loses the batch (counted); filtering, the rate limit and writing to
the socket happen in the reader's own HTTP thread. Local only: a peer that is not a loopback address gets 403,
whatever address the metrics listen on (Prometheus may scrape from elsewhere; the events are not for it).

Query parameters: `sink=NAME`, `contains=TEXT` (repeatable: every text in the event's JSON), `field=PATH=VALUE`
(repeatable: the dotted PATH's value, as JSON text for a non-string, equals VALUE), `rate=N` events per second
(default 10, 0 for no limit).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, make_server

import orjson
from prometheus_client.exposition import ThreadingWSGIServer

if TYPE_CHECKING:
    from shipper.delivery.closed import Item
    from shipper.delivery.sender import Sender

DEFAULT_RATE = 10.0
BUFFER_EVENTS = 10_000  # per reader; beyond it a batch is lost to that reader, never waited for
BUFFER_BYTES = 16 << 20  # and in bytes, as the queue is: 10,000 large events held for a stalled reader were a GiB
MAX_CONNECTIONS = 64  # served at once (scrapes, taps); more are closed at once: a thread each, never unbounded
IDLE_TIMEOUT = 30.0  # seconds a connection may send no request, or a reader take none of the bytes sent to it
STATS_INTERVAL = 1.0  # seconds between the {"tap": ...} lines

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class EventFilter:
    """Which events a reader wants: every `contains` text in the event's JSON, every `fields` PATH equal."""

    def __init__(self, contains: Iterable[str] = (), fields: Iterable[tuple[str, str]] = ()):
        self.contains = [text.encode() for text in contains]
        self.fields = [(path.split("."), value) for path, value in fields]

    @staticmethod
    def parse_field(text: str) -> tuple[str, str]:
        path, eq, value = text.partition("=")
        if not eq or not path or any(not part for part in path.split(".")):
            raise ValueError(f"field {text!r}: expected PATH=VALUE, e.g. properties.status=500")
        return path, value

    def matches(self, event: bytes) -> bool:
        for text in self.contains:
            if text not in event:
                return False
        if not self.fields:
            return True
        try:
            document = orjson.loads(event)
        except orjson.JSONDecodeError:
            return False
        return all(_text(_lookup(document, path)) == value for path, value in self.fields)


def _lookup(document: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(document, dict):
            document = document.get(part)
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return None
    return document


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class Allowance:
    """At most `rate` events a second, a second's worth at once (0: no limit)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> bool:
        if not self.rate:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Reader:
    """One attached reader: the batches handed over since it last looked, bounded."""

    def __init__(self, sink: str | None, capacity: int = BUFFER_EVENTS, capacity_bytes: int = BUFFER_BYTES):
        self.sink = sink  # None: every sink
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.lock = threading.Lock()
        self.batches: deque[tuple[str, list[bytes]]] = deque()
        self.pending = 0
        self.pending_bytes = 0
        self.lost = 0
        self.ready = threading.Event()

    def offer(self, sink: str, events: list[bytes], nbytes: int) -> None:
        """A sender's thread: append or lose, never wait. `nbytes`: the events' size, counted once per batch."""
        if self.sink is not None and self.sink != sink:
            return
        with self.lock:
            if self.pending + len(events) > self.capacity or self.pending_bytes + nbytes > self.capacity_bytes:
                self.lost += len(events)
                return
            self.batches.append((sink, events))
            self.pending += len(events)
            self.pending_bytes += nbytes
        self.ready.set()

    def take(self, timeout: float) -> list[tuple[str, list[bytes]]]:
        self.ready.wait(timeout)
        with self.lock:
            taken = list(self.batches)
            self.batches.clear()
            self.pending = self.pending_bytes = 0
            self.ready.clear()
        return taken


class TapHub:
    """The readers of one pipeline's senders. While one is attached, every sender's `tap` is `offer`."""

    def __init__(self, senders: Iterable[Sender]):
        self.senders = list(senders)
        self.sinks = [sender.sink.name for sender in self.senders]
        self.readers: tuple[Reader, ...] = ()  # replaced, never changed in place: senders iterate it unlocked
        self.lock = threading.Lock()
        self.closed = threading.Event()

    def attach(self, reader: Reader) -> None:
        with self.lock:
            self.readers = (*self.readers, reader)
            for sender in self.senders:
                sender.tap = self.offer

    def detach(self, reader: Reader) -> None:
        with self.lock:
            self.readers = tuple(r for r in self.readers if r is not reader)
            if not self.readers:
                for sender in self.senders:
                    sender.tap = None

    def offer(self, sink: str, items: list[Item]) -> None:
        events = [item[3] for item in items]
        nbytes = sum(map(len, events))
        for reader in self.readers:
            reader.offer(sink, events, nbytes)

    def close(self) -> None:
        self.closed.set()

    def stream(self, reader: Reader, wanted: EventFilter, rate: float) -> Iterator[bytes]:
        """The reader's NDJSON, until the hub closes or the reader goes away (the next write fails, wsgiref
        closes this generator, and `finally` detaches it)."""
        allowance = Allowance(rate)
        counts = {"shown": 0, "filtered": 0, "over_rate": 0}
        names = {sink: orjson.dumps(sink) for sink in self.sinks}

        def stats() -> bytes:
            return orjson.dumps({"tap": {"sinks": self.sinks, "rate": rate, **counts, "lost": reader.lost}}) + b"\n"

        self.attach(reader)
        try:
            yield stats()  # at once: wsgiref sends the status line with the first bytes
            said = time.monotonic()
            while not self.closed.is_set():
                out = []
                for sink, events in reader.take(STATS_INTERVAL):
                    for event in events:
                        if not wanted.matches(event):
                            counts["filtered"] += 1
                        elif not allowance.take():
                            counts["over_rate"] += 1
                        else:
                            counts["shown"] += 1
                            out.append(b'{"sink":' + names[sink] + b',"event":' + event + b"}\n")
                if out:
                    yield b"".join(out)
                if time.monotonic() - said >= STATS_INTERVAL:
                    said = time.monotonic()
                    yield stats()
        finally:
            self.detach(reader)


def is_local(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def tap_app(hub: TapHub) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def refuse(status: str, message: str) -> list[bytes]:
            start_response(status, [("Content-Type", "application/json")])
            return [orjson.dumps({"error": message}) + b"\n"]

        if not is_local(environ.get("REMOTE_ADDR", "")):
            return refuse("403 Forbidden", "the tap is local only: connect from this host")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        sink = (query.get("sink") or [None])[-1] or None
        if sink is not None and sink not in hub.sinks:
            return refuse("404 Not Found", f"no sink {sink} in this run (sinks: {', '.join(hub.sinks)})")
        try:
            rate = float((query.get("rate") or [DEFAULT_RATE])[-1])
            if not rate >= 0 or rate == float("inf"):
                raise ValueError(f"rate {rate}: expected a number of events per second, 0 for no limit")
            wanted = EventFilter(query.get("contains", []), [EventFilter.parse_field(f) for f in query.get("field", [])])
        except ValueError as exc:
            return refuse("400 Bad Request", str(exc))
        start_response("200 OK", [("Content-Type", "application/x-ndjson"), ("Cache-Control", "no-store")])
        return hub.stream(Reader(sink), wanted, rate)

    return app


class _QuietServerHandler(ServerHandler):
    def log_exception(self, exc_info: Any) -> None:
        if isinstance(exc_info[1], OSError):
            return  # a reader that went silent (IDLE_TIMEOUT) or away: no traceback in the journal for that
        super().log_exception(exc_info)


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT  # a socket timeout on every read and write of the connection (StreamRequestHandler)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a scrape every 15 s is not worth a log line

    def handle(self) -> None:
        """wsgiref's, with a handler that keeps quiet about a reader gone away, and a connection that sent no
        request within the timeout (or sent bytes that end in an error) closed without a traceback."""
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():  # an error answer is sent
                return
            handler = _QuietServerHandler(self.rfile, cast(Any, self.wfile), self.get_stderr(), self.get_environ(),
                                          multithread=False)
            handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref's back-pointer for logging
            handler.run(self.server.get_app())  # type: ignore[attr-defined]
        except OSError:
            self.close_connection = True


class TapServer(ThreadingWSGIServer):
    """The metrics endpoint's server: /tap to the hub, every other path to the metrics; shut down with the hub.
    At most `slots` connections at once, each a thread: one more is closed at once (whoever can reach the port
    could otherwise open thousands, each holding a thread, however long it likes)."""

    hub: TapHub
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self.slots.release()

    def shutdown(self) -> None:
        self.hub.close()
        super().shutdown()


def serve_http(host: str, port: int, metrics: WSGIApp, hub: TapHub, *, connections: int = MAX_CONNECTIONS,
               idle_timeout: float = IDLE_TIMEOUT) -> TapServer:
    """Listen on host:port (IPv4 or IPv6, as the host says) in a daemon thread. OSError when it cannot."""
    tap = tap_app(hub)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return (tap if environ.get("PATH_INFO") == "/tap" else metrics)(environ, start_response)

    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class = type("TapServer", (TapServer,), {"address_family": family})
    handler_class = type("TapHandler", (_QuietHandler,), {"timeout": idle_timeout})
    server = cast(TapServer, make_server(str(sockaddr[0]), port, app, server_class, handler_class=handler_class))
    server.hub = hub
    server.slots = threading.BoundedSemaphore(connections)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
