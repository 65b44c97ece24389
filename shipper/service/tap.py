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
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from prometheus_client.exposition import ThreadingWSGIServer

if TYPE_CHECKING:
    from shipper.delivery.closed import Item
    from shipper.delivery.sender import Sender

DEFAULT_RATE = 10.0
BUFFER_EVENTS = 10_000  # per reader; beyond it a batch is lost to that reader, never waited for
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

    def __init__(self, sink: str | None, capacity: int = BUFFER_EVENTS):
        self.sink = sink  # None: every sink
        self.capacity = capacity
        self.lock = threading.Lock()
        self.batches: deque[tuple[str, list[bytes]]] = deque()
        self.pending = 0
        self.lost = 0
        self.ready = threading.Event()

    def offer(self, sink: str, events: list[bytes]) -> None:
        """A sender's thread: append or lose, never wait."""
        if self.sink is not None and self.sink != sink:
            return
        with self.lock:
            if self.pending + len(events) > self.capacity:
                self.lost += len(events)
                return
            self.batches.append((sink, events))
            self.pending += len(events)
        self.ready.set()

    def take(self, timeout: float) -> list[tuple[str, list[bytes]]]:
        self.ready.wait(timeout)
        with self.lock:
            taken = list(self.batches)
            self.batches.clear()
            self.pending = 0
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
        for reader in self.readers:
            reader.offer(sink, events)

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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a scrape every 15 s is not worth a log line


class TapServer(ThreadingWSGIServer):
    """The metrics endpoint's server: /tap to the hub, every other path to the metrics; shut down with the hub."""

    hub: TapHub

    def shutdown(self) -> None:
        self.hub.close()
        super().shutdown()


def serve_http(host: str, port: int, metrics: WSGIApp, hub: TapHub) -> TapServer:
    """Listen on host:port (IPv4 or IPv6, as the host says) in a daemon thread. OSError when it cannot."""
    tap = tap_app(hub)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return (tap if environ.get("PATH_INFO") == "/tap" else metrics)(environ, start_response)

    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class = type("TapServer", (TapServer,), {"address_family": family})
    server = cast(TapServer, make_server(str(sockaddr[0]), port, app, server_class, handler_class=_QuietHandler))
    server.hub = hub
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
