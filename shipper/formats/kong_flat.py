"""Kong's HTTP file-log record, decoded with msgspec into only the fields a flat path needs (issue 16), then made
into a slim Transaction by the very checks `kong.parse_kong` applies (`values`, `kong_fields`).

A flat path's promise is the Transaction path's outcome, byte for byte, so this module answers None whenever it
is not sure to read a line as `decode.decode_line` + `Parser` would:
- msgspec and orjson disagree on some bytes: msgspec skips invalid UTF-8 and numbers that overflow a double in
  the fields it ignores (orjson refuses the line, and `decode` repairs or dead-letters it), and keeps integers past
  64 bits as ints (orjson makes floats of them). So a line that is not UTF-8, or may hold such a number, is not
  decoded here, and the integers decoded here are bounded to 64 bits;
- a field of a type other than the ordinary one (a list where Kong writes a string, a bool for a number) fails
  the typed decode: the Transaction path decides what it means;
- nested values whose content matters (entities, the query object, TLS, AI, the trace id, the JWT places) are
  kept as raw bytes and read with orjson, so they are exactly what the Transaction path sees.
A record that `Parser` would not send to `parse_kong` (a spooled record, a stream session, no `started_at`,
`response` or `latencies`), or that has no usable start time, is not decoded here either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import orjson

from shipper.formats.kong_fields import ai_usage, entity, tls_info, trace_id
from shipper.formats.values import (
    count_field, epoch_ms_field, latency_field, parse_query, port_field, split_target, split_url, status_field, to_str,
    upstream_status_field,
)
from shipper.model import Transaction

# orjson reads integers up to 64 bits as ints and larger ones as floats: bounded here (to int64, msgspec's limit).
Int = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
Number = Int | float | str | None  # what the checked fields of `values` take; a bool or a list fails the decode
Text = str | None
UNSET: Any = msgspec.UNSET
_CONSUMER_IDS = ("id",)  # as kong.py reads the consumer and the credential
_CREDENTIAL_IDS = ("id", "consumer_id")
_FIXED_HEADERS = {"authorization": "authorization", "user_agent": "user-agent", "host": "host"}
_CONSUMER_HEADERS = ("x-consumer-custom-id", "x-consumer-username", "x-consumer-id", "x-credential-identifier")
# A line's numbers as shapes: digits as `0`, exponents as `e`, brackets as `:` (opening) or `,` (closing), signs,
# points and blanks deleted, so `"a": -1.5E+400 }` reads `"a":00e000,`.
_SHAPES = bytes.maketrans(b"123456789E[]}", b"000000000e:,,")
_DELETED = b".+- \t\r\n"
_COLON, _COMMA, _ZERO = ord(":"), ord(","), ord("0")


def _read(raw: msgspec.Raw) -> Any:
    return orjson.loads(memoryview(raw))  # type: ignore[arg-type]


class Response(msgspec.Struct):
    status: Number = None
    size: Number = None


class Latencies(msgspec.Struct):
    request: Number = None
    kong: Number = None
    receive: Number = None
    proxy: Number = None


def _may_overflow(data: bytes) -> bool:
    """True when the line may hold a number orjson reads as infinity (and refuses) where msgspec skips it: one
    with an exponent of three digits or more, or a run of 200 digits (with an exponent under 100, the least that
    reaches 1e309). Kong writes exponents of two digits (`balancer_start_ns` 1.7754623990405e+18); hex ids hold
    `e000`, but not after a `:` or `,` and digits only. A hit inside a string only costs the fast path."""
    shape = data.translate(_SHAPES, _DELETED)
    at = shape.find(b"e000")
    while at >= 0:
        start = at
        while start > 0 and shape[start - 1] == _ZERO:
            start -= 1
        if start < at and start > 0 and shape[start - 1] in (_COLON, _COMMA):
            return True
        at = shape.find(b"e000", at + 1)
    return b"0" * 200 in shape


class KongDecoder:
    """A decoder of the fields one flat path needs, with the JWT places of its Identify as fields too: top-level
    names (`jwt`) and request headers (`request.headers.authorization`). `supports` says which places it reads."""

    def __init__(self, jwt_places: Sequence[tuple[str, ...]]):
        header_places = sorted({p[2] for p in jwt_places if len(p) == 3 and p[:2] == ("request", "headers")})
        top_places = sorted({p[0] for p in jwt_places if len(p) == 1})
        headers = dict(_FIXED_HEADERS)
        for i, name in enumerate((*_CONSUMER_HEADERS, *header_places)):
            if name not in headers.values():
                headers[f"h{i}"] = name
        self.header_fields = headers  # attribute -> header name
        header_type = msgspec.defstruct(
            "Headers", [(attr, Text, None) for attr in headers], rename=headers  # type: ignore[arg-type]
        )
        request_type = msgspec.defstruct(
            "Request",
            [
                ("method", Text, None), ("url", Text, None), ("request_uri", Text, None), ("uri", Text, None),
                ("id", Text, None), ("size", Number, None), ("querystring", msgspec.Raw, None),
                ("headers", header_type | None, None), ("tls", msgspec.Raw, None),
            ],  # fmt: skip
        )
        fields: list[tuple[str, Any, Any]] = [
            ("request", request_type, msgspec.NODEFAULT), ("response", Response | None, UNSET),
            ("latencies", Latencies | None, UNSET), ("started_at", Number, UNSET), ("client_ip", Text, None),
            ("service", msgspec.Raw, None), ("api", msgspec.Raw, None),
            ("route", msgspec.Raw, None), ("consumer", msgspec.Raw, None),
            ("authenticated_entity", msgspec.Raw, None), ("workspace", Text, None),
            ("workspace_name", Text, None), ("upstream_uri", Text, None), ("upstream_status", Number, None),
            ("tries", list[msgspec.Raw] | None, None), ("trace_id", msgspec.Raw, None),
            ("correlation_id", Text, None), ("ai", msgspec.Raw, None), ("source", Text, None),
            ("spool", msgspec.Raw, UNSET), ("record", msgspec.Raw, UNSET),
        ]  # fmt: skip
        names = {name for name, _, _ in fields}
        self.top_places = tuple(p for p in top_places if p not in names)
        fields += [(f"t{i}", msgspec.Raw, None) for i in range(len(self.top_places))]
        record_type = msgspec.defstruct(
            "KongRecord", fields, rename={f"t{i}": name for i, name in enumerate(self.top_places)}
        )
        self.supported = {("request", "headers", name) for name in headers.values()} | {(p,) for p in self.top_places}
        self.decode = msgspec.json.Decoder(record_type).decode
        self._entities: dict[bytes, Any] = {}

    def supports(self, places: Sequence[tuple[str, ...]]) -> bool:
        return all(tuple(place) in self.supported for place in places)

    def _loads(self, raw: Any) -> Any:
        # Entities repeat on every line: each distinct text is read once (nothing downstream changes them).
        key = bytes(raw)
        value = self._entities.get(key)
        if value is None:
            if len(self._entities) >= 1024:
                self._entities.clear()
            value = self._entities[key] = orjson.loads(key)
        return value

    def transaction(self, data: bytes, file_id: str, offset: int) -> Transaction | None:
        """The slim Transaction of an ordinary Kong HTTP record (what `Parser.parse` makes of it, less the
        fields no flat path reads: headers but the identity ones, bodies, response headers, `upstream_tries`,
        `position`), or None when the line should take the Transaction path."""
        if not data.isascii():
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if _may_overflow(data):
            return None
        rec: Any = self.decode(data)  # a struct made at run time (defstruct): its fields are not known to mypy
        if rec.spool is not UNSET and rec.record is not UNSET:
            return None  # a spooled record (auto-detected before Kong's)
        if rec.started_at is UNSET and rec.response is UNSET and rec.latencies is UNSET:
            return None  # not `looks_like_kong`
        started_at = epoch_ms_field(None if rec.started_at is UNSET else rec.started_at, "started_at")
        if started_at is None:
            return None  # dated at read time or by the runtime: the Transaction path's business
        request = rec.request
        response = rec.response or Response()
        latencies = rec.latencies or Latencies()
        url = request.url or request.request_uri or ""
        scheme, host, port, url_target = split_url(url) if url else ("", "", None, "")
        raw_path = request.uri or url_target
        path, query_string, fragment = split_target(raw_path)
        header_struct = request.headers
        headers: dict[str, Any] = {}
        if header_struct is not None:
            for attr, name in self.header_fields.items():
                value = getattr(header_struct, attr)
                if value is not None:
                    headers[name] = value
        if not host:
            host_header = to_str(headers.get("host"))
            host = host_header.rpartition(":")[0] or host_header
        query = None if request.querystring is None else _read(request.querystring)
        if type(query) is not dict:
            query = parse_query(query_string)
        upstream_status, upstream_statuses = upstream_status_field(rec.upstream_status, "upstream_status")
        raw: dict[str, Any] = {"request": {"headers": headers}}
        for i, name in enumerate(self.top_places):
            value = getattr(rec, f"t{i}")
            if value is not None:
                raw[name] = _read(value)
        loads = self._loads  # a Raw field is None when absent, b"null" when null: orjson reads that as None too
        service = None if rec.service is None else loads(rec.service)
        if type(service) is not dict or not service:
            service = None if rec.api is None else loads(rec.api)
            if type(service) is not dict or not service:
                service = None
        route = None if rec.route is None else loads(rec.route)
        user_agent = headers.get("user-agent")
        return Transaction(
            event_id=request.id or f"{file_id}-{offset}",
            source_format="kong",
            started_at=started_at,
            method=(request.method or "").upper(),
            scheme=scheme,
            host=host,
            port=port if port is None or 0 <= port <= 65535 else port_field(port, "request.url"),
            raw_path=raw_path,
            path=path,
            query_string=query_string,
            query=query,
            fragment=fragment,
            request_headers=headers,
            request_size=count_field(request.size, "request.size"),
            client_ip=rec.client_ip or "",
            tls=None if request.tls is None else tls_info(_read(request.tls)),
            user_agent=user_agent if type(user_agent) is str else "",
            status=status_field(response.status, "response.status"),
            response_size=count_field(response.size, "response.size"),
            latency_request=latency_field(latencies.request, "latencies.request"),
            latency_kong=latency_field(latencies.kong, "latencies.kong"),
            latency_receive=latency_field(latencies.receive, "latencies.receive"),
            latency_proxy=latency_field(latencies.proxy, "latencies.proxy"),
            service=service,
            route=route if type(route) is dict and route else None,
            workspace=rec.workspace,
            workspace_name=rec.workspace_name,
            upstream_uri=rec.upstream_uri,
            upstream_status=upstream_status,
            upstream_statuses=upstream_statuses,
            tries=None if rec.tries is None else len(rec.tries),
            trace_id=None if rec.trace_id is None else trace_id(_read(rec.trace_id)),
            correlation_id=rec.correlation_id or None,
            ai=None if rec.ai is None else ai_usage(_read(rec.ai)),
            response_source=rec.source,
            consumer=None if rec.consumer is None else entity(loads(rec.consumer), _CONSUMER_IDS),
            authenticated_entity=(
                None if rec.authenticated_entity is None else entity(loads(rec.authenticated_entity), _CREDENTIAL_IDS)
            ),
            raw=raw,
        )
