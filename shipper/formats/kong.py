"""Kong's file-log record (0.x through 3.x) → Transaction. See ../shared/kong-log.md for the field history."""

from __future__ import annotations

from typing import Any

from shipper.formats.kong_fields import ai_usage, entity, tls_info, trace_id, upstream_tries
from shipper.formats.values import (
    count_field, epoch_ms_field, latency_field, parse_query, port_field, split_target, split_url, status_field, to_str,
    upstream_status_field,
)
from shipper.model import Position, Transaction

_CONSUMER_IDS = ("id",)
_CREDENTIAL_IDS = ("id", "consumer_id")


def looks_like_kong(record: dict[str, Any]) -> bool:
    return isinstance(record.get("request"), dict) and (
        "started_at" in record or "response" in record or "latencies" in record
    )


def _str(value: Any) -> str:
    return value if type(value) is str else to_str(value)


def _opt_str(value: Any) -> str | None:
    return value if type(value) is str else None


def _entity(value: Any) -> dict | None:
    # The entity as Kong logged it (no copy: this runs for every line, and the dict is not shared).
    return value if type(value) is dict and value else None


def parse_kong(record: dict[str, Any], position: Position | None, fallback_id: str) -> Transaction:
    get = record.get
    request = record["request"]
    rget = request.get
    response = get("response")
    if type(response) is not dict:
        response = {}
    latencies = get("latencies")
    if type(latencies) is not dict:
        latencies = {}

    # Before 0.12 the absolute URL was `request.request_uri`; after, `request.url` (and `uri` the target).
    url = _str(rget("url")) or _str(rget("request_uri"))
    scheme, host, port, url_target = split_url(url) if url else ("", "", None, "")
    raw_path = _str(rget("uri")) or url_target
    path, query_string, fragment = split_target(raw_path)

    headers = rget("headers")
    if type(headers) is not dict:
        headers = {}
    if not host:
        host_header = _str(headers.get("host"))
        host = host_header.rpartition(":")[0] or host_header
    query = rget("querystring")
    if type(query) is not dict:
        query = parse_query(query_string)

    tries = get("tries")
    request_id = rget("id")
    status = response.get("status")
    response_headers = response.get("headers")
    user_agent = headers.get("user-agent")
    upstream_status, upstream_statuses = upstream_status_field(get("upstream_status"), "upstream_status")
    # Kong 3.x fields: absent on most lines of most versions, so each costs one lookup unless present.
    tls, trace, correlation, ai = rget("tls"), get("trace_id"), get("correlation_id"), get("ai")

    return Transaction(
        event_id=request_id if type(request_id) is str and request_id else fallback_id,
        source_format="kong",
        position=position,
        started_at=epoch_ms_field(get("started_at"), "started_at"),
        method=_str(rget("method")).upper(),
        scheme=scheme,
        host=host,
        port=port if port is None or 0 <= port <= 65535 else port_field(port, "request.url"),
        raw_path=raw_path,
        path=path,
        query_string=query_string,
        query=query,
        fragment=fragment,
        request_headers=headers,
        request_size=count_field(rget("size"), "request.size"),
        request_body=rget("body"),
        client_ip=_str(get("client_ip")),
        tls=None if tls is None else tls_info(tls),
        user_agent=user_agent if type(user_agent) is str else "",
        status=status_field(status, "response.status"),
        response_headers=response_headers if type(response_headers) is dict else {},
        response_size=count_field(response.get("size"), "response.size"),
        response_body=response.get("body"),
        latency_request=latency_field(latencies.get("request"), "latencies.request"),
        latency_kong=latency_field(latencies.get("kong"), "latencies.kong"),
        latency_receive=latency_field(latencies.get("receive"), "latencies.receive"),
        latency_proxy=latency_field(latencies.get("proxy"), "latencies.proxy"),  # -1: no upstream call
        service=_entity(get("service")) or _entity(get("api")),
        route=_entity(get("route")),
        workspace=_opt_str(get("workspace")),
        workspace_name=_opt_str(get("workspace_name")),
        upstream_uri=_opt_str(get("upstream_uri")),
        upstream_status=upstream_status,
        upstream_statuses=upstream_statuses,
        tries=len(tries) if type(tries) is list else None,
        upstream_tries=upstream_tries(tries) if type(tries) is list else None,
        trace_id=None if trace is None else trace_id(trace),
        correlation_id=correlation if type(correlation) is str and correlation else None,
        ai=None if ai is None else ai_usage(ai),
        response_source=_opt_str(get("source")),
        consumer=entity(get("consumer"), _CONSUMER_IDS),
        authenticated_entity=entity(get("authenticated_entity"), _CREDENTIAL_IDS),
        raw=record,
    )
