"""Parsing real-world Kong and Nginx lines into Transactions, including the ways real logs are odd."""

from __future__ import annotations

import pathlib
import time

import orjson
import pytest

from shipper.formats import ParseError, Parser
from shipper.model import Position

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def parse(record, fmt="auto", **kw):
    line = record if isinstance(record, bytes) else orjson.dumps(record)
    return Parser(fmt, kw.get("nginx_fields")).parse(line, Position("fabc", 100, 100 + len(line) + 1))


def kong3(**over):
    record = {
        "request": {
            "method": "get",
            "uri": "/v1/orders/42/?page=2&tag=a&tag=b&flag#frag",
            "url": "https://api.example.com:8443/v1/orders/42/?page=2&tag=a&tag=b&flag",
            "size": 321,
            "querystring": {"page": "2", "tag": ["a", "b"], "flag": True},
            "headers": {"host": "api.example.com:8443", "user-agent": "curl/8", "x-seq": "1"},
            "id": "req-123",
        },
        "response": {"status": 201, "size": 999, "headers": {"content-type": "application/json"}},
        "latencies": {"request": 12, "kong": 2, "proxy": 10},
        "started_at": 1763800000123,
        "client_ip": "203.0.113.9",
        "service": {"id": "s1", "name": "orders", "host": "orders.internal", "port": 8080, "retries": 5},
        "route": {"id": "r1", "name": "orders-route", "paths": ["/v1"], "strip_path": False},
        "consumer": {"id": "c1", "username": "alice", "custom_id": "cust-7", "created_at": 1},
        "workspace": "ws-uuid",
        "workspace_name": "default",
        "upstream_uri": "/orders/42",
        "upstream_status": "201",
        "tries": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
        "source": "upstream",
    }
    record.update(over)
    return record


def test_kong_3x_record_is_fully_normalized():
    txn = parse(kong3())
    assert txn.source_format == "kong"
    assert txn.event_id == "req-123"
    assert (txn.method, txn.scheme, txn.host, txn.port) == ("GET", "https", "api.example.com", 8443)
    assert txn.raw_path == "/v1/orders/42/?page=2&tag=a&tag=b&flag#frag"
    assert (txn.path, txn.query_string, txn.fragment) == ("/v1/orders/42/", "page=2&tag=a&tag=b&flag", "frag")
    assert txn.query == {"page": "2", "tag": ["a", "b"], "flag": True}
    assert (txn.request_size, txn.response_size, txn.status) == (321, 999, 201)
    assert (txn.latency_request, txn.latency_kong, txn.latency_proxy) == (12.0, 2.0, 10.0)
    assert txn.started_at == 1763800000123
    assert txn.client_ip == "203.0.113.9" and txn.user_agent == "curl/8"
    assert txn.service["name"] == "orders" and txn.service["host"] == "orders.internal"
    assert txn.route["name"] == "orders-route" and txn.route["paths"] == ["/v1"]
    assert (txn.consumer["id"], txn.consumer["username"], txn.consumer["custom_id"]) == ("c1", "alice", "cust-7")
    assert (txn.workspace, txn.workspace_name, txn.upstream_status, txn.tries) == ("ws-uuid", "default", 201, 2)
    assert txn.response_source == "upstream"
    assert txn.position == Position("fabc", 100, txn.position.end)


def test_without_request_id_the_event_id_is_file_identity_and_offset():
    record = kong3()
    del record["request"]["id"]
    assert parse(record).event_id == "fabc-100"


def test_kong_before_0_12_uses_request_uri_and_the_api_entity():
    record = {
        "request": {
            "method": "POST",
            "request_uri": "http://legacy.example.com:80/things?x=1",
            "size": "77",
            "querystring": {"x": "1"},
            "headers": {"host": "legacy.example.com"},
        },
        "response": {"status": 200, "size": "1234"},
        "latencies": {"request": 5, "kong": 1, "proxy": 4},
        "started_at": 1500000000000,
        "api": {"id": "a1", "name": "legacy", "upstream_url": "http://up:8080", "uris": ["/"]},
    }
    txn = parse(record)
    assert (txn.scheme, txn.host, txn.port, txn.raw_path, txn.path) == ("http", "legacy.example.com", 80, "/things?x=1", "/things")
    assert (txn.request_size, txn.response_size) == (77, 1234)  # strings before Kong 2.2
    assert (txn.service["name"], txn.service["upstream_url"]) == ("legacy", "http://up:8080")


def test_numbers_in_exponent_form_and_proxy_minus_one():
    record = kong3(started_at=1.7638000001e12, latencies={"request": 1.5e3, "kong": 3, "proxy": -1})
    txn = parse(record)
    assert txn.started_at == 1763800000100
    assert txn.latency_request == 1500.0
    assert txn.latency_proxy is None  # -1: no upstream call


def test_every_shared_sample_parses():
    parser = Parser()
    count = 0
    for path in sorted(SAMPLES.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            txn = parser.parse(line, Position("f1", 0, len(line) + 1))
            assert txn.method and txn.path.startswith("/")
            count += 1
    assert count == 12


NGINX_LINE = {
    "time": "2025-11-22T10:15:30+00:00",
    "msec": "1763806530.123",
    "remote_addr": "203.0.113.7",
    "request_method": "GET",
    "request_uri": "/articles/a123/comments?page=2&token=s3cret",
    "uri": "/articles/a123/comments",
    "args": "page=2&token=s3cret",
    "status": "200",
    "body_bytes_sent": "5120",
    "request_length": "312",
    "request_time": "0.037",
    "upstream_response_time": "0.600, 0.602 : 0.010",
    "upstream_addr": "10.0.3.7:8080",
    "http_user_agent": "curl/8.4.0",
    "http_referer": "",
    "http_authorization": "Bearer abc.def.ghi",
    "host": "api.example.com",
    "scheme": "https",
    "server_port": "443",
    "request_id": "6f1c2d3e",
}


def test_nginx_escape_json_line():
    txn = parse(NGINX_LINE)
    assert txn.source_format == "nginx" and txn.event_id == "6f1c2d3e"
    assert txn.started_at == 1763806530123
    assert (txn.method, txn.scheme, txn.host, txn.port) == ("GET", "https", "api.example.com", 443)
    assert txn.path == "/articles/a123/comments" and txn.query == {"page": "2", "token": "s3cret"}
    assert (txn.status, txn.response_size, txn.request_size) == (200, 5120, 312)
    assert txn.latency_request == pytest.approx(37.0)
    assert txn.latency_proxy == pytest.approx(1212.0)  # retries are summed
    assert txn.request_headers["authorization"] == "Bearer abc.def.ghi"
    assert "referer" not in txn.request_headers  # empty values are absent, not ""
    assert txn.user_agent == "curl/8.4.0"


def test_nginx_custom_field_names_are_mapped():
    line = {"ts": "1763806530.5", "ip": "192.0.2.1", "verb": "DELETE", "target": "/x?y=1", "code": "204"}
    fields = {"time_msec": "ts", "client_ip": "ip", "method": "verb", "raw_path": "target", "status": "code"}
    txn = parse(line, nginx_fields=fields)
    assert (txn.method, txn.path, txn.status, txn.client_ip, txn.started_at) == ("DELETE", "/x", 204, "192.0.2.1", 1763806530500)


def test_unknown_nginx_field_name_is_refused():
    with pytest.raises(ValueError, match="unknown nginx field"):
        Parser("nginx", {"nonsense": "x"})


def test_nginx_default_escaping_is_accepted():
    # escape=default writes `"` as \x22 and UTF-8 bytes as \xHH: not JSON until repaired.
    line = (
        b'{"request_method":"GET","request_uri":"/caf\\xC3\\xA9?q=\\x22x\\x22",'
        b'"http_user_agent":"a\\x5Cb","status":"200","remote_addr":"1.2.3.4"}'
    )
    txn = parse(line)
    assert txn.path == "/caf\u00e9"
    assert txn.query_string == 'q="x"'
    assert txn.user_agent == "a\\b"


def test_invalid_utf8_inside_a_json_string_is_kept_with_replacement():
    record = orjson.dumps(kong3()).replace(b"curl/8", b"curl/\xff\xfe")
    txn = parse(record)
    assert txn.user_agent == "curl/\ufffd\ufffd"


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"this is not json", "not_json"),
        (b'{"request": {"method": "GET"', "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'"a string"', "not_object"),
        (b'{"hello": "world"}', "unknown_format"),
        (b"\xff\xfe\x00garbage", "invalid_utf8"),
        (b'{"a": "\x00"}', "not_json"),
        (b"[" * 5000 + b"]" * 5000, "not_json"),
    ],
)
def test_lines_that_cannot_be_understood_say_why(line, reason):
    with pytest.raises(ParseError) as info:
        parse(line)
    assert info.value.reason == reason


def test_wrong_field_types_never_crash():
    weird = kong3(
        started_at="soon",
        latencies="fast",
        response={"status": "two hundred", "headers": ["not", "a", "dict"]},
        tries=7,
        service="orders",
    )
    weird["request"]["headers"] = "host: x"
    weird["request"]["querystring"] = ["a"]
    before = int(time.time() * 1000)
    txn = parse(weird)
    assert txn.status is None and txn.tries is None and txn.service is None
    # "soon" is no time: the record is dated when it was read, and says so.
    assert before <= txn.started_at <= int(time.time() * 1000) and txn.started_at_estimated is True
    assert txn.request_headers == {} and txn.response_headers == {}
    assert txn.query == {"page": "2", "tag": ["a", "b"], "flag": True}  # rebuilt from the raw query string


def test_format_flag_forces_the_parser():
    with pytest.raises(ParseError) as info:
        parse(NGINX_LINE, fmt="kong")
    assert info.value.reason == "unknown_format"
    with pytest.raises(ParseError):
        parse(kong3(), fmt="nginx")
