"""Segment's HTTP Tracking API: each Transaction becomes a `track` call shaped as kong-segment-log shaped it,
sent in gzip batches to `POST {endpoint}/v1/batch`.

Limits (Segment's documentation): a message ≤ 32 KB, a request ≤ 500 KB uncompressed, ≤ 2,500 messages. Segment
answers 200 to much bad input, so events are validated here before they are sent.
"""

from __future__ import annotations

import base64
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import click
import httpx
import orjson

from shipper import __version__
from shipper.errors import ConfigError
from shipper.model import Transaction
from shipper.sinks.base import (
    SPLIT, EventRejected, FlatEncode, HttpSink, OptionList, Sink, SinkLimits, Verdict, absolute_url, judge_common,
)
from shipper.sinks.compression import PreparedBody, gzip_body
from shipper.sinks.config import config_from_options, option, options_of
from shipper.sinks.credentials import read_secret

if TYPE_CHECKING:  # only types, as in base.py
    from shipper.formats import Parser
    from shipper.processors import Processor

DEFAULT_ENDPOINT = "https://api.segment.io"
DEFAULT_EVENT_NAME = "API Request: {method}"
PLACEHOLDERS = ("method", "path", "host", "status", "service", "route")
MAX_MESSAGE_BYTES = 32_000  # Segment's limit is 32 KB; keep a margin for the batch's separators
MAX_BODY_BYTES = 475_000  # the official library's packing target, under the 500,000-byte request limit
MAX_MESSAGES = 2_500
LIBRARY = {"name": "kong-ship", "version": __version__}
STREAM_EVENT_NAME = "Kong Stream Session"  # a Kong stream (L4) session, kind "stream"
KIND_EVENT_NAMES = {
    "admin_request": "Kong Admin Request",  # a Kong Admin API audit record (/audit/requests)
    "config_change": "Kong Config Change",  # a Kong database audit record (/audit/objects)
    "event_hook": "Kong Event Hook",
}
# Properties shrunk, largest first, when a message is over the limit; what identifies the call stays. Audit
# records' bulky parts (the request body, the changed entity) go the same way.
_SHRINKABLE = (
    "queryJson", "queryObject", "queryString", "rawpath", "uri", "path", "upstreamUri", "payload", "entity", "old_entity",
)

@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """The Segment sink's options; the event name and the path also shape `--sink stdout`'s events."""

    write_key_file: str | None = option(
        "--segment-write-key-file", type=click.Path(dir_okay=False),
        help="File holding the Segment write key (default: env SEGMENT_WRITE_KEY).",
    )
    event_name_template: str = option(
        "--event-name-template", default=DEFAULT_EVENT_NAME, blank_is_default=True,
        help="Segment event name; placeholders {method} {path} {host} {status} {service} {route}.",
    )
    strip_trailing_slash: bool = option(
        "--strip-trailing-slash/--keep-trailing-slash", default=True,
        help="Strip a trailing slash from {path} and the path property.",
    )


# epoch second -> its "YYYY-MM-DDTHH:MM:SS." text: records come in time order, but Moesif's request and response
# times (and a batch's sentAt) alternate between seconds, so one remembered second was not enough.
_second_texts: dict[int, str] = {}


def iso_ms(epoch_ms: int | None) -> str:
    """ISO-8601 UTC with zero-padded milliseconds, e.g. 2025-11-22T08:26:40.005Z."""
    if epoch_ms is None:
        epoch_ms = int(datetime.now(UTC).timestamp() * 1000)
    second, millis = divmod(epoch_ms, 1000)
    text = _second_texts.get(second)
    if text is None:
        if len(_second_texts) >= 4096:
            _second_texts.clear()
        text = _second_texts[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    return text + _MILLIS_TEXT[millis]


_MILLIS_TEXT = tuple(f"{millis:03d}Z" for millis in range(1000))  # a table: formatting them cost ~3 % of a flat record


COMPONENT_KEYS = tuple(f"pathComponent{i}" for i in range(11))  # [1..10]: no f-string per record

# The TLS and AI blocks are small dicts present on few records: their keys are mapped by table.
TLS_PROPERTIES = (("version", "tlsVersion"), ("cipher", "tlsCipher"), ("client_verify", "tlsClientVerify"))
AI_PROPERTIES = (
    ("provider", "aiProvider"),
    ("model", "aiModel"),
    ("prompt_tokens", "aiPromptTokens"),
    ("completion_tokens", "aiCompletionTokens"),
    ("total_tokens", "aiTotalTokens"),
    ("cost", "aiCost"),
    ("time_per_token", "aiTimePerToken"),
)


def _add_gateway_properties(txn: Transaction, properties: dict[str, Any]) -> None:
    """What Kong 1.x–3.x log beyond kong-segment-log's set, as camelCase properties, each only when the record
    has it (no nulls: a Segment destination makes a column of every key it sees). Plain attribute tests, no
    loop over the Transaction's fields: this runs for every record."""
    value: Any = txn.upstream_uri
    if value:
        properties["upstreamUri"] = value
    value = txn.upstream_status
    if value is not None:
        properties["upstreamStatus"] = value
    value = txn.upstream_statuses
    if value:  # only when Kong retried: more than one status
        properties["upstreamStatuses"] = value
    value = txn.upstream_addr
    if value:
        properties["upstreamAddr"] = value
    value = txn.tries
    if value is not None:
        properties["tries"] = value
    value = txn.response_source
    if value:
        properties["responseSource"] = value
    value = txn.latency_receive
    if value is not None:
        properties["timeOfReceive"] = int(value) if value.is_integer() else value
    value = txn.workspace
    if value:
        properties["workspace"] = value
    value = txn.workspace_name
    if value:
        properties["workspaceName"] = value
    value = txn.consumer
    if value:
        name = value.get("username")
        if name:
            properties["consumer"] = name
        name = value.get("id")
        if name:
            properties["consumerId"] = name
    value = txn.trace_id
    if value:
        properties["traceId"] = value
    value = txn.correlation_id
    if value:
        properties["correlationId"] = value
    value = txn.tls
    if value:
        _add_block(value, TLS_PROPERTIES, properties)
    value = txn.ai
    if value:
        _add_block(value, AI_PROPERTIES, properties)
    if txn.started_at_estimated or txn.started_at is None:
        # The record had no start time: `timestamp` is when kong-ship read the line (or sent it).
        properties["timestampEstimated"] = True


def _add_block(block: Mapping[str, Any], table: tuple[tuple[str, str], ...], properties: dict[str, Any]) -> None:
    """The keys of a TLS or AI block that has them, as their properties (called only for a record with one)."""
    for key, prop in table:
        item = block.get(key)
        if item is not None:
            properties[prop] = item


def add_target_properties(
    properties: dict[str, Any], raw_path: str, path: str, query_string: str, query: Any, fragment: str
) -> None:
    """`rawpath`, `path`, `queryString`, `queryObject`, `queryJson`, `hash` and `pathComponent1`-`10`, in the
    plugin's order (the order is in the bytes): written by this one function on the Transaction and flat paths."""
    properties["rawpath"] = raw_path
    properties["path"] = path
    if query_string:
        properties["queryString"] = query_string
    properties["queryObject"] = query
    properties["queryJson"] = orjson.dumps(query).decode()
    if fragment:
        properties["hash"] = fragment
    i = 0
    for component in path.split("/"):
        if component:
            i += 1
            properties[COMPONENT_KEYS[i]] = component
            if i == 10:
                break


def check_template(template: str) -> str:
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None and field not in PLACEHOLDERS:
            raise ConfigError(
                f"--event-name-template: unknown placeholder {{{field}}} (use {', '.join('{%s}' % p for p in PLACEHOLDERS)})"
            )
    return template


def event_name(template: str, method: str, path: str, host: str, status: int | None, service: Any, route: Any) -> str:
    """The event name from a template other than the default (both paths: `segment_flat` too)."""
    # kong-segment-log lower-cased {host} and {path} in the event name (string.lower), and upper-cased
    # {method}; the properties keep their case.
    return template.format(
        method=method.upper(), path=path.lower(), host=host.lower(), status=status, service=service or "",
        route=route or "",
    )


class SegmentSink(HttpSink):
    name: ClassVar[str] = "segment"
    parallel_safe: ClassVar[bool] = True  # encode is a pure function: it may run in worker processes
    Config: ClassVar[type[SegmentConfig]] = SegmentConfig
    OPTIONS: ClassVar[OptionList] = options_of(SegmentConfig)
    limits = SinkLimits(
        max_batch_events=MAX_MESSAGES,
        max_batch_bytes=MAX_BODY_BYTES,
        envelope_bytes=len(b'{"batch":[],"sentAt":"2025-01-01T00:00:00.000Z"}'),
    )

    def __init__(
        self,
        write_key: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        config: SegmentConfig | None = None,
        gzip: bool = True,
        **options: Any,
    ):
        """`options` set fields of the configuration by name (event_name_template=…), over `config`."""
        self.config = config = replace(config or SegmentConfig(), **options)
        self.url = endpoint.rstrip("/") + "/v1/batch"
        self.template = check_template(config.event_name_template)
        self.strip_trailing_slash = config.strip_trailing_slash
        self.gzip = gzip
        token = base64.b64encode(f"{write_key}:".encode()).decode()
        self.credentials = (write_key, token)
        self._headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"

    @classmethod
    def from_options(cls, opts: Mapping[str, Any], endpoint: str | None) -> SegmentSink:
        config = config_from_options(SegmentConfig, opts)
        key = read_secret("SEGMENT_WRITE_KEY", config.write_key_file, "--segment-write-key-file")
        return cls(key, endpoint or DEFAULT_ENDPOINT, config=config)

    def flat_path(self, parser: Parser, chain: Sequence[Processor]) -> FlatEncode | None:
        """Kong HTTP lines under the default chain: the `track` message written from the decoded record
        (`segment_flat`, issue 16), the same bytes as `message` + `encode` (tests/test_flat_paths.py)."""
        from shipper.sinks.segment_flat import segment_flat_path  # it imports this module's constants

        return segment_flat_path(self, parser, chain)

    # -- one event -------------------------------------------------------------------------------------------
    def message(self, txn: Transaction) -> dict[str, Any]:
        kind = txn.kind
        if kind == "stream":
            return self._stream_message(txn)
        if kind != "api":
            return self._other_message(txn)
        # kong-segment-log took the path from LuaSocket's url.parse, which ends the path at the first `;`
        # (what follows is `params`, which the plugin dropped): `/a/b;v=1/c` had path `/a/b` and components
        # a, b. `rawpath` and `uri` keep the whole target.
        path = txn.path
        if ";" in path:
            path = path.partition(";")[0] or "/"
        # The plugin stripped one trailing slash (gsub '/$'), never from `/` itself.
        if self.strip_trailing_slash and len(path) > 1 and path[-1] == "/":
            path = path[:-1]
        properties: dict[str, Any] = {
            "method": txn.method,
            "uri": absolute_url(txn),
            "protocol": txn.scheme or "http",
            "host": txn.host,
        }
        # The plugin's table left out what was nil (cjson writes no key for it): port, query string and hash
        # only when the URL has them, never "" or null.
        if txn.port is not None:
            properties["port"] = txn.port
        add_target_properties(properties, txn.raw_path, path, txn.query_string, txn.query, txn.fragment)
        # Kong's numbers as Kong wrote them: 1430, not 1430.0 (a Transaction keeps latencies as floats).
        # Kong writes latencies.proxy -1 when there was no upstream call, and the plugin sent that -1 as is;
        # the Kong parser reads it as None, which becomes -1 again here. Nginx has no such marker: None there
        # is simply absent.
        value = txn.latency_proxy
        if value is not None:
            properties["timeOfProxy"] = int(value) if value.is_integer() else value
        elif txn.source_format == "kong":
            properties["timeOfProxy"] = -1
        value = txn.latency_kong
        if value is not None:
            properties["timeOfKong"] = int(value) if value.is_integer() else value
        value = txn.latency_request
        if value is not None:
            properties["timeOfRequest"] = int(value) if value.is_integer() else value
        if txn.status is not None:
            properties["statusCode"] = txn.status
        service_name = (txn.service or {}).get("name")
        route_name = (txn.route or {}).get("name")
        if service_name:
            properties["service"] = service_name
        if route_name:
            properties["route"] = route_name
        if txn.request_size is not None:
            properties["requestSize"] = txn.request_size
        if txn.response_size is not None:
            properties["responseSize"] = txn.response_size
        _add_gateway_properties(txn, properties)
        return self._track(txn, self.event_name(txn, path, service_name, route_name), properties)

    def _stream_message(self, txn: Transaction) -> dict[str, Any]:
        """A Kong stream (TCP/TLS/UDP) session: `Kong Stream Session`, sizes named from the client's side."""
        properties: dict[str, Any] = {}
        if txn.protocol:
            properties["protocol"] = txn.protocol
        if txn.port is not None:
            properties["serverPort"] = txn.port
        if txn.status is not None:
            properties["status"] = txn.status
        if txn.request_size is not None:
            properties["bytesReceived"] = txn.request_size
        if txn.response_size is not None:
            properties["bytesSent"] = txn.response_size
        details = txn.details
        if details:
            value = details.get("upstream_received")
            if value is not None:
                properties["upstreamBytesReceived"] = value
            value = details.get("upstream_sent")
            if value is not None:
                properties["upstreamBytesSent"] = value
        value = txn.latency_request
        if value is not None:
            properties["sessionDuration"] = int(value) if value.is_integer() else value
        value = txn.latency_kong
        if value is not None:
            properties["timeOfKong"] = int(value) if value.is_integer() else value
        service_name = (txn.service or {}).get("name")
        route_name = (txn.route or {}).get("name")
        if service_name:
            properties["service"] = service_name
        if route_name:
            properties["route"] = route_name
        _add_gateway_properties(txn, properties)
        return self._track(txn, STREAM_EVENT_NAME, properties)

    def _other_message(self, txn: Transaction) -> dict[str, Any]:
        """Records that are not proxied calls (Kong audit records, event hooks): named after their kind
        (`Kong Admin Request`, `Kong Config Change`, `Kong Event Hook`), with their details as properties; the
        RBAC user of an audit record is the `userId`."""
        properties = dict(txn.details or {})
        if txn.started_at_estimated or txn.started_at is None:
            properties["timestampEstimated"] = True
        return self._track(txn, KIND_EVENT_NAMES.get(txn.kind, txn.kind), properties)

    @staticmethod
    def _track(txn: Transaction, event: str, properties: dict[str, Any]) -> dict[str, Any]:
        if txn.sample_rate < 1.0:  # kong-ship's sampling kept it: it stands for 1/sampleRate calls
            properties["sampleRate"] = txn.sample_rate
        context: dict[str, Any] = {"library": LIBRARY}
        if txn.client_ip:
            context["ip"] = txn.client_ip
        if txn.user_agent:
            context["userAgent"] = txn.user_agent
        message: dict[str, Any] = {
            "type": "track",
            "event": event,
            "properties": properties,
            "context": context,
            "timestamp": iso_ms(txn.started_at),
            "messageId": txn.event_id[:100],
        }
        if txn.user_id:
            message["userId"] = txn.user_id
        else:
            message["anonymousId"] = txn.anonymous_id or "anonymous"
        return message

    def event_name(self, txn: Transaction, path: str, service: str | None, route: str | None) -> str:
        if self.template == DEFAULT_EVENT_NAME:
            return f"API Request: {txn.method}"
        return event_name(self.template, txn.method, path, txn.host, txn.status, service, route)

    def encode(self, txn: Transaction) -> bytes:
        message = self.message(txn)
        if not message["messageId"]:
            raise EventRejected("record has no id")
        if not message["event"].strip():
            raise EventRejected("event name is empty (check --event-name-template)")
        data = orjson.dumps(message)
        if len(data) <= MAX_MESSAGE_BYTES:
            return data
        return self._shrink(message, len(data))

    def _shrink(self, message: dict[str, Any], size: int) -> bytes:
        properties = message["properties"]
        present = [k for k in _SHRINKABLE if k in properties]
        for key in sorted(present, key=lambda k: -len(orjson.dumps(properties.get(k)))):
            original = len(orjson.dumps(properties.get(key)))
            properties[key] = f"[truncated by kong-ship: {original} bytes]"
            data = orjson.dumps(message)
            if len(data) <= MAX_MESSAGE_BYTES:
                return data
        raise EventRejected(f"message is {size} bytes, over Segment's 32 KB limit even after shrinking")

    # -- a batch ---------------------------------------------------------------------------------------------
    def request(self, events: list[bytes]) -> httpx.Request:
        # sentAt is stamped for every attempt: Segment corrects clock skew with it (timestamp is shifted by
        # receivedAt - sentAt), so a stale sentAt on a retry would move every event in time.
        body = b'{"batch":[' + b",".join(events) + b'],"sentAt":"' + iso_ms(None).encode() + b'"}'
        if self.gzip:
            body = gzip_body(body)
        return httpx.Request("POST", self.url, headers=self._headers, content=body)

    def prepare(self, events: list[bytes]) -> PreparedBody | None:
        """The body up to sentAt's value, deflated in a worker; None without gzip (nothing costly to move)."""
        return PreparedBody.make(b'{"batch":[', events, b'],"sentAt":"') if self.gzip else None

    def prepared_request(self, body: PreparedBody) -> httpx.Request:
        # The same bytes as `request`, sentAt stamped at this attempt as there.
        content = body.gzip(iso_ms(None).encode() + b'"}')
        return httpx.Request("POST", self.url, headers=self._headers, content=content)

    def verdict(self, response: httpx.Response) -> Verdict:
        if response.status_code == 413:
            return Verdict(SPLIT, "Segment answered 413: batch too large")
        return judge_common(response, "Segment", "check SEGMENT_WRITE_KEY (or --segment-write-key-file)")


OPTIONS = SegmentSink.OPTIONS  # the CLI reads each sink module's OPTIONS
_CONTRACT: type[Sink] = SegmentSink  # mypy checks the class against the sink contract here
