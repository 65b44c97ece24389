"""Runscope's flat path (issue 16): a Kong HTTP record's bytes → the Runscope message's bytes, without the full
Transaction path. Runscope ships little (method, URL, headers, status, size, times, bodies with
--runscope-log-body), so this reads and masks only those; identity runs for the count of anonymous records.
Every number the parser checks is still checked (a record the parser refuses must not become a message here),
and the message is made by the sink's own `RunscopeSink.message`. The gate, the chain and the fallback rules
are Moesif's (`moesif_flat.KongFlat`); `tests/test_flat_moesif.py` proves the bytes identical."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson

from shipper.formats.kong_fields import entity
from shipper.formats.values import count_field, latency_field, split_target, split_url, status_field, upstream_status_field
from shipper.model import Transaction
from shipper.sinks.moesif_flat import ChainParts, KongFlat, default_chain, plain_str

if TYPE_CHECKING:
    from shipper.formats import Parser
    from shipper.processors import Processor
    from shipper.sinks.runscope import RunscopeSink

_CONSUMER_IDS = ("id",)
_CREDENTIAL_IDS = ("id", "consumer_id")


def runscope_flat_path(sink: RunscopeSink, parser: Parser, chain: Sequence[Processor]) -> RunscopeFlat | None:
    parts = default_chain(parser, chain)
    return None if parts is None else RunscopeFlat(sink, parts)


class RunscopeFlat(KongFlat):
    """A `FlatEncode` for the Runscope sink."""

    def __init__(self, sink: RunscopeSink, parts: ChainParts):
        super().__init__(parts)
        self.sink = sink

    def __call__(self, data: bytes, file_id: str, offset: int, end: int, logged_at: int | None) -> tuple[bytes, bool] | None:
        found = self.record(data)
        if found is None:
            return None
        record, request, started = found
        get, rget = record.get, request.get
        response = get("response")
        if type(response) is not dict:
            response = {}
        latencies = get("latencies")
        if type(latencies) is not dict:
            latencies = {}
        # The parser's checks of what Runscope does not ship: a value it refuses costs the line on both paths.
        count_field(rget("size"), "request.size")
        latency_field(latencies.get("kong"), "latencies.kong")
        latency_field(latencies.get("receive"), "latencies.receive")
        latency_field(latencies.get("proxy"), "latencies.proxy")
        upstream_status_field(get("upstream_status"), "upstream_status")
        status = status_field(response.get("status"), "response.status")
        response_size = count_field(response.get("size"), "response.size")
        latency_request = latency_field(latencies.get("request"), "latencies.request")

        url = plain_str(rget("url")) or plain_str(rget("request_uri"))
        scheme, host, port, url_target = split_url(url) if url else ("", "", None, "")
        if port is not None and not 0 <= port <= 65535:
            return None  # port_field decides (a bad value, or a float port)
        raw_path = plain_str(rget("uri")) or url_target
        headers = rget("headers")
        if type(headers) is not dict:
            headers = {}
        if not host:
            host_header = plain_str(headers.get("host"))
            host = host_header.rpartition(":")[0] or host_header
        consumer = entity(get("consumer"), _CONSUMER_IDS)
        credential = entity(get("authenticated_entity"), _CREDENTIAL_IDS)
        user = self.identify.who(record, headers, consumer, credential)[2]
        masker = self.masker
        raw_path = masker.mask_targets(split_target(raw_path)[1], raw_path, None)[1]
        if "@" in host:
            host = host.rpartition("@")[2]
        request_body = response_body = None
        if self.sink.log_body:
            request_body, response_body = rget("body"), response.get("body")
            if request_body is not None:
                request_body = masker.mask_body(request_body)
            if response_body is not None:
                response_body = masker.mask_body(response_body)
        response_headers = response.get("headers")
        txn = Transaction(
            event_id="",  # not in the message
            source_format="kong",
            started_at=started,
            method=plain_str(rget("method")).upper(),
            scheme=scheme,
            host=host,
            port=port,
            raw_path=raw_path,
            request_headers=masker.mask_headers(headers),
            request_body=request_body,
            status=status,
            response_headers=masker.mask_headers(response_headers if type(response_headers) is dict else {}),
            response_size=response_size,
            response_body=response_body,
            latency_request=latency_request,
        )
        return bytes(memoryview(orjson.dumps(self.sink.message(txn)))), not user
