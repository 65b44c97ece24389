"""Segment events against kong-segment-log's behaviour (DigitalGlobe/kong-segment-log, handler.lua) and the Kong
3.x fields kong-ship adds, delivered through the strict fake Segment (which enforces the HTTP API's and the
official segment-analytics-python library's checks: type, event, userId/anonymousId, properties and context
objects, ISO-8601 UTC timestamp, messageId ≤ 100 characters, message ≤ 32 KB)."""

from __future__ import annotations

import pathlib
import time
from datetime import datetime

import httpx
import orjson
import pytest

from conftest import FAST, ship, ship_env
from fakes.segment import FakeSegment
from shipper.formats import Parser
from shipper.model import Position, Transaction
from shipper.processors import build_chain, run_chain
from shipper.sinks.base import absolute_url
from shipper.sinks.segment import SegmentSink


def deliver(txns: list[Transaction], **sink_options) -> list[dict]:
    """Encode with the real sink, POST the real request to the strict fake, return what it accepted."""
    with FakeSegment("wk") as fake:
        sink = SegmentSink("wk", endpoint=fake.url, **sink_options)
        with httpx.Client() as client:
            response = client.send(sink.request([sink.encode(t) for t in txns]))
        assert response.status_code == 200, response.text
        return list(fake.messages)


def api(**over) -> Transaction:
    fields = {
        "event_id": "rec-1",
        "source_format": "kong",
        "started_at": 1763800000005,
        "method": "GET",
        "scheme": "https",
        "host": "api.example.com",
        "port": 443,
        "raw_path": "/orders/7",
        "path": "/orders/7",
        "status": 200,
        "latency_request": 1430.0,
        "latency_kong": 3.0,
        "latency_proxy": 1427.0,
        "client_ip": "10.0.0.9",
        "user_id": "u-1",
    }
    fields.update(over)
    return Transaction(**fields)


def kong_txn(record: dict) -> Transaction:
    return run_chain(build_chain(), Parser().parse(orjson.dumps(record), Position("fid", 0, 1)))


# -- absolute_url: the port Kong logged is kept, default ports included ------------------------------------------
@pytest.mark.parametrize("scheme, host, port, expected", [
    ("https", "a.example", 443, "https://a.example:443/p?q=1"),
    ("http", "a.example", 80, "http://a.example:80/p?q=1"),
    ("https", "a.example", 8443, "https://a.example:8443/p?q=1"),
    ("http", "a.example", None, "http://a.example/p?q=1"),  # port unknown: none invented
    ("", "a.example", None, "http://a.example/p?q=1"),
    ("https", "", 443, "/p?q=1"),  # no host: the target alone
])
def test_absolute_url_keeps_a_known_port(scheme, host, port, expected):
    txn = api(scheme=scheme, host=host, port=port, raw_path="/p?q=1")
    assert absolute_url(txn) == expected


def test_uri_from_a_kong_record_keeps_port_443():
    (message,) = deliver([kong_txn({
        "request": {"method": "GET", "uri": "/a", "url": "https://k.example:443/a", "headers": {}},
        "response": {"status": 200}, "latencies": {"request": 5, "kong": 1, "proxy": 4}, "started_at": 1763800000000,
        "client_ip": "10.0.0.1",
    })])
    assert message["properties"]["uri"] == "https://k.example:443/a"
    assert message["properties"]["port"] == 443


# -- kong-segment-log parity -------------------------------------------------------------------------------------
def test_integers_stay_integers_and_fractions_stay_fractions():
    (message,) = deliver([api(latency_request=1430.0, latency_kong=2.5, latency_proxy=1427.5)])
    props = message["properties"]
    assert (props["timeOfRequest"], props["timeOfKong"], props["timeOfProxy"]) == (1430, 2.5, 1427.5)
    assert type(props["timeOfRequest"]) is int and type(props["timeOfKong"]) is float


def test_no_upstream_call_is_minus_one_as_kong_and_the_plugin_wrote_it():
    (message,) = deliver([api(latency_proxy=None, status=401)])
    assert message["properties"]["timeOfProxy"] == -1


def test_kong_record_with_proxy_minus_one_round_trips_to_minus_one():
    (message,) = deliver([kong_txn({
        "request": {"method": "GET", "uri": "/a", "url": "https://k.example:443/a", "headers": {}},
        "response": {"status": 401}, "latencies": {"request": 2, "kong": 2, "proxy": -1}, "started_at": 1763800000000,
        "client_ip": "10.0.0.1",
    })])
    props = message["properties"]
    assert (props["timeOfProxy"], props["timeOfKong"], props["timeOfRequest"]) == (-1, 2, 2)


def test_nginx_without_upstream_time_has_no_time_of_proxy():
    # Nginx has no "-1 = no upstream" convention: unknown stays absent rather than a made-up -1.
    (message,) = deliver([api(source_format="nginx", latency_proxy=None, latency_kong=None)])
    assert "timeOfProxy" not in message["properties"] and "timeOfKong" not in message["properties"]


def test_empty_query_string_and_hash_are_absent_not_empty():
    (message,) = deliver([api(query_string="", fragment="")])
    props = message["properties"]
    assert "queryString" not in props and "hash" not in props
    assert props["queryObject"] == {} and props["queryJson"] == "{}"  # the plugin always sent these


def test_semicolon_params_end_the_path_as_luasocket_parsed_it():
    txn = api(raw_path="/shop/items;jsessionid=AB12/more?x=1", path="/shop/items;jsessionid=AB12/more",
              query_string="x=1", query={"x": "1"})
    (message,) = deliver([txn], event_name_template="{method} {path}")
    props = message["properties"]
    assert props["path"] == "/shop/items"
    assert (props["pathComponent1"], props["pathComponent2"]) == ("shop", "items")
    assert "pathComponent3" not in props
    assert props["rawpath"] == "/shop/items;jsessionid=AB12/more?x=1"  # the whole target stays here and in uri
    assert props["uri"] == "https://api.example.com:443/shop/items;jsessionid=AB12/more?x=1"
    assert message["event"] == "GET /shop/items"


def test_one_trailing_slash_is_stripped_as_the_plugin_did():
    messages = deliver([api(event_id="a", path="/a//", raw_path="/a//"), api(event_id="b", path="/", raw_path="/")])
    assert [m["properties"]["path"] for m in messages] == ["/a/", "/"]


def test_event_name_lowercases_host_and_path_only():
    (message,) = deliver([api(host="API.Example.com", path="/Orders/X7", raw_path="/Orders/X7", method="GET")],
                         event_name_template="{method} {host}{path} {status}")
    assert message["event"] == "GET api.example.com/orders/x7 200"
    assert message["properties"]["path"] == "/Orders/X7" and message["properties"]["host"] == "API.Example.com"


def test_ten_path_components_at_most():
    path = "/" + "/".join(f"c{i}" for i in range(1, 13))
    (message,) = deliver([api(path=path, raw_path=path)])
    keys = sorted(k for k in message["properties"] if k.startswith("pathComponent"))
    assert len(keys) == 10 and message["properties"]["pathComponent10"] == "c10"


# -- Kong 3.x fields --------------------------------------------------------------------------------------------
BASE_KEYS = {"method", "uri", "protocol", "host", "port", "rawpath", "path", "queryObject", "queryJson",
             "pathComponent1", "pathComponent2", "timeOfProxy", "timeOfKong", "timeOfRequest", "statusCode"}


def test_a_minimal_record_has_no_new_keys():
    (message,) = deliver([api()])
    assert set(message["properties"]) == BASE_KEYS
    assert None not in message["properties"].values()


def test_kong_3x_fields_become_camel_case_properties():
    txn = api(
        upstream_uri="/v2/orders/7?internal=1", upstream_status=200, upstream_statuses=[502, 200],
        upstream_addr="10.1.0.5:8080", tries=2, response_source="upstream", request_size=312, response_size=1045,
        latency_receive=0.0, workspace="ws-uuid", workspace_name="default",
        consumer={"id": "c-uuid", "username": "alice", "custom_id": "A-1"}, trace_id="4bf92f3577b34da6",
        correlation_id="corr-1", tls={"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "client_verify": "NONE"},
        ai={"provider": "openai", "model": "gpt-4o", "prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
            "cost": 0.0015, "time_per_token": 12.5},
        service={"name": "orders"}, route={"name": "orders-route"},
    )
    (message,) = deliver([txn])
    props = message["properties"]
    added = {k: v for k, v in props.items() if k not in BASE_KEYS}
    assert added == {
        "service": "orders", "route": "orders-route",
        "upstreamUri": "/v2/orders/7?internal=1", "upstreamStatus": 200, "upstreamStatuses": [502, 200],
        "upstreamAddr": "10.1.0.5:8080", "tries": 2, "responseSource": "upstream",
        "requestSize": 312, "responseSize": 1045, "timeOfReceive": 0,
        "workspace": "ws-uuid", "workspaceName": "default", "consumer": "alice", "consumerId": "c-uuid",
        "traceId": "4bf92f3577b34da6", "correlationId": "corr-1",
        "tlsVersion": "TLSv1.3", "tlsCipher": "TLS_AES_256_GCM_SHA384", "tlsClientVerify": "NONE",
        "aiProvider": "openai", "aiModel": "gpt-4o", "aiPromptTokens": 10, "aiCompletionTokens": 20,
        "aiTotalTokens": 30, "aiCost": 0.0015, "aiTimePerToken": 12.5,
    }


def test_partial_ai_and_tls_blocks_send_only_what_is_there():
    (message,) = deliver([api(ai={"provider": "anthropic", "total_tokens": 7}, tls={"version": "TLSv1.2"})])
    props = message["properties"]
    assert {k for k in props if k.startswith(("ai", "tls"))} == {"aiProvider", "aiTotalTokens", "tlsVersion"}


def test_estimated_start_time_is_flagged():
    messages = deliver([api(event_id="a", started_at_estimated=True), api(event_id="b")])
    assert messages[0]["properties"]["timestampEstimated"] is True
    assert "timestampEstimated" not in messages[1]["properties"]
    assert messages[0]["timestamp"] == "2025-11-22T08:26:40.005Z"


def test_no_start_time_at_all_is_now_and_flagged():
    before = time.time()
    (message,) = deliver([api(started_at=None)])
    sent = datetime.fromisoformat(message["timestamp"]).timestamp()
    assert before - 1 <= sent <= time.time() + 1
    assert message["properties"]["timestampEstimated"] is True


# -- Kong stream sessions -----------------------------------------------------------------------------------------
def stream(**over) -> Transaction:
    fields = {
        "event_id": "sess-1", "source_format": "kong", "kind": "stream", "started_at": 1763800000005,
        "protocol": "tcp", "client_ip": "10.0.0.7", "port": 5432, "status": 200,
        "request_size": 1200, "response_size": 64000, "latency_request": 30500.0, "latency_kong": 1.0,
        "service": {"name": "pg"}, "route": {"name": "pg-route"}, "workspace": "ws-uuid",
        "details": {"upstream_received": 64100, "upstream_sent": 1250},
    }
    fields.update(over)
    return Transaction(**fields)


def test_stream_session_is_a_track_of_its_own():
    (message,) = deliver([stream(anonymous_id="anon-x")])
    assert message["event"] == "Kong Stream Session"
    assert message["anonymousId"] == "anon-x" and "userId" not in message
    assert message["context"]["ip"] == "10.0.0.7"
    assert message["timestamp"] == "2025-11-22T08:26:40.005Z"
    assert message["properties"] == {
        "protocol": "tcp", "serverPort": 5432, "status": 200, "bytesReceived": 1200, "bytesSent": 64000,
        "upstreamBytesReceived": 64100, "upstreamBytesSent": 1250, "sessionDuration": 30500, "timeOfKong": 1,
        "service": "pg", "route": "pg-route", "workspace": "ws-uuid",
    }


def test_stream_session_user_and_tls():
    (message,) = deliver([stream(user_id="bob", protocol="tls", tls={"version": "TLSv1.3"}, details=None,
                                 consumer={"username": "bob", "id": "c-1"})])
    props = message["properties"]
    assert message["userId"] == "bob"
    assert props["protocol"] == "tls" and props["tlsVersion"] == "TLSv1.3"
    assert (props["consumer"], props["consumerId"]) == ("bob", "c-1")
    assert "upstreamBytesSent" not in props and "requestSize" not in props


def test_backfill_of_a_kong_stream_log_line_sends_a_stream_session(tmp_path):
    lines = (pathlib.Path(__file__).resolve().parent / "corpus" / "kong-records.jsonl").read_bytes().splitlines()
    tls_line = next(line for line in lines if b'"session":{"tls"' in line)
    log = tmp_path / "kong.json"
    log.write_bytes(tls_line + b"\n")
    with FakeSegment("wk") as fake:
        result = ship("backfill", str(log), "--sink", "segment", "--endpoint", fake.url,
                      "--state-dir", str(tmp_path / "state"), *FAST, env=ship_env(SEGMENT_WRITE_KEY="wk"))
        assert result.returncode == 0, result.stderr
        (message,) = fake.messages
    assert message["event"] == "Kong Stream Session"
    assert message["timestamp"] == "2024-09-19T22:11:40.000Z"
    assert message["context"]["ip"] == "198.51.100.23"
    assert message["userId"] == "foo"
    assert message["properties"] == {
        "protocol": "tls", "serverPort": 9443, "status": 200, "bytesReceived": 2048, "bytesSent": 65536,
        "upstreamBytesReceived": 65536, "upstreamBytesSent": 2048, "sessionDuration": 10250, "timeOfKong": 2,
        "service": "redis", "tries": 1,
        "workspace": "f381e34e-5c25-4e65-b91b-3c0a86cfc393", "workspaceName": "default",
        "consumer": "foo", "consumerId": "ae974d6c-0f8a-4dc5-b701-fa0aa38592bd",
        "tlsVersion": "TLSv1.3", "tlsCipher": "TLS_AES_256_GCM_SHA384", "tlsClientVerify": "SUCCESS",
    }
