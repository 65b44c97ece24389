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
gzip and sending. Issue 16's second round, on work both paths share (identity's remembered JWT places, the
masks' name check, the event's transaction id, entity summaries, forwarded-for addresses and time texts): 488.3 k
-> 421.6 k end to end; this flat loop alone (records in memory) 379.6 k -> 314 k.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from shipper.formats.kong import (
    CONSUMER_IDS, CREDENTIAL_IDS, add_call_details, checked_numbers, logged_entity, opt_str, request_address,
    response_and_latencies,
)
from shipper.formats.kong_fields import entity
from shipper.formats.values import epoch_ms_field, split_target, upstream_status_field
from shipper.model import Transaction
from shipper.processors.identity import Identify
from shipper.processors.masking import Masker, drop_raw
from shipper.processors.window import TimeWindow
from shipper.sinks.base import RecordDropped

if TYPE_CHECKING:
    from shipper.formats import Parser
    from shipper.processors import Processor
    from shipper.sinks.moesif import MoesifSink

Address = tuple[str, str, int | None, str, dict[str, Any]]  # (scheme, host, port, raw target, headers)
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
    (as `formats.Parser` would read it); `window` drops one outside --since/--until."""

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
        started = get("started_at")
        if not (type(started) is int and 100_000_000_000 <= started < 100_000_000_000_000):  # Kong's ms: as is
            started = epoch_ms_field(started, "started_at")
            if started is None:
                return None  # the parser dates it (container runtime, or the time read)
        return record, request, started

    def window(self, started: int) -> None:
        """RecordDropped outside --since/--until. Each sink's `encode` calls it once the values the parser checks
        have passed: the parser refuses a bad value (a dead letter) before the window drops the record."""
        if (self.low is not None and started < self.low) or (self.high is not None and started >= self.high):
            raise RecordDropped()

    @staticmethod
    def address(rget: Any) -> Address | None:
        """`formats.kong.request_address` with the flat paths' strict strings and the host without user info
        (as the masks leave it); None for the Transaction path when the port is one `port_field` must judge."""
        scheme, host, port, raw_path, headers = request_address(rget, plain_str)
        if port is not None and not 0 <= port <= 65535:
            return None  # a bad value, or a float port
        if "@" in host:
            host = host.rpartition("@")[2]
        return scheme, host, port, raw_path, headers

    def masked_bodies(self, request_body: Any, response_body: Any) -> tuple[Any, Any]:
        """The request and response bodies through the chain's body masks (None stays None)."""
        masker = self.masker
        if request_body is not None:
            request_body = masker.mask_body(request_body)
        if response_body is not None:
            response_body = masker.mask_body(response_body)
        return request_body, response_body


SinkT = TypeVar("SinkT")


class SinkFlat(KongFlat, Generic[SinkT]):
    """A `FlatEncode` for one sink: the gate (`KongFlat.record`), then the subclass's `encode` of what passed."""

    def __init__(self, sink: SinkT, parts: ChainParts):
        super().__init__(parts)
        self.sink = sink

    def __call__(self, data: bytes, file_id: str, offset: int, end: int, logged_at: int | None) -> tuple[bytes, bool] | None:
        found = self.record(data)
        return None if found is None else self.encode(*found, f"{file_id}-{offset}")

    def encode(self, record: dict[str, Any], request: dict[str, Any], started: int, fallback_id: str) -> tuple[bytes, bool] | None:
        """(the sink's bytes, anonymous?), or None for the Transaction path."""
        raise NotImplementedError



class MoesifFlat(SinkFlat["MoesifSink"]):
    """A `FlatEncode` for the Moesif sink."""

    def encode(self, record: dict[str, Any], request: dict[str, Any], started: int, fallback_id: str) -> tuple[bytes, bool] | None:
        sink = self.sink
        if sink.max_age_ms is not None and started < time.time() * 1000 - sink.max_age_ms:
            return None  # EventFiltered on the Transaction path
        get, rget = record.get, request.get
        response, latencies = response_and_latencies(get)
        address = self.address(rget)
        if address is None:
            return None
        raw_path, headers = address[3:]
        query_string = split_target(raw_path)[1]
        request_id = rget("id")
        upstream_status, upstream_statuses = upstream_status_field(get("upstream_status"), "upstream_status")
        consumer = entity(get("consumer"), CONSUMER_IDS)
        credential = entity(get("authenticated_entity"), CREDENTIAL_IDS)
        request_size, status, response_size, latency_request, latency_kong, latency_receive, latency_proxy = (
            checked_numbers(rget, response, latencies)
        )
        self.window(started)

        # The chain: identity reads the record unmasked, then the masks of what Moesif ships.
        basic, claims, user, source = self.identify.who(record, headers, consumer, credential)
        masker = self.masker
        query_string, raw_path, upstream_uri = masker.mask_targets(query_string, raw_path, opt_str(get("upstream_uri")))
        request_body, response_body = self.masked_bodies(rget("body"), response.get("body"))
        # In the processor's order, so its remembered entities are the same whichever path a line takes.
        service = logged_entity(get("service")) or logged_entity(get("api"))
        route = logged_entity(get("route"))
        # Made bare, then set field by field: Transaction(...) with these 32 keywords cost ~16 k instructions more
        # (each keyword is matched against its ~60 parameters).
        txn = Transaction(request_id if type(request_id) is str and request_id else fallback_id, "kong")
        txn.started_at = started
        txn.method = plain_str(rget("method")).upper()
        txn.scheme, txn.host, txn.port = address[:3]
        txn.raw_path = raw_path
        txn.query_string = query_string
        txn.request_headers = masker.mask_headers(headers)
        txn.request_size = request_size
        txn.request_body = request_body
        txn.client_ip = plain_str(get("client_ip"))
        txn.status = status
        response_headers = response.get("headers")
        txn.response_headers = masker.mask_headers(response_headers if type(response_headers) is dict else {})
        txn.response_size = response_size
        txn.response_body = response_body
        txn.latency_request = latency_request
        txn.latency_kong = latency_kong
        txn.latency_receive = latency_receive
        txn.latency_proxy = latency_proxy
        txn.service = masker.mask_entity(service) if service else service
        txn.route = masker.mask_entity(route) if route else route
        txn.upstream_uri = upstream_uri
        txn.upstream_status = upstream_status
        txn.upstream_statuses = upstream_statuses
        txn.consumer = masker.mask_entity(consumer) if consumer else consumer
        txn.authenticated_entity = masker.mask_entity(credential) if credential else credential
        txn.user_id = user or None
        txn.user_source = source if user else None
        txn.jwt_claims = masker.kept_claims(claims)
        txn.basic_user = basic
        add_call_details(txn, get, rget)
        # A copy of its own bytes, as the Transaction path keeps (orjson's buffer is at least 4 KiB).
        return bytes(memoryview(self.sink.sampled(self.sink.event(txn), txn.event_id))), txn.user_id is None


def plain_str(value: Any) -> str:
    if type(value) is str:
        return value
    if value is None or type(value) is dict or type(value) is list:
        return ""
    raise TypeError("an unusual value: the parser decides")  # to_str's other cases (numbers, booleans)


