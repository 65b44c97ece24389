"""Loopback fakes of Segment and Moesif that count what arrives without keeping it.

They check what the vendor checks on every request (path, credentials, Content-Type, gzip, body size limits,
batch shape) and count each record by the `seq` it carries in one byte per seq, so that a run proves nothing
was missing and nothing doubled without storing a single message. For a record that carries the time its line was appended (`appended`
query argument, monotonic ns), they note the time from the append to the reply.

They must not be the bottleneck: the base server sets TCP_NODELAY and writes each reply in one sendall, the
bodies are gunzipped by zlib (which releases the GIL) and parsed once by orjson. `capacity()` measures how
many records per second a fake takes when nothing else runs.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.fakes.httpfake import FakeHTTPServer, Request, Response  # noqa: E402

SEGMENT_MAX_BODY = 500_000  # bytes, uncompressed (Segment: "less than 500 KB")
SEGMENT_MAX_MESSAGES = 2_500
MOESIF_MAX_BODY = 50_000_000
CONFIG_ETAG = "bench-config-1"


def _reply(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, body)


class Rejected(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def _gunzip(req: Request, limit: int) -> bytes:
    encoding = req.headers.get("content-encoding", "identity").lower()
    if encoding == "identity":
        body = req.body
    elif encoding in ("gzip", "deflate"):
        try:
            # wbits 47: gzip or zlib header, detected; the limit stops a decompression bomb early.
            inflater = zlib.decompressobj(47)
            body = inflater.decompress(req.body, limit + 1)
        except zlib.error as exc:
            raise Rejected(400, f"bad {encoding} body: {exc}") from None
    else:
        raise Rejected(415, f"unsupported Content-Encoding {encoding!r}")
    if len(body) > limit:
        raise Rejected(413, f"body over {limit} bytes uncompressed")
    return body


class CountingVendor(FakeHTTPServer):
    """Shared counting: `seen[seq]` is how many times record seq arrived (saturating at 255)."""

    vendor = "vendor"

    def __init__(self, expected: int) -> None:
        super().__init__(record=False)
        self.seen = bytearray(expected)
        self.records = 0  # records accepted, duplicates included
        self.unexpected = 0  # records whose seq is missing or out of range
        self.batches = 0
        self.errors: list[str] = []  # why requests were refused (a run with any is not valid)
        self.latencies_ns: list[int] = []
        self.last_ack = 0.0  # monotonic time of the last accepted batch

    # -- subclasses: parse a request into the seq (and appended ns) of each record ------------------------
    def records_of(self, req: Request) -> list[tuple[int | None, int | None]]:
        raise NotImplementedError

    def ok(self) -> Response:
        return _reply(200, b'{"success":true}')

    def respond(self, req: Request) -> Response:
        try:
            found = self.records_of(req)
        except Rejected as exc:
            with self._lock:
                self.errors.append(f"{exc.status} {exc}")
            self.notify()
            return _reply(exc.status, orjson.dumps({"error": str(exc)}))
        now_ns = time.monotonic_ns()
        seen = self.seen
        size = len(seen)
        with self._lock:
            for seq, appended in found:
                if seq is None or not 0 <= seq < size:
                    self.unexpected += 1
                    continue
                if seen[seq] < 255:
                    seen[seq] += 1
                if appended is not None:
                    self.latencies_ns.append(now_ns - appended)
            self.records += len(found)
            self.batches += 1
            self.last_ack = now_ns / 1e9
        self.notify()
        return self.ok()

    # -- results -----------------------------------------------------------------------------------------
    def tally(self, count: int | None = None) -> dict[str, int]:
        """Of seqs 0..count-1: how many arrived once, never, more than once."""
        with self._lock:
            view = bytes(self.seen[: count if count is not None else len(self.seen)])
        missing = view.count(0)
        once = view.count(1)
        return {"once": once, "missing": missing, "doubled": len(view) - missing - once, "unexpected": self.unexpected}

    def latencies(self) -> list[int]:
        """Append → reply, ns, of every record that carried its append time."""
        with self._lock:
            return list(self.latencies_ns)

    def received(self) -> int:
        with self._lock:
            return self.records


def _seq_from_query(query: Any) -> tuple[int | None, int | None]:
    if not isinstance(query, dict):
        return None, None
    seq, appended = query.get("seq"), query.get("appended")
    return (int(seq) if isinstance(seq, str) and seq.isdigit() else None,
            int(appended) if isinstance(appended, str) and appended.isdigit() else None)  # fmt: skip


def _seq_from_uri(uri: Any) -> tuple[int | None, int | None]:
    if not isinstance(uri, str):
        return None, None
    _, _, query = uri.partition("?")
    seq = appended = None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "seq" and value.isdigit():
            seq = int(value)
        elif key == "appended" and value.isdigit():
            appended = int(value)
    return seq, appended


class CountingSegment(CountingVendor):
    """`POST /v1/batch`, HTTP Basic with the write key as user name, `{"batch": [...], "sentAt": ...}`."""

    vendor = "segment"

    def __init__(self, write_key: str, expected: int) -> None:
        super().__init__(expected)
        self._auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()

    def messages_of(self, req: Request) -> list[dict]:
        """The batch's messages, checked as Segment checks them; Rejected otherwise."""
        if req.method != "POST" or req.path.split("?")[0] != "/v1/batch":
            raise Rejected(404, f"no route for {req.method} {req.path}")
        if req.headers.get("authorization") != self._auth:
            raise Rejected(401, "invalid write key")
        if req.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise Rejected(400, "Content-Type must be application/json")
        body = _gunzip(req, SEGMENT_MAX_BODY - 1)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Rejected(400, f"invalid JSON: {exc}") from None
        batch = data.get("batch") if isinstance(data, dict) else None
        if not isinstance(batch, list) or not 1 <= len(batch) <= SEGMENT_MAX_MESSAGES:
            raise Rejected(400, "batch must be a list of 1..2500 messages")
        for msg in batch:
            if not isinstance(msg, dict) or msg.get("type") != "track" or not msg.get("messageId"):
                raise Rejected(400, "every message must be a track call with a messageId")
            if not (msg.get("userId") or msg.get("anonymousId")):
                raise Rejected(400, "userId or anonymousId is required")
        return batch

    def records_of(self, req: Request) -> list[tuple[int | None, int | None]]:
        out = []
        for msg in self.messages_of(req):
            props = msg.get("properties")
            out.append(_seq_from_query(props.get("queryObject")) if isinstance(props, dict) else (None, None))
        return out


class CountingMoesif(CountingVendor):
    """`POST /v1/events/batch` (a JSON array of events) and `GET /v1/config`, with `X-Moesif-Application-Id`."""

    vendor = "moesif"

    def __init__(self, application_id: str, expected: int) -> None:
        super().__init__(expected)
        self.application_id = application_id
        self.config_fetches = 0

    def respond(self, req: Request) -> Response:
        if req.method == "GET" and req.path.split("?")[0] == "/v1/config":
            if req.headers.get("x-moesif-application-id") != self.application_id:
                return _reply(401, b'{"error":"invalid application id"}')
            with self._lock:
                self.config_fetches += 1
            config = {"sample_rate": 100, "user_sample_rate": {}, "company_sample_rate": {}, "regex_config": []}
            return _reply(200, orjson.dumps(config), {"X-Moesif-Config-ETag": CONFIG_ETAG, "ETag": CONFIG_ETAG})
        return super().respond(req)

    def ok(self) -> Response:
        return _reply(201, b"", {"X-Moesif-Config-ETag": CONFIG_ETAG})

    def records_of(self, req: Request) -> list[tuple[int | None, int | None]]:
        if req.method != "POST" or req.path.split("?")[0] != "/v1/events/batch":
            raise Rejected(404, f"no route for {req.method} {req.path}")
        if req.headers.get("x-moesif-application-id") != self.application_id:
            raise Rejected(401, "invalid application id")
        body = _gunzip(req, MOESIF_MAX_BODY)
        try:
            events = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Rejected(400, f"invalid JSON: {exc}") from None
        if not isinstance(events, list) or not events:
            raise Rejected(400, "body must be a non-empty JSON array of events")
        out = []
        for event in events:
            request = event.get("request") if isinstance(event, dict) else None
            response = event.get("response") if isinstance(event, dict) else None
            if not isinstance(request, dict) or not isinstance(response, dict) or not request.get("time"):
                raise Rejected(400, "every event needs request.time and a response")
            out.append(_seq_from_uri(request.get("uri")))
        return out


# -- the fake alone ------------------------------------------------------------------------------------------
def timed_threads(threads: list[threading.Thread]) -> float:
    """Seconds from starting `threads` to the end of the last one."""
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def posters(port: int, raw_request: bytes, rounds: int, connections: int, errors: list[str]) -> list[threading.Thread]:
    """`connections` threads, not yet started, each a `post_loop` of `raw_request` to `port`."""
    return [threading.Thread(target=post_loop, args=(port, raw_request, rounds, errors)) for _ in range(connections)]


def post_loop(port: int, raw_request: bytes, rounds: int, errors: list[str]) -> None:
    """Post the same pre-built request `rounds` times on one keep-alive connection, reading each reply."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    try:
        for _ in range(rounds):
            sock.sendall(raw_request)
            status = reader.readline()
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            reader.read(length)
            if b" 20" not in status:
                errors.append(status.decode(errors="replace").strip())
                return
    finally:
        reader.close()
        sock.close()


def capacity(
    make_fake: Callable[[int], CountingVendor], raw_request: Callable[[int], bytes], per_batch: int,
    rounds: int, connections: int = 2,
) -> float:
    """Records per second a fake accepts from `connections` clients posting pre-built batches of `per_batch`
    records, `rounds` each. The clients run in this process too, so the figure is a lower bound."""
    with make_fake(per_batch) as fake:
        request = raw_request(fake.port)
        errors: list[str] = []
        elapsed = timed_threads(posters(fake.port, request, rounds, connections, errors))
        if errors or fake.errors:
            raise RuntimeError(f"the fake refused the capacity batches: {(errors + fake.errors)[:3]}")
        return fake.received() / elapsed


def raw_post(port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
