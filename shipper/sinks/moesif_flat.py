"""Moesif's flat path (issue 16): a Kong HTTP record's bytes → the Moesif event's bytes, without the full
Transaction path.

It reads only what the Moesif event ships (no decoded query object, no path or fragment apart, no user agent,
no anonymous id), runs the chain's own identity (`Identify.who`) and masks (`Masker`: headers, the request
target and upstream URI, bodies, entities, JWT claims) on those parts alone, and builds the event with the sink's
own `EventBuilder.event` on a Transaction holding just those parts, so the event is made by one piece of code
whichever path a line takes. Anything it does not expect sends the line down the Transaction path: another
format or kind, a record without a start time, one Moesif's 30-day window filters, one sampling would skip, or
any value a parser would refuse (the checked coercions raise, and the Transformer falls back on any exception).
`tests/test_flat_moesif.py` proves the bytes identical to the Transaction path's.

Measured (bench/instructions.py --sink moesif, PYTHONHASHSEED=0, 5,000 records, end to end): 545.8 k → 527.3 k
instructions/record for this module alone (−3.4 %), 505.0 k → 486.2 k on a later tree (−3.7 %). Little, because
the event ships nearly every field a Transaction holds (metadata.kong) and the costs that remain are shared by
both paths: orjson.loads (~70 k), unverified JWT decoding of each new token in PyJWT, the event, orjson.dumps,
gzip and sending.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from shipper.formats.kong_fields import ai_usage, entity, tls_info, trace_id, upstream_tries
from shipper.formats.values import (
    count_field, epoch_ms_field, latency_field, split_target, split_url, status_field, upstream_status_field,
)
from shipper.model import Transaction
from shipper.processors.identity import Identify
from shipper.processors.masking import Masker, drop_raw
from shipper.processors.window import TimeWindow
from shipper.sinks.base import RecordDropped

if TYPE_CHECKING:
    from shipper.formats import Parser
    from shipper.processors import Processor
    from shipper.sinks.moesif import MoesifSink

_CONSUMER_IDS = ("id",)
_CREDENTIAL_IDS = ("id", "consumer_id")


ChainParts = tuple[bool, "TimeWindow | None", Identify, Masker]  # (format auto?, window, identity, masks)


def default_chain(parser: Parser, chain: Sequence[Processor]) -> ChainParts | None:
    """The parts of `chain` when it is exactly the default one ([time window] identify, masks, drop_raw) and
    `parser` reads Kong records (`auto`, `kong`); else None: a flat path knows only those."""
    if parser.format not in ("auto", "kong"):
        return None
    steps = list(chain)
    first = steps[0] if steps else None
    window = first if type(first) is TimeWindow else None  # exactly these classes: a subclass may do more
    rest = steps[1:] if window is not None else steps
    if len(rest) != 3:
        return None
    identify, masker, last = rest
    if type(identify) is not Identify or type(masker) is not Masker or last is not drop_raw:
        return None
    return parser.format == "auto", window, identify, masker


def moesif_flat_path(sink: MoesifSink, parser: Parser, chain: Sequence[Processor]) -> MoesifFlat | None:
    parts = default_chain(parser, chain)
    return None if parts is None else MoesifFlat(sink, parts)


class KongFlat:
    """What every sink's flat path does first: decode the line, keep only a Kong HTTP record with a start time
    (as `formats.Parser` would read it), and apply the window (RecordDropped outside it)."""

    def __init__(self, parts: ChainParts):
        self.auto, window, self.identify, self.masker = parts
        self.low = window.since_ms if window is not None else None
        self.high = window.until_ms if window is not None else None

    def record(self, data: bytes) -> tuple[dict[str, Any], dict[str, Any], int] | None:
        """(record, its request, its start in epoch ms), or None for the Transaction path."""
        record = orjson.loads(data)  # a line that needs repairs raises: the parser's decode_line does those
        if type(record) is not dict:
            return None
        get = record.get
        request = get("request")
        if type(request) is not dict:
            return None
        if self.auto and (("spool" in record and "record" in record) or not (
            "started_at" in record or "response" in record or "latencies" in record
        )):
            return None  # a spooled record, or one `auto` would not read as Kong's (formats.Parser._dispatch)
        started = epoch_ms_field(get("started_at"), "started_at")
        if started is None:
            return None  # the parser dates it (container runtime, or the time read)
        if (self.low is not None and started < self.low) or (self.high is not None and started >= self.high):
            raise RecordDropped()
        return record, request, started


class MoesifFlat(KongFlat):
    """A `FlatEncode` for the Moesif sink."""

    def __init__(self, sink: MoesifSink, parts: ChainParts):
        super().__init__(parts)
        self.sink = sink

    def __call__(self, data: bytes, file_id: str, offset: int, end: int, logged_at: int | None) -> tuple[bytes, bool] | None:
        found = self.record(data)
        if found is None:
            return None
        record, request, started = found
        sink = self.sink
        if sink.max_age_ms is not None and started < time.time() * 1000 - sink.max_age_ms:
            return None  # EventFiltered on the Transaction path
        return self.encode(record, request, started, f"{file_id}-{offset}")

    def encode(self, record: dict[str, Any], request: dict[str, Any], started: int, fallback_id: str) -> tuple[bytes, bool] | None:
        get, rget = record.get, request.get
        response = get("response")
        if type(response) is not dict:
            response = {}
        latencies = get("latencies")
        if type(latencies) is not dict:
            latencies = {}
        url = plain_str(rget("url")) or plain_str(rget("request_uri"))
        scheme, host, port, url_target = split_url(url) if url else ("", "", None, "")
        if port is not None and not 0 <= port <= 65535:
            return None  # port_field decides (a bad value, or a float port)
        raw_path = plain_str(rget("uri")) or url_target
        query_string = split_target(raw_path)[1]
        headers = rget("headers")
        if type(headers) is not dict:
            headers = {}
        if not host:
            host_header = plain_str(headers.get("host"))
            host = host_header.rpartition(":")[0] or host_header
        request_id = rget("id")
        tries = get("tries")
        upstream_status, upstream_statuses = upstream_status_field(get("upstream_status"), "upstream_status")
        response_headers = response.get("headers")
        tls, trace, correlation, ai = rget("tls"), get("trace_id"), get("correlation_id"), get("ai")
        consumer = entity(get("consumer"), _CONSUMER_IDS)
        credential = entity(get("authenticated_entity"), _CREDENTIAL_IDS)
        status = status_field(response.get("status"), "response.status")
        request_size = count_field(rget("size"), "request.size")
        response_size = count_field(response.get("size"), "response.size")
        latency_request = latency_field(latencies.get("request"), "latencies.request")
        latency_kong = latency_field(latencies.get("kong"), "latencies.kong")
        latency_receive = latency_field(latencies.get("receive"), "latencies.receive")
        latency_proxy = latency_field(latencies.get("proxy"), "latencies.proxy")

        # The chain: identity reads the record unmasked, then the masks of what Moesif ships.
        basic, claims, user, source = self.identify.who(record, headers, consumer, credential)
        masker = self.masker
        query_string, raw_path, upstream_uri = masker.mask_targets(query_string, raw_path, _opt_str(get("upstream_uri")))
        if "@" in host:
            host = host.rpartition("@")[2]
        request_body, response_body = rget("body"), response.get("body")
        if request_body is not None:
            request_body = masker.mask_body(request_body)
        if response_body is not None:
            response_body = masker.mask_body(response_body)
        # In the processor's order, so its remembered entities are the same whichever path a line takes.
        service = _entity(get("service")) or _entity(get("api"))
        route = _entity(get("route"))
        txn = Transaction(
            event_id=request_id if type(request_id) is str and request_id else fallback_id,
            source_format="kong",
            started_at=started,
            method=plain_str(rget("method")).upper(),
            scheme=scheme,
            host=host,
            port=port,
            raw_path=raw_path,
            query_string=query_string,
            request_headers=masker.mask_headers(headers),
            request_size=request_size,
            request_body=request_body,
            client_ip=plain_str(get("client_ip")),
            tls=None if tls is None else tls_info(tls),
            status=status,
            response_headers=masker.mask_headers(response_headers if type(response_headers) is dict else {}),
            response_size=response_size,
            response_body=response_body,
            latency_request=latency_request,
            latency_kong=latency_kong,
            latency_receive=latency_receive,
            latency_proxy=latency_proxy,
            service=masker.mask_entity(service) if service else service,
            route=masker.mask_entity(route) if route else route,
            workspace=_opt_str(get("workspace")),
            workspace_name=_opt_str(get("workspace_name")),
            upstream_uri=upstream_uri,
            upstream_status=upstream_status,
            upstream_statuses=upstream_statuses,
            tries=len(tries) if type(tries) is list else None,
            upstream_tries=upstream_tries(tries) if type(tries) is list else None,
            trace_id=None if trace is None else trace_id(trace),
            correlation_id=correlation if type(correlation) is str and correlation else None,
            ai=None if ai is None else ai_usage(ai),
            response_source=_opt_str(get("source")),
            consumer=masker.mask_entity(consumer) if consumer else consumer,
            authenticated_entity=masker.mask_entity(credential) if credential else credential,
            user_id=user or None,
            user_source=source if user else None,
            jwt_claims=masker.kept_claims(claims),
            basic_user=basic,
        )
        # A copy of its own bytes, as the Transaction path keeps (orjson's buffer is at least 4 KiB).
        return bytes(memoryview(self.sink.sampled(self.sink.event(txn), txn.event_id))), txn.user_id is None


def plain_str(value: Any) -> str:
    if type(value) is str:
        return value
    if value is None or type(value) is dict or type(value) is list:
        return ""
    raise TypeError("an unusual value: the parser decides")  # to_str's other cases (numbers, booleans)


def _opt_str(value: Any) -> str | None:
    return value if type(value) is str else None


def _entity(value: Any) -> dict[str, Any] | None:
    return value if type(value) is dict and value else None
