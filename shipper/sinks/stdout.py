"""`--sink stdout`: the vendor-ready events as NDJSON on standard output, for a first run without an account
and for piping into other tools. The events are Segment `track` messages (the shape of the default vendor).

It goes through the same delivery path as the HTTP sinks: the request's body is the NDJSON, and the sink's
own transport writes it to stdout instead of the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

import httpx

from shipper.model import Transaction
from shipper.output import SharedOutput
from shipper.sinks.base import FATAL, OK, HttpSink, OptionList, Sink, SinkLimits, Verdict
from shipper.sinks.config import config_from_options, options_of
from shipper.sinks.segment import SegmentConfig, SegmentSink

# The event shape's options, shared with the Segment sink (the CLI lists each option once); no write key.
_NOT_HERE = ("write_key_file",)


class _StdoutTransport(httpx.BaseTransport):
    def __init__(self, output: SharedOutput):
        self.output = output

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # One batch at a time, whole (the senders run in threads); a failure is a FATAL verdict, the checkpoint stays.
        if self.output.write(request.read()):
            return httpx.Response(200, request=request)
        return httpx.Response(599, request=request, text=self.output.failure)


class StdoutSink(HttpSink):
    name: ClassVar[str] = "stdout"
    parallel_safe: ClassVar[bool] = True  # encode is a pure function: it may run in worker processes
    Config: ClassVar[type[SegmentConfig]] = SegmentConfig
    OPTIONS: ClassVar[OptionList] = options_of(SegmentConfig, without=_NOT_HERE)
    limits = SinkLimits(max_batch_events=500, max_batch_bytes=1_000_000)
    url = "stdout:"  # the sink's own transport writes every request to standard output

    def __init__(self, stream: BinaryIO | None = None, **segment_options: Any):
        """`segment_options`: the Segment sink's configuration (config=…) or fields of it by name."""
        self._segment = SegmentSink("stdout", gzip=False, **segment_options)
        self._output = SharedOutput(stream)  # one for every transport of this sink

    @classmethod
    def from_options(cls, opts: Mapping[str, Any], endpoint: str | None) -> StdoutSink:
        return cls(config=config_from_options(SegmentConfig, opts, without=_NOT_HERE))

    def encode(self, txn: Transaction) -> bytes:
        return self._segment.encode(txn)

    def request(self, events: list[bytes]) -> httpx.Request:
        return httpx.Request("POST", self.url, content=b"\n".join(events) + b"\n")

    def verdict(self, response: httpx.Response) -> Verdict:
        if response.status_code == 200:
            return Verdict(OK)
        return Verdict(FATAL, response.text or "standard output was closed")

    def transport(self) -> httpx.BaseTransport | None:
        return _StdoutTransport(self._output)


OPTIONS = StdoutSink.OPTIONS
_CONTRACT: type[Sink] = StdoutSink  # mypy checks the class against the sink contract here
