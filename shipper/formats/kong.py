"""Kong's file-log record (0.x through 3.x) → Transaction. See ../shared/kong-log.md for the field history."""

from __future__ import annotations

from typing import Any

from shipper.formats.values import (
    as_dict,
    entity,
    parse_query,
    split_target,
    split_url,
    to_float,
    to_int,
    to_str,
)
from shipper.model import Position, Transaction

_SERVICE_KEYS = ("id", "name", "host", "port", "protocol", "path")
_API_KEYS = ("id", "name", "upstream_url")  # Kong < 1.0
_ROUTE_KEYS = ("id", "name", "paths")
_CONSUMER_KEYS = ("id", "username", "custom_id")
_CREDENTIAL_KEYS = ("id", "consumer_id")


def looks_like_kong(record: dict[str, Any]) -> bool:
    return isinstance(record.get("request"), dict) and (
        "started_at" in record or "response" in record or "latencies" in record
    )


def parse_kong(record: dict[str, Any], position: Position | None, fallback_id: str) -> Transaction:
    request = record["request"]
    response = as_dict(record.get("response"))
    latencies = as_dict(record.get("latencies"))

    # Before 0.12 the absolute URL was `request.request_uri`; after, `request.url` (and `uri` the target).
    url = to_str(request.get("url")) or to_str(request.get("request_uri"))
    scheme, host, port, url_target = split_url(url) if url else ("", "", None, "")
    raw_path = to_str(request.get("uri")) or url_target
    path, query_string, fragment = split_target(raw_path)

    headers = as_dict(request.get("headers"))
    if not host:
        host = to_str(headers.get("host")).rpartition(":")[0] or to_str(headers.get("host"))
    query = request.get("querystring")
    if not isinstance(query, dict):
        query = parse_query(query_string)

    proxy = to_float(latencies.get("proxy"))
    tries = record.get("tries")
    request_id = request.get("id")

    return Transaction(
        event_id=request_id if isinstance(request_id, str) and request_id else fallback_id,
        source_format="kong",
        position=position,
        started_at=to_int(record.get("started_at")),
        method=to_str(request.get("method")).upper(),
        scheme=scheme,
        host=host,
        port=port,
        raw_path=raw_path,
        path=path,
        query_string=query_string,
        query=query,
        fragment=fragment,
        request_headers=headers,
        request_size=to_int(request.get("size")),
        request_body=request.get("body"),
        client_ip=to_str(record.get("client_ip")),
        user_agent=to_str(headers.get("user-agent")),
        status=to_int(response.get("status")),
        response_headers=as_dict(response.get("headers")),
        response_size=to_int(response.get("size")),
        response_body=response.get("body"),
        latency_request=to_float(latencies.get("request")),
        latency_kong=to_float(latencies.get("kong")),
        latency_proxy=None if proxy is None or proxy < 0 else proxy,
        service=entity(record.get("service"), _SERVICE_KEYS) or entity(record.get("api"), _API_KEYS),
        route=entity(record.get("route"), _ROUTE_KEYS),
        workspace=record.get("workspace") if isinstance(record.get("workspace"), str) else None,
        workspace_name=record.get("workspace_name") if isinstance(record.get("workspace_name"), str) else None,
        upstream_uri=record.get("upstream_uri") if isinstance(record.get("upstream_uri"), str) else None,
        upstream_status=to_int(record.get("upstream_status")),
        tries=len(tries) if isinstance(tries, list) else None,
        response_source=record.get("source") if isinstance(record.get("source"), str) else None,
        consumer=entity(record.get("consumer"), _CONSUMER_KEYS),
        authenticated_entity=entity(record.get("authenticated_entity"), _CREDENTIAL_KEYS),
        raw=record,
    )
