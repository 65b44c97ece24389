"""One Moesif event from one Transaction, field by field as kong-plugin-moesif 2.1.2 builds it (moesif_ser.lua,
moesif_gov.lua, client_ip.lua), with the differences the README's "Moesif quick start" lists.

`EventBuilder` is mixed into the sink: it reads the sink's settings (`user_id_header`, masks, limits, …).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import ipaddress
import re
import time
import uuid
import zlib
from typing import Any

import orjson

from shipper.model import Transaction
from shipper.processors.masking import MASK, mask_query_string
from shipper.processors.names import normalize
from shipper.sinks.base import absolute_url
from shipper.sinks.segment import iso_ms

NAMESPACE = uuid.UUID("6f9c5e0a-3c1d-4a8e-9b5e-6b6f6e6b5368")  # kong-ship's namespace for transaction ids
BODY_LIMIT_MARKER = "body size exceeded {which}_max_body_size_limit ({limit} bytes): not captured"
# client_ip.lua: the headers proxies and CDNs put the client's address in, in the plugin's order
# (X-Forwarded-For, second, is a list: its first valid address counts).
CLIENT_IP_HEADERS = (
    "x-client-ip", "x-forwarded-for", "cf-connecting-ip", "fastly-client-ip", "true-client-ip", "x-real-ip",
    "x-cluster-client-ip", "x-forwarded", "forwarded-for", "forwarded",
)
# The x-consumer-* headers Kong's auth plugins set, in the order the plugin reads them, with the consumer
# entity's key that holds the same value (Kong logs the consumer too; headers can be hidden or stripped).
CONSUMER_KEYS = (("x-consumer-custom-id", "custom_id"), ("x-consumer-username", "username"), ("x-consumer-id", "id"))


_NAMESPACE_SHA1 = hashlib.sha1(NAMESPACE.bytes)  # copied per event: cheaper than hashing the namespace again
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_SUMMARY_KEYS = ("id", "name", "username", "custom_id")
_CACHE_MAX = 4096  # remembered summaries and forwarded-for lists; beyond that, work is redone, not wrong
_summaries: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}  # id(entity) -> (entity, its summary)
_forwarded: dict[str, str | None] = {}  # an X-Forwarded-For text -> its first valid address
# id()s of a call's service, route and consumer, its workspace id and name -> (those objects, metadata.kong's keys
# made of them)
_entity_metadata: dict[tuple[int, int, int, Any, Any], tuple[Any, Any, Any, dict[str, Any]]] = {}
# An IPv4 address as ipaddress accepts it (four ASCII decimal octets up to 255, no leading zero): the common
# case answered without building an address object; anything else is asked of ipaddress.
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])")


def transaction_id(event_id: str) -> str:
    """A UUID derived from the record (36 characters): a resend is the same transaction to Moesif.
    `str(uuid.uuid5(NAMESPACE, event_id))` (RFC 4122 version 5), without the UUID object: once per event."""
    digest = _NAMESPACE_SHA1.copy()
    digest.update(event_id.encode())
    h = digest.hexdigest()
    # Set in the hex text: the version nibble (5), and the variant bits (10) of the nibble after the third dash.
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def is_ip(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    if _IPV4.fullmatch(value):
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _forwarded_for(value: Any) -> str | None:
    """The first valid address of an X-Forwarded-For list. `a.b.c.d:port` and `[v6]:port` lose their port
    (Azure adds one); a bare IPv6 address is kept whole (the plugin cut compressed ones at the last `:`)."""
    if not isinstance(value, str):
        return None
    for part in value.split(","):
        ip = "".join(part.split())
        if is_ip(ip):
            return ip
        if ip.startswith("[") and "]" in ip:
            ip = ip[1:ip.index("]")]
        elif ip.count(":") == 1:
            ip = ip.split(":", 1)[0]
        if is_ip(ip):
            return ip
    return None


def client_ip(headers: dict[str, Any], remote: str, from_kong_only: bool = False) -> str | None:
    """The plugin's client address: the first valid one of CLIENT_IP_HEADERS, else the address Kong saw.
    With `from_kong_only`, the address Kong logged alone (any client can send those headers)."""
    if not from_kong_only:
        ip: str | None
        for name in CLIENT_IP_HEADERS:
            value = headers.get(name)
            if value is None:
                continue
            if name != "x-forwarded-for":
                ip = value if is_ip(value) else None
            elif type(value) is str:
                # The same proxies' lists come on line after line; only the same text gets its answer back.
                ip = _forwarded.get(value, "")
                if ip == "":
                    if len(_forwarded) >= _CACHE_MAX:
                        _forwarded.clear()
                    ip = _forwarded[value] = _forwarded_for(value)
            else:
                ip = None  # _forwarded_for of a list
            if ip:
                return ip
    return remote or None


def _text(value: Any) -> str | None:
    """An id from a header or claim as the plugin's tostring() made it; masked, empty or structured values are
    not ids (a repeated header gives its first value)."""
    kind = type(value)
    if kind is str:  # the usual ones first: a text, or nothing
        return value if value and value != MASK else None
    if value is None:
        return None
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str)), None)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value and value != MASK:
        return value
    return None


def _claim(claims: dict[str, Any] | None, name: str | None) -> str | None:
    """A claim by name, case-insensitively (the plugin lower-cased the token's keys)."""
    if not claims or not name:
        return None
    if name in claims:
        return _text(claims[name])
    wanted = name.lower()
    for key, value in claims.items():
        if isinstance(key, str) and key.lower() == wanted:
            return _text(value)
    return None


def session_token(txn: Transaction) -> str | None:
    """The plugin sent the credential's `key`, else its `id`. A key is a secret: kong-ship sends the credential
    id (one per key, so sessions group the same), else a SHA-256 of the key; a token's `sid` last."""
    credential = txn.authenticated_entity
    if credential:
        if (ident := _text(credential.get("id"))) is not None:
            return ident
        if (key := _text(credential.get("key"))) is not None:
            return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    claims = txn.jwt_claims
    return _text(claims.get("sid")) if claims else None


def _strip_keys(value: Any, names: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip_keys(v, names) for k, v in value.items() if normalize(str(k)) not in names}
    if isinstance(value, list):
        return [_strip_keys(v, names) for v in value]
    return value


def _summary(entity: dict[str, Any]) -> dict[str, Any]:
    """An entity's id, name, username and custom_id. The masks hand back one object per entity (and events only
    read it), so each object's summary is made once and shared, held with the object: never another's."""
    cached = _summaries.get(id(entity))
    if cached is not None and cached[0] is entity:
        return cached[1]
    summary = {k: entity[k] for k in _SUMMARY_KEYS if entity.get(k) is not None}
    if len(_summaries) >= _CACHE_MAX:
        _summaries.clear()
    _summaries[id(entity)] = (entity, summary)
    return summary


def _entity_keys(
    service: dict[str, Any] | None, route: dict[str, Any] | None, consumer: dict[str, Any] | None,
    workspace: str | None, workspace_name: str | None,
) -> dict[str, Any]:
    """metadata.kong's first keys, read from the call's entities and workspace alone: route_hosts, service_name,
    the summaries, the workspace. Kong logs the same few on every line and the masks hand back one object per
    entity, so these are made once per trio of objects and workspace texts (the objects held with them, as
    `_summary` holds its object: never another's; the texts compared by value)."""
    key = (id(service), id(route), id(consumer), workspace, workspace_name)
    cached = _entity_metadata.get(key)
    if cached is not None and cached[0] is service and cached[1] is route and cached[2] is consumer:
        return cached[3]
    keys: dict[str, Any] = {}
    if route and route.get("hosts") is not None:
        keys["route_hosts"] = route["hosts"]
    if service and service.get("name") is not None:
        keys["service_name"] = service["name"]
    for name, entity in (("service", service), ("route", route), ("consumer", consumer)):
        if entity:
            keys[name] = _summary(entity)
    if workspace or workspace_name:
        keys["workspace"] = {"id": workspace, "name": workspace_name}
    if len(_entity_metadata) >= _CACHE_MAX:
        _entity_metadata.clear()
    _entity_metadata[key] = (service, route, consumer, keys)
    return keys


def kong_metadata(txn: Transaction) -> dict[str, Any]:
    """`metadata.kong`: the plugin's two keys (`route_hosts`, `service_name`: dashboards filter on them) and
    kong-ship's richer view of the same call. Keys without a value are left out."""
    meta = _entity_keys(txn.service, txn.route, txn.consumer, txn.workspace, txn.workspace_name).copy()
    receive = txn.latency_receive
    if receive is None:
        meta["latencies"] = {"request": txn.latency_request, "kong": txn.latency_kong, "proxy": txn.latency_proxy}
    else:
        meta["latencies"] = {
            "request": txn.latency_request, "kong": txn.latency_kong, "proxy": txn.latency_proxy, "receive": receive,
        }  # fmt: skip
    # The optional keys one by one: a loop over (key, value) pairs cost twice as much (~4 k instructions/event).
    value: Any
    if (value := txn.upstream_uri) is not None:
        meta["upstream_uri"] = value
    if (value := txn.upstream_status) is not None:
        meta["upstream_status"] = value
    if (value := txn.upstream_statuses) is not None:
        meta["upstream_statuses"] = value
    tries, upstream_tries = txn.tries, txn.upstream_tries
    if tries is None and upstream_tries:
        tries = len(upstream_tries)
    if tries is not None:
        meta["tries"] = tries
    if upstream_tries is not None:
        meta["upstream_tries"] = upstream_tries
    if (value := txn.response_source) is not None:
        meta["source"] = value
    if (value := txn.request_size) is not None:
        meta["request_size"] = value
    if (value := txn.response_size) is not None:
        meta["response_size"] = value
    if (value := txn.trace_id) is not None:
        meta["trace_id"] = value
    if (value := txn.correlation_id) is not None:
        meta["correlation_id"] = value
    if (value := txn.tls) is not None:
        meta["tls"] = value
    if (value := txn.ai) is not None:
        meta["ai"] = value
    if txn.kind == "admin_request" and txn.details:
        meta["audit"] = txn.details  # the Kong audit record (signature result, payload masked)
    return meta


class EventBuilder:
    # Settings the sink sets in its __init__.
    api_version: str
    user_id_header: str | None
    company_id_header: str | None
    authorization_user_id_field: str | None
    authorization_company_id_field: str | None
    client_ip_from_kong: bool
    capture_request_body: bool
    capture_response_body: bool
    request_header_masks: frozenset[str]
    request_query_masks: frozenset[str]
    request_body_masks: frozenset[str]
    response_header_masks: frozenset[str]
    response_body_masks: frozenset[str]
    request_body_limit: int
    response_body_limit: int
    decompress: bool

    def user_id(self, txn: Transaction) -> str | None:
        """moesif_gov.lua then moesif_ser.lua: the user_id_header request header; x-consumer-custom-id,
        -username, -id; the token's claim (authorization_user_id_field) or the Basic user; the user_id_header
        response header."""
        headers = txn.request_headers
        get = headers.get
        found: str | None
        # A header or key that is absent (the usual case) costs a lookup, not a call of _text.
        if self.user_id_header and (value := get(self.user_id_header)) is not None and (found := _text(value)):
            return found
        consumer = txn.consumer
        for header, key in CONSUMER_KEYS:
            if (value := get(header)) is not None and (found := _text(value)):
                return found
            if consumer and (value := consumer.get(key)) is not None and (found := _text(value)):
                return found
        if self.authorization_user_id_field:
            found = _claim(txn.jwt_claims, self.authorization_user_id_field)
        else:  # the identity processor's --jwt-claim (default `sub`, the plugin's default too)
            found = txn.user_id if txn.user_source == "jwt" else None
        if found or (found := _text(txn.basic_user)):
            return found
        if self.user_id_header and (found := _text(txn.response_headers.get(self.user_id_header))):
            return found
        # An Admin API request (audit record) has no plugin counterpart: its user is the RBAC admin.
        return txn.user_id if txn.user_source == "rbac" else None

    def company_id(self, txn: Transaction) -> str | None:
        """The company_id_header request header, then response header, then the token's
        authorization_company_id_field claim."""
        if self.company_id_header:
            for headers in (txn.request_headers, txn.response_headers):
                if found := _text(headers.get(self.company_id_header)):
                    return found
        field = self.authorization_company_id_field
        return _claim(txn.jwt_claims, field) if field else None

    def _body(self, body: Any, headers: dict[str, Any], which: str, limit: int, masks: frozenset[str]) -> dict[str, Any]:
        if isinstance(body, str) and str(headers.get("content-encoding", "")).lower() == "gzip":
            try:
                packed = base64.b64decode(body, validate=True)
            except binascii.Error:
                packed = None  # the masks found secrets in it and left it decoded
            if packed is not None and not self.decompress:
                return {"body": body, "transfer_encoding": "base64"}
            if packed is not None:
                try:
                    body = gzip.decompress(packed).decode("utf-8", "replace")
                except (OSError, EOFError, zlib.error):
                    pass
        raw = body if isinstance(body, str) else orjson.dumps(body).decode()
        if len(raw.encode("utf-8", "replace")) > limit:
            return {"body": {"msg": BODY_LIMIT_MARKER.format(which=which, limit=limit)}}
        if isinstance(body, str):
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError:
                # Not JSON: form-encoded (the default masks are applied already; the plugin's are applied here),
                # or raw with --ship-raw-bodies. Sent base64-encoded, as Moesif expects.
                if masks:
                    body = mask_query_string(body, masks)
                return {"body": base64.b64encode(body.encode("utf-8", "replace")).decode(), "transfer_encoding": "base64"}
        if masks:
            body = _strip_keys(body, masks)
        return {"body": body}

    @staticmethod
    def _headers_without(headers: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
        if not names or not names.intersection(headers):
            return headers
        return {k: v for k, v in headers.items() if k not in names}

    def event(self, txn: Transaction) -> dict[str, Any]:
        request_headers = txn.request_headers
        raw_path = txn.raw_path
        if self.request_query_masks and txn.query_string:
            raw_path = raw_path.replace("?" + txn.query_string, "?" + mask_query_string(txn.query_string, self.request_query_masks), 1)
        started = txn.started_at if txn.started_at is not None else int(time.time() * 1000)

        request: dict[str, Any] = {
            "time": iso_ms(started),
            "uri": absolute_url(txn, raw_path),
            "verb": txn.method,
            "headers": (self._headers_without(request_headers, self.request_header_masks)
                        if self.request_header_masks else request_headers),
            "ip_address": client_ip(request_headers, txn.client_ip, self.client_ip_from_kong),
            "api_version": self.api_version,
        }
        if self.capture_request_body and txn.request_body is not None:
            request.update(self._body(txn.request_body, request_headers, "request", self.request_body_limit,
                                      self.request_body_masks))
        response_headers = txn.response_headers
        response: dict[str, Any] = {
            "time": iso_ms(started + int(txn.latency_request or 0)),
            "status": txn.status if txn.status is not None else 0,
            "headers": (self._headers_without(response_headers, self.response_header_masks)
                        if self.response_header_masks else response_headers),
        }
        if self.capture_response_body and txn.response_body is not None:
            response.update(self._body(txn.response_body, txn.response_headers, "response", self.response_body_limit,
                                       self.response_body_masks))
        event: dict[str, Any] = {
            "request": request,
            "response": response,
            "direction": "Incoming",
            "metadata": {"kong": kong_metadata(txn)},
            "transaction_id": transaction_id(txn.event_id),
        }
        if user := self.user_id(txn):
            event["user_id"] = user
        if company := self.company_id(txn):
            event["company_id"] = company
        if session := session_token(txn):
            event["session_token"] = session
        return event
