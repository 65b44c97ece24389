"""`--dry-run`: every sink builds its requests as it would (filters, sampling, masks, batching all applied), and
a transport of our own prints each one instead of sending it.

One JSON line per request on standard output: `{"sink", "method", "url", "headers", "body"}`, the body
gunzipped and parsed (NDJSON, the stdout sink's body, as a list of its documents), credential headers
replaced by `[redacted]`. The transport answers 200, and Moesif's `GET /v1/config` with "keep everything"
(the account's real sampling is not fetched: that would be a request). Nothing is delivered, so no checkpoint
may move: the run keeps its checkpoints and dead letters in a throwaway directory, deleted at exit.

The sinks themselves are untouched: `DryRunSink` wraps one and differs only in its transport, so what is
printed is what `sink.request(events)` made, byte for byte before compression.
"""

from __future__ import annotations

import atexit
import gzip
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import httpx
import orjson

from shipper.output import SharedOutput
from shipper.processors.names import SECRET_KEYS, is_secret_name, normalize
from shipper.processors.redact import redact_url
from shipper.sinks.base import FATAL, Sink, Verdict, WrappedSink

REDACTED = "[redacted]"
# Header names holding any of these words carry a credential (or, for a signature, something that lets a
# reader replay the request): X-Moesif-Application-Id, Authorization, x-kong-signature, a webhook's X-Api-Key.
_CREDENTIAL_WORDS = ("auth", "key", "token", "secret", "signature", "password", "cookie", "credential",
                     "session", "application_id")
STDOUT_CLOSED = 599  # our answer when standard output went away (`... --dry-run | head`)


def is_credential_header(name: str) -> bool:
    norm = normalize(name)
    return is_secret_name(norm, SECRET_KEYS) or any(word in norm for word in _CREDENTIAL_WORDS)


def request_body(request: httpx.Request) -> Any:
    """The body as one JSON value: gunzipped, parsed; NDJSON as the list of its documents; else the text."""
    raw = request.read()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        raw = gzip.decompress(raw)
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def describe(sink: str, request: httpx.Request) -> dict[str, Any]:
    """What the dry run prints for one request."""
    headers = {name: REDACTED if is_credential_header(name) else value for name, value in request.headers.items()}
    return {"sink": sink, "method": request.method, "url": redact_url(str(request.url)), "headers": headers,
            "body": request_body(request)}


class RequestPrinter:
    """Writes the requests of every sink to one stream, a whole line at a time (senders run in threads)."""

    def __init__(self, stream: BinaryIO | None = None):
        self.output = SharedOutput(stream)
        self.printed = 0

    @property
    def failure(self) -> str:
        """Why standard output cannot be written, once it cannot: nothing is printed after."""
        return self.output.failure

    def write(self, record: dict[str, Any]) -> bool:
        if not self.output.write(orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS) + b"\n"):
            return False
        with self.output.lock:
            self.printed += 1
        return True


class DryRunTransport(httpx.BaseTransport):
    """Prints instead of sending; answers as the vendor would to a good request."""

    def __init__(self, sink: str, printer: RequestPrinter):
        self.sink = sink
        self.printer = printer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.printer.write(describe(self.sink, request)):
            return httpx.Response(STDOUT_CLOSED, request=request, text="stdout closed")
        if request.method == "GET" and request.url.path.endswith("/v1/config"):
            # Moesif's sampling configuration: keep every event (the real one is not asked for).
            return httpx.Response(200, request=request, json={"sample_rate": 100, "user_sample_rate": {},
                                                              "company_sample_rate": {}})
        return httpx.Response(200, request=request, json={})


class DryRunSink(WrappedSink):
    """A sink that prints its requests: `inner` in everything but the transport."""

    def __init__(self, inner: Sink, printer: RequestPrinter):
        super().__init__(inner, inner.name)
        self.printer = printer

    def judge(self, response: httpx.Response) -> Verdict:
        if response.status_code == STDOUT_CLOSED:
            return Verdict(FATAL, self.printer.failure or "standard output was closed")
        return self.inner.judge(response)

    def transport(self) -> httpx.BaseTransport | None:
        return DryRunTransport(self.name, self.printer)  # Moesif's /v1/config (use_client) goes through it too


class DryRun:
    """A run's dry-run mode, or its absence (then every method changes nothing): the fields that give the run
    a throwaway state directory, the sinks wrapped, and the line said after the summary."""

    def __init__(self, on: bool, stream: BinaryIO | None = None):
        self.on = on
        self.state_dir: str | None = None
        self.printer = RequestPrinter(stream) if on else None

    @classmethod
    def for_options(cls, kw: Mapping[str, Any]) -> DryRun:
        return cls(bool(kw.get("dry_run")))

    def fields(self) -> dict[str, Any]:
        """Settings fields for `prepare`: checkpoints and dead letters in a fresh private directory (mkdtemp:
        0700), so nothing the real runs rely on is read or moved."""
        if not self.on:
            return {}
        self.state_dir = tempfile.mkdtemp(prefix="kong-ship-dry-run-")
        atexit.register(shutil.rmtree, self.state_dir, True)
        return {"state_dir": self.state_dir, "dead_letter": None}

    def wrap(self, sinks: list[Any]) -> list[Any]:
        if self.printer is None:
            return sinks
        return [DryRunSink(sink, self.printer) for sink in sinks]

    def report(self, say: Callable[[str, str], None]) -> None:
        """The summary's last line (`say`: the command's way of writing stderr, text or JSON)."""
        if self.printer is None:
            return
        say("info", f"dry run: {self.printer.printed:,} request(s) printed on standard output, none sent; "
                    "no checkpoint was read or moved (a throwaway state directory, deleted at exit)")
