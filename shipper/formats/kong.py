"""Kong's file-log record (0.x through 3.x) → Transaction. See ../shared/kong-log.md for the field history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shipper.formats.kong_fields import ai_usage, entity, tls_info, trace_id, upstream_tries
from shipper.formats.values import (
    MAX_COUNT, MAX_LATENCY_MS, count_field, epoch_ms_field, host_of_header, latency_field, parse_query, port_field,
    split_target, split_url, status_field, to_str, upstream_status_field,
)
from shipper.model import Position, Transaction

CONSUMER_IDS = ("id",)
_MAX_LATENCY_INT = int(MAX_LATENCY_MS)  # the same bound, compared int to int
CREDENTIAL_IDS = ("id", "consumer_id")


def looks_like_kong(record: dict[str, Any]) -> bool:
    return isinstance(record.get("request"), dict) and (
        "started_at" in record or "response" in record or "latencies" in record
    )


def _str(value: Any) -> str:
    return value if type(value) is str else to_str(value)


def opt_str(value: Any) -> str | None:
    return value if type(value) is str else None


def logged_entity(value: Any) -> dict | None:
    # The entity as Kong logged it (no copy: this runs for every line, and the dict is not shared).
    return value if type(value) is dict and value else None


# The parts of a record read alike by `parse_kong` and the sinks' flat paths (sinks/*_flat.py), so that both
# read the same values: each a plain call, since the parser runs it for every line.
def response_and_latencies(get: Callable[[str], Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`response` and `latencies` of a record (its `get`), each {} when absent or not an object."""
    response = get("response")
    latencies = get("latencies")
    return response if type(response) is dict else {}, latencies if type(latencies) is dict else {}


def request_address(rget: Callable[[str], Any], text: Callable[[Any], str]) -> tuple[str, str, int | None, str, dict]:
    """(scheme, host, port (unchecked), raw target, headers) of a record's `request` (its `get`), the strings
    read by `text` (the parser's coercion, or a flat path's stricter one)."""
    # Before 0.12 the absolute URL was `request.request_uri`; after, `request.url` (and `uri` the target).
    # A text is taken as it is (both coercions do): a call each only for another type.
    url = rget("url")
    if type(url) is not str:
        url = text(url)
    if not url:
        url = text(rget("request_uri"))
    scheme, host, port, url_target = split_url(url) if url else ("", "", None, "")
    raw_path = rget("uri")
    if type(raw_path) is not str:
        raw_path = text(raw_path)
    raw_path = raw_path or url_target
    headers = rget("headers")
    if type(headers) is not dict:
        headers = {}
    if not host:
        host = host_of_header(text(headers.get("host")))
    return scheme, host, port, raw_path, headers


def checked_numbers(rget: Callable[[str], Any], response: dict, latencies: dict) -> tuple[Any, ...]:
    """(request size, status, response size, latencies request, kong, receive, proxy), checked as the parser
    checks them (a value out of range raises), in the parser's order."""
    # Kong's values (ints in range) are taken inline, as the helpers' own first test takes them: a call each
    # cost ~3 % of a Moesif flat record. Anything else goes to the helper, in the same order.
    request_size = rget("size")
    if not (type(request_size) is int and 0 <= request_size <= MAX_COUNT):
        request_size = count_field(request_size, "request.size")
    status = response.get("status")
    if not (type(status) is int and 100 <= status <= 999):
        status = status_field(status, "response.status")
    response_size = response.get("size")
    if not (type(response_size) is int and 0 <= response_size <= MAX_COUNT):
        response_size = count_field(response_size, "response.size")
    request, kong, receive, proxy = (
        latencies.get("request"), latencies.get("kong"), latencies.get("receive"), latencies.get("proxy"),
    )  # fmt: skip
    bound = _MAX_LATENCY_INT
    request = float(request) if type(request) is int and 0 <= request <= bound else latency_field(request, "latencies.request")
    kong = float(kong) if type(kong) is int and 0 <= kong <= bound else latency_field(kong, "latencies.kong")
    receive = float(receive) if type(receive) is int and 0 <= receive <= bound else latency_field(receive, "latencies.receive")
    proxy = float(proxy) if type(proxy) is int and 0 <= proxy <= bound else latency_field(proxy, "latencies.proxy")  # -1: none
    return request_size, status, response_size, request, kong, receive, proxy


def add_call_details(txn: Transaction, get: Callable[[str], Any], rget: Callable[[str], Any]) -> Transaction:
    """`txn` with the fields of its record (its and its request's `get`) that no sink masks and none refuses
    (`kong_fields`): the client TLS, workspace, balancer tries, tracing ids, AI usage, response source. Set on
    the made Transaction, not passed as `**` arguments to it: those cost ~25 k instructions a record."""
    tries = get("tries")
    # Kong 3.x fields: absent on most lines of most versions, so each costs one lookup unless present.
    tls, trace, correlation, ai = rget("tls"), get("trace_id"), get("correlation_id"), get("ai")
    txn.tls = None if tls is None else tls_info(tls)
    txn.workspace = opt_str(get("workspace"))
    txn.workspace_name = opt_str(get("workspace_name"))
    txn.tries = len(tries) if type(tries) is list else None
    txn.upstream_tries = upstream_tries(tries) if type(tries) is list else None
    txn.trace_id = None if trace is None else trace_id(trace)
    txn.correlation_id = correlation if type(correlation) is str and correlation else None
    txn.ai = None if ai is None else ai_usage(ai)
    txn.response_source = opt_str(get("source"))
    return txn


def parse_kong(record: dict[str, Any], position: Position | None, fallback_id: str) -> Transaction:
    get = record.get
    request = record["request"]
    rget = request.get
    response, latencies = response_and_latencies(get)
    scheme, host, port, raw_path, headers = request_address(rget, _str)
    path, query_string, fragment = split_target(raw_path)
    query = rget("querystring")
    if type(query) is not dict:
        query = parse_query(query_string)

    request_id = rget("id")
    response_headers = response.get("headers")
    user_agent = headers.get("user-agent")
    upstream_status, upstream_statuses = upstream_status_field(get("upstream_status"), "upstream_status")
    # Checked in this order (the first bad value names the dead letter): start, port, the numbers.
    started_at = epoch_ms_field(get("started_at"), "started_at")
    method = _str(rget("method")).upper()
    if port is not None and not 0 <= port <= 65535:
        port = port_field(port, "request.url")
    request_size, status, response_size, latency_request, latency_kong, latency_receive, latency_proxy = (
        checked_numbers(rget, response, latencies)
    )

    return add_call_details(Transaction(
        event_id=request_id if type(request_id) is str and request_id else fallback_id,
        source_format="kong",
        position=position,
        started_at=started_at,
        method=method,
        scheme=scheme,
        host=host,
        port=port,
        raw_path=raw_path,
        path=path,
        query_string=query_string,
        query=query,
        fragment=fragment,
        request_headers=headers,
        request_size=request_size,
        request_body=rget("body"),
        client_ip=_str(get("client_ip")),
        user_agent=user_agent if type(user_agent) is str else "",
        status=status,
        response_headers=response_headers if type(response_headers) is dict else {},
        response_size=response_size,
        response_body=response.get("body"),
        latency_request=latency_request,
        latency_kong=latency_kong,
        latency_receive=latency_receive,
        latency_proxy=latency_proxy,
        service=logged_entity(get("service")) or logged_entity(get("api")),
        route=logged_entity(get("route")),
        upstream_uri=opt_str(get("upstream_uri")),
        consumer=entity(get("consumer"), CONSUMER_IDS),
        authenticated_entity=entity(get("authenticated_entity"), CREDENTIAL_IDS),
        upstream_status=upstream_status,
        upstream_statuses=upstream_statuses,
        raw=record,
    ), get, rget)
