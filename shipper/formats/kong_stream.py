"""Kong's stream (TCP, TLS, UDP) log record → Transaction of kind `stream`.

Kong 2.2+ log plugins (file-log, tcp-log, …) on a stream route serialize the session, not a request
(`kong/pdk/log.lua`, the non-http `serialize`): `session` {`received`, `sent`, `status`, `server_port`, `tls`},
`upstream` {`received`, `sent`}, `latencies` {`kong`, `session`}, `tries`, `authenticated_entity`, `route`,
`service`, `consumer`, `client_ip`, `started_at`, and from 3.x `workspace`, `workspace_name`. There is no request
id, method or path. `session.received` is what the client sent to Kong, `session.sent` what Kong sent back.
"""

from __future__ import annotations

from typing import Any

from shipper.formats.kong_fields import entity, tls_info, upstream_tries
from shipper.formats.values import count_field, epoch_ms_field, latency_field, port_field, status_field, to_str
from shipper.model import Position, Transaction

# Kong's stream protocols, as a service or route names them (`tls_passthrough`: SNI routing without termination).
STREAM_PROTOCOLS = frozenset(("tcp", "tls", "udp", "tls_passthrough"))


def looks_like_kong_stream(record: dict[str, Any]) -> bool:
    return type(record.get("session")) is dict and "request" not in record


def _protocol(service: dict | None, route: dict | None, tls: dict | None) -> str:
    # The record names no protocol, so it comes from what the session shows and the entities say: TLS info
    # means Kong terminated TLS from the client (`tls`); else the one stream protocol the route accepts besides
    # `tls` (`tcp`, `udp`, `tls_passthrough`: SNI routing, never decrypted); else the service's protocol.
    if tls:
        return "tls"
    if route:
        protocols = route.get("protocols")
        if type(protocols) is list:
            plain = [p for p in protocols if type(p) is str and p in STREAM_PROTOCOLS and p != "tls"]
            if len(plain) == 1:
                return plain[0]
    if service:
        protocol = service.get("protocol")
        if type(protocol) is str and protocol in STREAM_PROTOCOLS:
            return protocol
    return ""


def parse_kong_stream(record: dict[str, Any], position: Position | None, fallback_id: str) -> Transaction:
    get = record.get
    session = record["session"]
    sget = session.get
    upstream = get("upstream")
    latencies = get("latencies")
    if type(latencies) is not dict:
        latencies = {}
    tries = get("tries")
    service = entity(get("service"), ())
    route = entity(get("route"), ())
    tls = tls_info(sget("tls"))

    details: dict[str, Any] | None = None
    if type(upstream) is dict:
        # Bytes Kong received from and sent to the upstream; only those the record has.
        received = count_field(upstream.get("received"), "upstream.received")
        sent = count_field(upstream.get("sent"), "upstream.sent")
        details = {k: v for k, v in (("upstream_received", received), ("upstream_sent", sent)) if v is not None} or None

    workspace, workspace_name = get("workspace"), get("workspace_name")
    return Transaction(
        event_id=fallback_id,  # a stream session has no request id
        source_format="kong",
        kind="stream",
        protocol=_protocol(service, route, tls),
        position=position,
        started_at=epoch_ms_field(get("started_at"), "started_at"),
        port=port_field(sget("server_port"), "session.server_port"),
        request_size=count_field(sget("received"), "session.received"),
        response_size=count_field(sget("sent"), "session.sent"),
        status=status_field(sget("status"), "session.status"),
        client_ip=to_str(get("client_ip")),
        tls=tls,
        latency_request=latency_field(latencies.get("session"), "latencies.session"),
        latency_kong=latency_field(latencies.get("kong"), "latencies.kong"),
        service=service,
        route=route,
        workspace=workspace if type(workspace) is str else None,
        workspace_name=workspace_name if type(workspace_name) is str else None,
        tries=len(tries) if type(tries) is list else None,
        upstream_tries=upstream_tries(tries) if type(tries) is list else None,
        consumer=entity(get("consumer"), ("id",)),
        authenticated_entity=entity(get("authenticated_entity"), ("id", "consumer_id")),
        details=details,
        raw=record,
    )
