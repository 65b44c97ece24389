"""An Nginx `log_format ... escape=json` line → Transaction.

Nginx lets the operator name the fields, so the mapping from our fields to the log's keys is data
(`DEFAULT_FIELDS`, overridable with `--nginx-field FIELD=KEY`). The defaults follow the `log_format` in
`examples/nginx-log-format.conf`. Keys named `http_<name>` (and `sent_http_<name>`) are taken as request
(response) headers, the way nginx names its `$http_*` variables.
"""

from __future__ import annotations

from typing import Any

from shipper.formats.values import (
    count_field, epoch_ms_field, iso_epoch_ms, latency_field, parse_query, port_field, split_target, status_field,
    to_float, to_str, upstream_status_field,
)
from shipper.model import Position, Transaction

DEFAULT_FIELDS: dict[str, str] = {
    "time_msec": "msec",
    "time_iso": "time",
    "client_ip": "remote_addr",
    "method": "request_method",
    "raw_path": "request_uri",
    "path": "uri",
    "query_string": "args",
    "status": "status",
    "response_size": "body_bytes_sent",
    "request_size": "request_length",
    "request_time": "request_time",
    "upstream_response_time": "upstream_response_time",
    "upstream_addr": "upstream_addr",
    "upstream_status": "upstream_status",
    "host": "host",
    "scheme": "scheme",
    "port": "server_port",
    "request_id": "request_id",
    "request_body": "request_body",
}


def nginx_fields(overrides: dict[str, str] | None) -> dict[str, str]:
    fields = dict(DEFAULT_FIELDS)
    for name, key in (overrides or {}).items():
        if name not in DEFAULT_FIELDS:
            known = ", ".join(sorted(DEFAULT_FIELDS))
            raise ValueError(f"unknown nginx field {name!r} (known: {known})")
        fields[name] = key
    return fields


def looks_like_nginx(record: dict[str, Any], fields: dict[str, str]) -> bool:
    return fields["method"] in record or fields["raw_path"] in record


def _seconds_sum(value: Any) -> float | None:
    # `$upstream_response_time` is `-`, one number, or several (`0.004, 0.052 : 0.010`) after retries.
    if not isinstance(value, str):
        return to_float(value)
    total, seen = 0.0, False
    for part in value.replace(":", ",").split(","):
        number = to_float(part.strip())
        if number is not None:
            total += number
            seen = True
    return total if seen else None


def _started_at(record: dict[str, Any], fields: dict[str, str]) -> int | None:
    # `$msec` is seconds with a millisecond fraction; a log_format that writes ms (or µs) is recognised too.
    key = fields["time_msec"]
    started = epoch_ms_field(record.get(key), key)
    if started is not None:
        return started
    return iso_epoch_ms(record.get(fields["time_iso"]))


def parse_nginx(
    record: dict[str, Any], position: Position | None, fallback_id: str, fields: dict[str, str]
) -> Transaction:
    get = record.get
    raw_path = to_str(get(fields["raw_path"]))
    path, query_string, fragment = split_target(raw_path)
    if not raw_path:
        path = to_str(get(fields["path"]))
        query_string = to_str(get(fields["query_string"]))
        raw_path = path + ("?" + query_string if query_string else "")

    request_headers: dict[str, Any] = {}
    response_headers: dict[str, Any] = {}
    for key, value in record.items():
        if not isinstance(value, str) or not value or value == "-":
            continue
        # Header names in lower case, as Kong logs them and identity looks them up (`authorization`,
        # `user-agent`): nginx's $http_ variables take any case, and so do the keys a log_format names them by.
        if key.startswith("http_"):
            request_headers[key[5:].replace("_", "-").lower()] = value
        elif key.startswith("sent_http_"):
            response_headers[key[10:].replace("_", "-").lower()] = value
    host = to_str(get(fields["host"])) or request_headers.get("host", "")
    if host:
        request_headers.setdefault("host", host)

    request_time = latency_field(get(fields["request_time"]), fields["request_time"], 1000)
    upstream_time = latency_field(_seconds_sum(get(fields["upstream_response_time"])), fields["upstream_response_time"], 1000)
    request_id = get(fields["request_id"])
    upstream_addr = get(fields["upstream_addr"])
    upstream_status, upstream_statuses = upstream_status_field(get(fields["upstream_status"]), fields["upstream_status"])

    return Transaction(
        event_id=request_id if isinstance(request_id, str) and request_id else fallback_id,
        source_format="nginx",
        position=position,
        started_at=_started_at(record, fields),
        method=to_str(get(fields["method"])).upper(),
        scheme=to_str(get(fields["scheme"])).lower(),
        host=host,
        port=port_field(get(fields["port"]), fields["port"]),
        raw_path=raw_path,
        path=path,
        query_string=query_string,
        query=parse_query(query_string),
        fragment=fragment,
        request_headers=request_headers,
        request_size=count_field(get(fields["request_size"]), fields["request_size"]),
        request_body=get(fields["request_body"]) or None,
        client_ip=to_str(get(fields["client_ip"])),
        user_agent=request_headers.get("user-agent", ""),
        status=status_field(get(fields["status"]), fields["status"]),
        response_headers=response_headers,
        response_size=count_field(get(fields["response_size"]), fields["response_size"]),
        latency_request=request_time,
        latency_proxy=upstream_time,
        upstream_addr=upstream_addr if isinstance(upstream_addr, str) and upstream_addr not in ("", "-") else None,
        upstream_status=upstream_status,
        upstream_statuses=upstream_statuses,
        raw=record,
    )
