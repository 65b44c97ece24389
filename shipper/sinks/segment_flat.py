"""Segment's flat path (issue 16): a Kong HTTP line → the bytes of its `track` call in one pass, without a
Transaction: the record decoded by orjson (as the parser decodes it), then the `track` message written straight
from the fields Segment ships, in `SegmentSink.message`'s key order, masking only what it ships (the query
string, object and fragment, the raw path, the upstream URI, the entities whose names it ships).

Deciding as the Transaction path decides: every check `formats.kong.parse_kong` makes that can refuse a record
(start time, status, sizes, latencies, upstream status, port) is made here too, with the same helpers of
`formats.values`, *before* the time window, because the parser refuses before the window drops; identity is
the chain's own `Identify.who` on the same evidence. Anything out of the ordinary is handed back (None) or
raises, and the line takes the Transaction path, which decides: a string field of another type, a record
without a start time, a message the sink would reject or shrink. `tests/test_flat_paths.py` proves the bytes
identical, through `SegmentSink.flat_path`.

Only the default chain ([time window], Identify, Masker, drop_raw) and the `kong` or `auto` formats get one
(`moesif_flat.default_chain`); anything else: None, and every line takes the Transaction path.

Measured (callgrind, PYTHONHASHSEED=0, the benchmark's Kong 3.x records of ~2.7 KB, warm caches): the transform
step 289 k instructions a record on the Transaction path, 201 k here (bench/instructions.py --transform; 321 k
and 237 k before issue 16's second round: identity's remembered JWT places, the masks' split-based name check,
tables for the millisecond and upstream status texts, the event's bytes sliced off orjson's; 290 k and 208 k
before its third: fewer calls and loops, the remembered entities read inline). Of the 201 k,
about 72 k are orjson.loads of the whole record and its freeing, ~19 k the two orjson.dumps: work both paths
share; the rest is reading and checking the fields, identity, the masks and building the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from shipper.formats.kong_fields import ai_usage, entity, tls_info, trace_id
from shipper.formats.values import (
    MAX_COUNT, MAX_LATENCY_MS, count_field, host_of_header, latency_field, parse_query, split_url, status_field,
    upstream_status_field,
)
from shipper.processors.identity import anonymous_id
from shipper.sinks.base import RecordDropped
from shipper.sinks.moesif_flat import ChainParts, KongFlat, default_chain, plain_str
from shipper.sinks.segment import (
    AI_PROPERTIES, DEFAULT_EVENT_NAME, LIBRARY, MAX_MESSAGE_BYTES, TLS_PROPERTIES, add_target_properties, event_name,
    iso_ms,
)

if TYPE_CHECKING:
    from shipper.formats import Parser
    from shipper.processors import Processor
    from shipper.sinks.segment import SegmentSink

_CONSUMER_IDS = ("id",)
_MAX_LATENCY_INT = int(MAX_LATENCY_MS)  # the same bound, compared int to int
_STATUS_TEXT = {str(status): status for status in range(100, 1000)}  # Kong's upstream status: "502"
_CREDENTIAL_IDS = ("id", "consumer_id")


def segment_flat_path(sink: SegmentSink, parser: Parser, chain: Sequence[Processor]) -> SegmentFlat | None:
    """The flat path for lines read by `parser` through `chain`, or None when either is not one it knows."""
    parts = default_chain(parser, chain)
    return None if parts is None else SegmentFlat(sink, parts)


def _latency(value: Any, field: str) -> int | float | None:
    """`latency_field` as Segment writes it: an integral number as the int (the sink turns 14.0 back into 14).
    Kong's integer ms in range are taken inline by the caller."""
    number = latency_field(value, field)
    if number is None:
        return None
    return int(number) if number.is_integer() else number


class SegmentFlat(KongFlat):
    """A `FlatEncode` for the Segment sink."""

    def __init__(self, sink: SegmentSink, parts: ChainParts):
        super().__init__(parts)
        self.template = sink.template
        self.strip_trailing_slash = sink.strip_trailing_slash

    def __call__(self, data: bytes, file_id: str, offset: int, end: int, logged_at: int | None) -> tuple[bytes, bool] | None:
        # `logged_at` dates only a record without a start time, which goes down the Transaction path.
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
        # Every check of the parser that may refuse the record, before the window: the parser refuses first.
        # Each value Kong writes (an int in range, a 3-digit status text) is tested inline, as the helpers' own
        # fast paths test it; anything else goes to the helper itself.
        status = response.get("status")
        if not (type(status) is int and 100 <= status <= 999):
            status = status_field(status, "response.status")
        request_size = rget("size")
        if not (type(request_size) is int and 0 <= request_size <= MAX_COUNT):
            request_size = count_field(request_size, "request.size")
        response_size = response.get("size")
        if not (type(response_size) is int and 0 <= response_size <= MAX_COUNT):
            response_size = count_field(response_size, "response.size")
        time_request = latencies.get("request")
        if not (type(time_request) is int and 0 <= time_request <= _MAX_LATENCY_INT):
            time_request = _latency(time_request, "latencies.request")
        time_kong = latencies.get("kong")
        if not (type(time_kong) is int and 0 <= time_kong <= _MAX_LATENCY_INT):
            time_kong = _latency(time_kong, "latencies.kong")
        time_receive = latencies.get("receive")
        if not (type(time_receive) is int and 0 <= time_receive <= _MAX_LATENCY_INT):
            time_receive = _latency(time_receive, "latencies.receive")
        time_proxy = latencies.get("proxy")
        if not (type(time_proxy) is int and 0 <= time_proxy <= _MAX_LATENCY_INT):
            time_proxy = _latency(time_proxy, "latencies.proxy")  # Kong's -1 (no upstream call): None
        upstream_status = get("upstream_status")
        known_status = _STATUS_TEXT.get(upstream_status) if type(upstream_status) is str else None
        if known_status is not None:
            upstream_status, upstream_statuses = known_status, None
        else:
            upstream_status, upstream_statuses = upstream_status_field(upstream_status, "upstream_status")
        url = rget("url")
        if type(url) is not str:
            url = plain_str(url)
        if not url:
            url = plain_str(rget("request_uri"))
        scheme, host, port, url_target = split_url(url) if url else ("", "", None, "")
        if port is not None and not 0 <= port <= 65535:
            return None  # port_field decides (a bad value, or a float port)
        low, high = self.low, self.high
        if (low is not None and started < low) or (high is not None and started >= high):
            raise RecordDropped()

        raw_path = rget("uri")
        if type(raw_path) is not str:
            raw_path = plain_str(raw_path)
        if not raw_path:
            raw_path = url_target
        rest, _, fragment = raw_path.partition("#")  # inline
        path, _, query_string = rest.partition("?")
        headers = rget("headers")
        if type(headers) is not dict:
            headers = {}
        if not host:
            host = host_of_header(plain_str(headers.get("host")))
        query = rget("querystring")
        if type(query) is not dict:
            query = parse_query(query_string)
        user_agent = headers.get("user-agent")
        if type(user_agent) is not str:
            user_agent = ""
        client_ip = get("client_ip")
        if type(client_ip) is not str:
            client_ip = plain_str(client_ip)
        request_id = rget("id")
        event_id = request_id if type(request_id) is str and request_id else f"{file_id}-{offset}"
        # entity() of each, called only for what it would change: none, an empty or odd one, an id not a string.
        consumer = get("consumer")
        if consumer is not None and not (
            type(consumer) is dict and consumer and type(consumer.get("id", "")) is str
        ):
            consumer = entity(consumer, _CONSUMER_IDS)
        credential = get("authenticated_entity")
        if credential is not None and not (
            type(credential) is dict and credential and type(credential.get("id", "")) is str
            and type(credential.get("consumer_id", "")) is str
        ):
            credential = entity(credential, _CREDENTIAL_IDS)

        # The chain: identity reads the record unmasked, then the masks of what Segment ships.
        user = self.identify.who(record, headers, consumer, credential)[2]
        masker = self.masker
        if query and not masker.query_is_clean(query):
            query = masker.mask_query(query)
        if fragment:
            fragment = masker.mask_params(fragment)
        upstream_uri = get("upstream_uri")
        query_string, raw_path, upstream_uri = masker.mask_targets(
            query_string, raw_path, upstream_uri if type(upstream_uri) is str else None
        )
        if "@" in host:
            host = host.rpartition("@")[2]
        # In the processor's order, so its remembered entities are the same whichever path a line takes.
        service = get("service")
        if type(service) is not dict or not service:
            service = get("api")
            if type(service) is not dict or not service:
                service = None
        route = get("route")
        if type(route) is not dict or not route:
            route = None
        # mask_entity's remembered copy read inline (same id, same version), mask_entity itself otherwise.
        entities = masker.entities
        service_name = route_name = None
        if service is not None:
            ident = service.get("id")
            cached = entities.get(ident) if type(ident) is str else None
            if cached is None or cached[0] != (service.get("updated_at") or service.get("created_at")):
                cached = (None, masker.mask_entity(service))
            service_name = cached[1].get("name")
        if route is not None:
            ident = route.get("id")
            cached = entities.get(ident) if type(ident) is str else None
            if cached is None or cached[0] != (route.get("updated_at") or route.get("created_at")):
                cached = (None, masker.mask_entity(route))
            route_name = cached[1].get("name")
        if consumer:
            ident = consumer.get("id")
            cached = entities.get(ident) if type(ident) is str else None
            if cached is None or cached[0] != (consumer.get("updated_at") or consumer.get("created_at")):
                cached = (None, masker.mask_entity(consumer))
            consumer = cached[1]
        if credential:
            ident = credential.get("id")
            cached = entities.get(ident) if type(ident) is str else None
            if cached is None or cached[0] != (credential.get("updated_at") or credential.get("created_at")):
                masker.mask_entity(credential)  # for what it remembers: Segment ships nothing of it

        # SegmentSink.message, key for key.
        if ";" in path:
            path = path.partition(";")[0] or "/"
        if self.strip_trailing_slash and len(path) > 1 and path[-1] == "/":
            path = path[:-1]
        method = rget("method")
        method = (method if type(method) is str else plain_str(method)).upper()
        if not scheme:
            scheme = "http"
        if not host:
            uri = raw_path
        elif port is None:
            uri = f"{scheme}://{host}{raw_path}"
        else:
            uri = f"{scheme}://{host}:{port}{raw_path}"
        properties: dict[str, Any] = {"method": method, "uri": uri, "protocol": scheme, "host": host}
        if port is not None:
            properties["port"] = port
        add_target_properties(properties, raw_path, path, query_string, query, fragment)
        properties["timeOfProxy"] = -1 if time_proxy is None else time_proxy
        if time_kong is not None:
            properties["timeOfKong"] = time_kong
        if time_request is not None:
            properties["timeOfRequest"] = time_request
        if status is not None:
            properties["statusCode"] = status
        if service_name:
            properties["service"] = service_name
        if route_name:
            properties["route"] = route_name
        if request_size is not None:
            properties["requestSize"] = request_size
        if response_size is not None:
            properties["responseSize"] = response_size
        # segment._add_gateway_properties from the record's fields (Kong logs no upstream address), inline.
        if upstream_uri:
            properties["upstreamUri"] = upstream_uri
        if upstream_status is not None:
            properties["upstreamStatus"] = upstream_status
        if upstream_statuses:
            properties["upstreamStatuses"] = upstream_statuses
        tries = get("tries")
        if type(tries) is list:
            properties["tries"] = len(tries)
        value = get("source")
        if value and type(value) is str:
            properties["responseSource"] = value
        if time_receive is not None:
            properties["timeOfReceive"] = time_receive
        value = get("workspace")
        if value and type(value) is str:
            properties["workspace"] = value
        value = get("workspace_name")
        if value and type(value) is str:
            properties["workspaceName"] = value
        if consumer:
            value = consumer.get("username")
            if value:
                properties["consumer"] = value
            value = consumer.get("id")
            if value:
                properties["consumerId"] = value
        value = get("trace_id")
        if value is not None and (value := trace_id(value)):
            properties["traceId"] = value
        value = get("correlation_id")
        if value and type(value) is str:
            properties["correlationId"] = value
        value = rget("tls")
        if value is not None and (value := tls_info(value)):
            for key, prop in TLS_PROPERTIES:
                item = value.get(key)
                if item is not None:
                    properties[prop] = item
        value = get("ai")
        if value is not None and (value := ai_usage(value)):
            for key, prop in AI_PROPERTIES:
                item = value.get(key)
                if item is not None:
                    properties[prop] = item

        if self.template == DEFAULT_EVENT_NAME:
            event = f"API Request: {method}"
        else:
            event = event_name(self.template, method, path, host, status, service_name, route_name)
            if not event.strip():
                return None  # EventRejected on the Transaction path
        context: dict[str, Any] = {"library": LIBRARY}
        if client_ip:
            context["ip"] = client_ip
        if user_agent:
            context["userAgent"] = user_agent
        message: dict[str, Any] = {
            "type": "track",
            "event": event,
            "properties": properties,
            "context": context,
            "timestamp": iso_ms(started),
            "messageId": event_id[:100],
        }
        if user:
            message["userId"] = user
        else:
            message["anonymousId"] = anonymous_id(client_ip, user_agent)
        encoded = orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)
        if len(encoded) > MAX_MESSAGE_BYTES + 1:
            return None  # SegmentSink.encode shrinks it
        # A copy of its own bytes, as the Transaction path keeps (orjson's buffer is at least 4 KiB): slicing
        # off the newline makes it for half the cost of bytes(memoryview()).
        return encoded[:-1], not user
