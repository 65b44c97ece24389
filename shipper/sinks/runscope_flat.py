"""Runscope's flat path (issue 16): a Kong HTTP record's bytes → the Runscope message's bytes, without the full
Transaction path. Runscope ships little (method, URL, headers, status, size, times, bodies with
--runscope-log-body), so this reads and masks only those; identity runs for the count of anonymous records.
Every number the parser checks is still checked (a record the parser refuses must not become a message here),
and the message is made by the sink's own `RunscopeSink.message`. The gate, the chain and the fallback rules
are Moesif's (`moesif_flat.SinkFlat`), the fields read as the parser reads them (`formats.kong`);
`tests/test_flat_moesif.py` proves the bytes identical."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from shipper.formats.kong import CONSUMER_IDS, CREDENTIAL_IDS, checked_numbers, response_and_latencies
from shipper.formats.kong_fields import entity
from shipper.formats.values import split_target, upstream_status_field
from shipper.model import Transaction
from shipper.sinks.moesif_flat import SinkFlat, default_chain, plain_str

if TYPE_CHECKING:
    from shipper.formats import Parser
    from shipper.processors import Processor
    from shipper.sinks.runscope import RunscopeSink


def runscope_flat_path(sink: RunscopeSink, parser: Parser, chain: Sequence[Processor]) -> RunscopeFlat | None:
    parts = default_chain(parser, chain)
    return None if parts is None else RunscopeFlat(sink, parts)


class RunscopeFlat(SinkFlat["RunscopeSink"]):
    """A `FlatEncode` for the Runscope sink."""

    def encode(self, record: dict[str, Any], request: dict[str, Any], started: int, fallback_id: str) -> tuple[bytes, bool] | None:
        get, rget = record.get, request.get
        response, latencies = response_and_latencies(get)
        # The parser's checks of what Runscope does not ship too: a value it refuses costs the line on both paths.
        upstream_status_field(get("upstream_status"), "upstream_status")
        status, response_size, latency_request = checked_numbers(rget, response, latencies)[1:4]

        address = self.address(rget)
        if address is None:
            return None
        self.window(started)
        raw_path, headers = address[3:]
        consumer = entity(get("consumer"), CONSUMER_IDS)
        credential = entity(get("authenticated_entity"), CREDENTIAL_IDS)
        user = self.identify.who(record, headers, consumer, credential)[2]
        masker = self.masker
        raw_path = masker.mask_targets(split_target(raw_path)[1], raw_path, None)[1]
        request_body = response_body = None
        if self.sink.log_body:
            request_body, response_body = self.masked_bodies(rget("body"), response.get("body"))
        scheme, host, port = address[:3]
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
