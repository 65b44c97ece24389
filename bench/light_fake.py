"""A light checking fake of Segment and Moesif, in its own process, for throughput runs (issue 16).

    python -m bench.light_fake --expected N [--segment-key KEY] [--moesif-app ID]

On two cores the in-process counting fakes (bench/fake_vendors.py: a thread per connection, every body parsed
by orjson) cost 14–24 µs per record on the cores kong-ship needs. This one is one process, one thread and a
`selectors` loop of minimal HTTP/1.1 keep-alive connections; per request it checks what makes a run valid:
the route, the credentials (Segment: HTTP Basic with the write key; Moesif: X-Moesif-Application-Id), the
Content-Type, a gzip (or identity) body that inflates within the vendor's size limit, and then counts each
record's `seq` once, found in the bytes without parsing the JSON:

- Segment: `"seq":"N"` (the first key of `properties.queryObject`; the query string and queryJson hold it too,
  but not in that form), one per `"messageId":"`;
- Moesif: `"uri":"…?seq=N` (`request.uri`), one per `"transaction_id":"`.

A message without its seq counts as unexpected; a seq seen twice as doubled; the run is valid only when each
expected seq arrived exactly once and no request was refused. It also answers Moesif's `GET /v1/config`.

It prints one JSON line with its ports when ready, then answers commands on stdin, one JSON line each:
`tally` (per vendor: once, missing, doubled, unexpected, records, batches, errors; and the CPU seconds the
process used since it was ready) and `quit`. `LightFakes` drives it from the benchmark; `capacity()` measures
how many records per second it takes alone, and what each costs it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from typing import Any

try:  # ISA-L inflates about twice as fast as zlib; either reads any gzip stream
    from isal import isal_zlib as inflate_lib
except ImportError:  # pragma: no cover - isal is a dependency of kong-ship
    inflate_lib = zlib  # type: ignore[no-redef]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENT_MAX_BODY = 500_000  # bytes, uncompressed (Segment: "less than 500 KB")
MOESIF_MAX_BODY = 50_000_000
CONFIG_ETAG = "bench-config-1"
MOESIF_CONFIG = b'{"sample_rate":100,"user_sample_rate":{},"company_sample_rate":{},"regex_config":[]}'


class Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class Vendor:
    """One fake vendor's checks and counts (`seen[seq]`: arrivals of record seq, saturating at 255)."""

    name = ""
    route = b""
    seq_pattern: re.Pattern[bytes]
    message_marker = b""
    max_body = 0
    ok_status = b"200 OK"
    ok_body = b""
    ok_headers = b""

    def __init__(self, expected: int) -> None:
        self.seen = bytearray(expected)
        self.records = self.unexpected = self.batches = self.gzipped = 0
        self.errors: list[str] = []

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        raise NotImplementedError

    def handle(self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes) -> tuple[bytes, bytes, bytes]:
        """(status line, extra header lines, body) of the answer to one request."""
        try:
            return self.accept(method, path, headers, body)
        except Refused as exc:
            if len(self.errors) < 20:
                self.errors.append(f"{exc.status} {exc}")
            return b"%d Refused" % exc.status, b"", json.dumps({"error": str(exc)}).encode()

    def accept(self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes) -> tuple[bytes, bytes, bytes]:
        if method != b"POST" or path.split(b"?")[0] != self.route:
            raise Refused(404, f"no route for {method.decode()} {path.decode(errors='replace')}")
        if not self.authorized(headers):
            raise Refused(401, "invalid credentials")
        if headers.get(b"content-type", b"").split(b";")[0].strip().lower() != b"application/json":
            raise Refused(400, "Content-Type must be application/json")
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding == b"gzip":
            try:
                inflater = inflate_lib.decompressobj(31)
                data = inflater.decompress(body, self.max_body + 1)
            except Exception as exc:  # isal and zlib raise their own error types
                raise Refused(400, f"bad gzip body: {exc}") from None
            if not inflater.eof and len(data) <= self.max_body:
                raise Refused(400, "truncated gzip body")
            self.gzipped += 1
        elif encoding == b"identity":
            data = body
        else:
            raise Refused(415, f"unsupported Content-Encoding {encoding.decode(errors='replace')!r}")
        if len(data) > self.max_body:
            raise Refused(413, f"body over {self.max_body} bytes uncompressed")
        seqs = self.seq_pattern.findall(data)
        messages = data.count(self.message_marker)
        if not messages:
            raise Refused(400, "no messages in the batch")
        seen, size = self.seen, len(self.seen)
        for raw in seqs:
            seq = int(raw)
            if seq < size:
                if seen[seq] < 255:
                    seen[seq] += 1
            else:
                self.unexpected += 1
        self.unexpected += abs(messages - len(seqs))
        self.records += messages
        self.batches += 1
        return self.ok_status, self.ok_headers, self.ok_body

    def tally(self) -> dict[str, Any]:
        view = bytes(self.seen)
        missing, once = view.count(0), view.count(1)
        return {"once": once, "missing": missing, "doubled": len(view) - missing - once, "unexpected": self.unexpected,
                "records": self.records, "batches": self.batches, "gzipped": self.gzipped, "errors": self.errors[:5]}


class Segment(Vendor):
    name, route, max_body = "segment", b"/v1/batch", SEGMENT_MAX_BODY - 1
    seq_pattern = re.compile(rb'"seq":"(\d+)"')
    message_marker = b'"messageId":"'
    ok_body = b'{"success":true}'

    def __init__(self, expected: int, write_key: str) -> None:
        super().__init__(expected)
        self.auth = b"Basic " + base64.b64encode(f"{write_key}:".encode())

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        return headers.get(b"authorization") == self.auth


class Moesif(Vendor):
    name, route, max_body = "moesif", b"/v1/events/batch", MOESIF_MAX_BODY
    seq_pattern = re.compile(rb'"uri":"[^"?]*\?seq=(\d+)')
    message_marker = b'"transaction_id":"'
    ok_status = b"201 Created"
    ok_headers = b"X-Moesif-Config-ETag: " + CONFIG_ETAG.encode() + b"\r\n"

    def __init__(self, expected: int, application_id: str) -> None:
        super().__init__(expected)
        self.application_id = application_id.encode()

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        return headers.get(b"x-moesif-application-id") == self.application_id

    def handle(self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes) -> tuple[bytes, bytes, bytes]:
        if method == b"GET" and path.split(b"?")[0] == b"/v1/config":
            if not self.authorized(headers):
                return b"401 Unauthorized", b"", b'{"error":"invalid application id"}'
            etag = CONFIG_ETAG.encode()
            return b"200 OK", b"X-Moesif-Config-ETag: " + etag + b"\r\nETag: " + etag + b"\r\n", MOESIF_CONFIG
        return super().handle(method, path, headers, body)


# -- the server ----------------------------------------------------------------------------------------------
def _answer(conn: socket.socket, buf: bytearray, vendor: Vendor) -> bool:
    """Answer every complete request in `buf` (consumed); False when the connection is to be closed."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return True
        head = bytes(buf[:end]).split(b"\r\n")
        try:
            method, path, _ = head[0].split(b" ", 2)
        except ValueError:
            return False
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            conn.sendall(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            vendor.errors.append("411 chunked body")
            return False
        length = int(headers.get(b"content-length", b"0") or 0)
        if len(buf) < end + 4 + length:
            return True
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        status, extra, payload = vendor.handle(method, path, headers, body)
        close = headers.get(b"connection", b"").lower() == b"close"
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(payload)).encode() + b"\r\n" + extra + (b"Connection: close\r\n" if close else b"")
                     + b"\r\n" + payload)  # fmt: skip
        if close:
            return False


def serve(vendors: list[Vendor]) -> None:
    """Serve each vendor on its own loopback port until `quit` or the end of stdin."""
    selector = selectors.DefaultSelector()
    ports = {}
    for vendor in vendors:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        selector.register(listener, selectors.EVENT_READ, ("listen", vendor, None))
        ports[vendor.name] = listener.getsockname()[1]
    selector.register(sys.stdin, selectors.EVENT_READ, ("control", None, None))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ready = usage.ru_utime + usage.ru_stime
    print(json.dumps({"ports": ports, "pid": os.getpid()}), flush=True)
    while True:
        for key, _ in selector.select():
            kind, vendor, buf = key.data
            if kind == "listen":
                conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ, ("conn", vendor, bytearray()))
            elif kind == "conn":
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    data = conn.recv(1 << 18)
                except ConnectionError:
                    data = b""
                if data:
                    buf += data
                    try:
                        keep = _answer(conn, buf, vendor)
                    except (ConnectionError, ValueError):
                        keep = False
                    if keep:
                        continue
                selector.unregister(conn)
                conn.close()
            else:
                command = sys.stdin.readline().strip()
                if command in ("", "quit"):
                    return
                usage = resource.getrusage(resource.RUSAGE_SELF)
                report = {v.name: v.tally() for v in vendors}
                report["cpu_seconds"] = usage.ru_utime + usage.ru_stime - cpu_ready  # type: ignore[assignment]
                print(json.dumps(report), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--expected", type=int, required=True, help="records of seq 0..N-1 expected at each vendor")
    ap.add_argument("--segment-key", help="serve a fake Segment for this write key")
    ap.add_argument("--moesif-app", help="serve a fake Moesif for this application id")
    args = ap.parse_args()
    vendors: list[Vendor] = []
    if args.segment_key:
        vendors.append(Segment(args.expected, args.segment_key))
    if args.moesif_app:
        vendors.append(Moesif(args.expected, args.moesif_app))
    if not vendors:
        ap.error("no vendor: give --segment-key and/or --moesif-app")
    serve(vendors)


# -- driving it from the benchmark ---------------------------------------------------------------------------
class LightFakes:
    """The light fake process, as a context manager: `url(vendor)`, `tally()`, `vendor(name)`."""

    def __init__(self, expected: int, segment_key: str | None = None, moesif_app: str | None = None) -> None:
        argv = [sys.executable, "-m", "bench.light_fake", "--expected", str(expected)]
        argv += ["--segment-key", segment_key] if segment_key else []
        argv += ["--moesif-app", moesif_app] if moesif_app else []
        self.argv = argv
        self.expected = expected
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> LightFakes:
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the light fake did not start (exit {self.proc.wait()})")
        self.ports = json.loads(line)["ports"]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        try:
            self.proc.stdin.write("quit\n")  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, vendor: str) -> str:
        return f"http://127.0.0.1:{self.ports[vendor]}"

    def tally(self) -> dict[str, Any]:
        """Per vendor its counts, and `cpu_seconds` of the fake process since it was ready."""
        assert self.proc is not None
        with self._lock:
            self.proc.stdin.write("tally\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            return json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def vendor(self, name: str) -> LightVendor:
        return LightVendor(self, name)


class LightVendor:
    """One vendor of a LightFakes, with the counting fakes' reading methods (`url`, `received`, `tally`)."""

    def __init__(self, fakes: LightFakes, name: str) -> None:
        self.fakes, self.name = fakes, name
        self.url = fakes.url(name)

    def received(self) -> int:
        return int(self.fakes.tally()[self.name]["records"])

    def tally(self, count: int | None = None) -> dict[str, Any]:
        return dict(self.fakes.tally()[self.name])


def capacity(vendor: str, credential: str, raw_request: Callable[[int], bytes], per_batch: int, rounds: int,
             connections: int = 2) -> dict[str, float]:
    """Records/s the light fake takes from `connections` clients (threads of this process) posting one
    pre-built batch of `per_batch` records `rounds` times each, and the CPU µs each record cost the fake."""
    from bench.fake_vendors import posters, timed_threads  # noqa: PLC0415 - the bench process's, not the fake's

    keys = {"segment_key": credential} if vendor == "segment" else {"moesif_app": credential}
    with LightFakes(per_batch, **keys) as fakes:
        request = raw_request(fakes.ports[vendor])
        errors: list[str] = []
        threads = posters(fakes.ports[vendor], request, rounds, connections, errors)
        before = fakes.tally()["cpu_seconds"]
        elapsed = timed_threads(threads)
        report = fakes.tally()
    counts = report[vendor]
    if errors or counts["errors"]:
        raise RuntimeError(f"the light fake refused the capacity batches: {(errors + counts['errors'])[:3]}")
    records = counts["records"]
    return {"records_per_s": records / elapsed, "cpu_us_per_record": (report["cpu_seconds"] - before) / records * 1e6}


if __name__ == "__main__":
    main()
