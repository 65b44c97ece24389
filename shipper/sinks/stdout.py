"""`--sink stdout`: the vendor-ready events as NDJSON on standard output, for a first run without an account
and for piping into other tools. The events are Segment `track` messages (the shape of the default vendor).

It goes through the same delivery path as the HTTP sinks: the request's body is the NDJSON, and the sink's
own transport writes it to stdout instead of the network.
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO, ClassVar

import httpx

from shipper.model import Transaction
from shipper.sinks.base import FATAL, OK, Verdict
from shipper.sinks.segment import DEFAULT_EVENT_NAME, SegmentSink
from shipper.sinks.segment import OPTIONS as SEGMENT_OPTIONS

# The event shape's options, shared with the Segment sink (the CLI lists each option once).
OPTIONS = [option for option in SEGMENT_OPTIONS if option[0][0] != "--segment-write-key-file"]


class _StdoutTransport(httpx.BaseTransport):
    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            self.stream.write(request.read())
            self.stream.flush()
        except BrokenPipeError:
            # `kong-ship ... | head`: the reader went away; stop like any Unix tool.
            return httpx.Response(599, request=request, text="stdout closed")
        return httpx.Response(200, request=request)


class StdoutSink:
    name: ClassVar[str] = "stdout"
    parallel_safe = True  # encode is a pure function: it may run in worker processes
    max_batch_events = 500
    max_batch_bytes = 1_000_000
    envelope_bytes = 0

    def __init__(self, stream: BinaryIO | None = None, **segment_options: Any):
        self._segment = SegmentSink("stdout", gzip=False, **segment_options)
        self._stream = stream or sys.stdout.buffer

    @classmethod
    def from_options(cls, opts: dict[str, Any], endpoint: str | None) -> StdoutSink:
        return cls(
            event_name_template=opts.get("event_name_template") or DEFAULT_EVENT_NAME,
            strip_trailing_slash=opts.get("strip_trailing_slash", True),
        )

    def encode(self, txn: Transaction) -> bytes:
        return self._segment.encode(txn)

    def request(self, events: list[bytes]) -> httpx.Request:
        return httpx.Request("POST", "stdout:", content=b"\n".join(events) + b"\n")

    def judge(self, response: httpx.Response) -> Verdict:
        if response.status_code == 200:
            return Verdict(OK)
        return Verdict(FATAL, "standard output was closed")

    def transport(self) -> httpx.BaseTransport | None:
        return _StdoutTransport(self._stream)
