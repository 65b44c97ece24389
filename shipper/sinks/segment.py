"""Segment's HTTP Tracking API: each Transaction becomes a `track` call shaped as kong-segment-log shaped it,
sent in gzip batches to `POST {endpoint}/v1/batch`.

Limits (Segment's documentation): a message ≤ 32 KB, a request ≤ 500 KB uncompressed, ≤ 2,500 messages. Segment
answers 200 to much bad input, so events are validated here before they are sent.
"""

from __future__ import annotations

import base64
import string
import zlib
from datetime import UTC, datetime
from typing import Any, ClassVar

import click
import httpx
import orjson

from shipper import __version__
from shipper.errors import ConfigError
from shipper.model import Transaction
from shipper.sinks.base import SPLIT, EventRejected, Verdict, absolute_url, judge_common
from shipper.sinks.credentials import read_secret

DEFAULT_ENDPOINT = "https://api.segment.io"
DEFAULT_EVENT_NAME = "API Request: {method}"
PLACEHOLDERS = ("method", "path", "host", "status", "service", "route")
MAX_MESSAGE_BYTES = 32_000  # Segment's limit is 32 KB; keep a margin for the batch's separators
MAX_BODY_BYTES = 475_000  # the official library's packing target, under the 500,000-byte request limit
MAX_MESSAGES = 2_500
# Level 1 compresses these repetitive JSON batches about 6:1 (level 6: 8:1) at a third of the CPU; the CPU is
# what a backfill runs short of, not the bandwidth.
GZIP_LEVEL = 1
LIBRARY = {"name": "kong-ship", "version": __version__}
KIND_EVENT_NAMES = {
    "admin_request": "Kong Admin Request",  # a Kong Admin API audit record (/audit/requests)
    "config_change": "Kong Config Change",  # a Kong database audit record (/audit/objects)
    "event_hook": "Kong Event Hook",
}
# Properties shrunk, largest first, when a message is over the limit; what identifies the call stays. Audit
# records' bulky parts (the request body, the changed entity) go the same way.
_SHRINKABLE = ("queryJson", "queryObject", "queryString", "rawpath", "uri", "path", "payload", "entity", "old_entity")

# (flag declarations, click keyword arguments): the CLI turns these into options of every shipping command.
OPTIONS = [
    (
        ("--segment-write-key-file",),
        {"type": click.Path(dir_okay=False), "help": "File holding the Segment write key (default: env SEGMENT_WRITE_KEY)."},
    ),
    (
        ("--event-name-template",),
        {
            "default": DEFAULT_EVENT_NAME,
            "show_default": True,
            "help": "Segment event name; placeholders {method} {path} {host} {status} {service} {route}.",
        },
    ),
    (
        ("--strip-trailing-slash/--keep-trailing-slash",),
        {"default": True, "show_default": True, "help": "Strip a trailing slash from {path} and the path property."},
    ),
]


_second_cache: list = [None, ""]  # (epoch second, its "YYYY-MM-DDTHH:MM:SS." text): records come in time order


def iso_ms(epoch_ms: int | None) -> str:
    """ISO-8601 UTC with zero-padded milliseconds, e.g. 2025-11-22T08:26:40.005Z."""
    if epoch_ms is None:
        epoch_ms = int(datetime.now(UTC).timestamp() * 1000)
    second, millis = divmod(epoch_ms, 1000)
    cache = _second_cache
    if cache[0] != second:
        cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        cache[0] = second
    return f"{cache[1]}{millis:03d}Z"


def check_template(template: str) -> str:
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None and field not in PLACEHOLDERS:
            raise ConfigError(
                f"--event-name-template: unknown placeholder {{{field}}} (use {', '.join('{%s}' % p for p in PLACEHOLDERS)})"
            )
    return template


class SegmentSink:
    name: ClassVar[str] = "segment"
    parallel_safe = True  # encode is a pure function: it may run in worker processes
    max_batch_events = MAX_MESSAGES
    max_batch_bytes = MAX_BODY_BYTES
    envelope_bytes = len(b'{"batch":[],"sentAt":"2025-01-01T00:00:00.000Z"}')

    def __init__(
        self,
        write_key: str,
        endpoint: str = DEFAULT_ENDPOINT,
        event_name_template: str = DEFAULT_EVENT_NAME,
        strip_trailing_slash: bool = True,
        gzip: bool = True,
    ):
        self.url = endpoint.rstrip("/") + "/v1/batch"
        self.template = check_template(event_name_template)
        self.strip_trailing_slash = strip_trailing_slash
        self.gzip = gzip
        token = base64.b64encode(f"{write_key}:".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"

    @classmethod
    def from_options(cls, opts: dict[str, Any], endpoint: str | None) -> SegmentSink:
        key = read_secret("SEGMENT_WRITE_KEY", opts.get("segment_write_key_file"), "--segment-write-key-file")
        return cls(
            key,
            endpoint or DEFAULT_ENDPOINT,
            opts.get("event_name_template") or DEFAULT_EVENT_NAME,
            opts.get("strip_trailing_slash", True),
        )

    # -- one event -------------------------------------------------------------------------------------------
    def message(self, txn: Transaction) -> dict[str, Any]:
        if txn.kind != "api":
            return self._other_message(txn)
        path = txn.path
        if self.strip_trailing_slash and len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        properties: dict[str, Any] = {
            "method": txn.method,
            "uri": absolute_url(txn),
            "protocol": txn.scheme or "http",
            "host": txn.host,
            "port": txn.port,
            "rawpath": txn.raw_path,
            "path": path,
            "queryString": txn.query_string,
            "queryObject": txn.query,
            "queryJson": orjson.dumps(txn.query).decode(),
            "hash": txn.fragment,
        }
        for i, component in enumerate([c for c in path.split("/") if c][:10], start=1):
            properties[f"pathComponent{i}"] = component
        properties["timeOfProxy"] = txn.latency_proxy
        properties["timeOfKong"] = txn.latency_kong
        properties["timeOfRequest"] = txn.latency_request
        properties["statusCode"] = txn.status
        service_name = (txn.service or {}).get("name")
        route_name = (txn.route or {}).get("name")
        if service_name:
            properties["service"] = service_name
        if route_name:
            properties["route"] = route_name

        return self._track(txn, self.event_name(txn, path, service_name, route_name), properties)

    def _other_message(self, txn: Transaction) -> dict[str, Any]:
        """Records that are not proxied calls (Kong audit records, event hooks): named after their kind
        (`Kong Admin Request`, `Kong Config Change`, `Kong Event Hook`), with their details as properties; the
        RBAC user of an audit record is the `userId`."""
        return self._track(txn, KIND_EVENT_NAMES.get(txn.kind, txn.kind), dict(txn.details or {}))

    @staticmethod
    def _track(txn: Transaction, event: str, properties: dict[str, Any]) -> dict[str, Any]:
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
        return self.template.format(
            method=txn.method, path=path, host=txn.host, status=txn.status, service=service or "", route=route or ""
        )

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
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            body = compressor.compress(body) + compressor.flush()
        return httpx.Request("POST", self.url, headers=self._headers, content=body)

    def judge(self, response: httpx.Response) -> Verdict:
        if response.status_code == 413:
            return Verdict(SPLIT, "Segment answered 413: batch too large")
        return judge_common(response, "Segment", "check SEGMENT_WRITE_KEY (or --segment-write-key-file)")

    def transport(self) -> httpx.BaseTransport | None:
        return None
