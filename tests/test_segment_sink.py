"""The Segment sink alone: the track message kong-segment-log built, limits, and how answers are judged."""

from __future__ import annotations

import base64
import gzip
import time

import httpx
import orjson
import pytest

from shipper.errors import ConfigError
from shipper.formats import Parser
from shipper.model import Position
from shipper.processors import build_chain, run_chain
from shipper.sinks.base import FATAL, OK, RETRY, SPLIT, EventRejected, retry_after_seconds
from shipper.sinks.segment import SegmentSink, iso_ms


def txn_from(record: dict):
    line = orjson.dumps(record)
    return run_chain(build_chain(), Parser().parse(line, Position("fid", 7, 8)))


def record(**over):
    base = {
        "request": {
            "method": "POST",
            "uri": "/articles/a123/comments/?a=2&apikey=secret#there",
            "url": "https://example.com:443/articles/a123/comments/?a=2&apikey=secret",
            "headers": {"user-agent": "curl", "host": "example.com"},
            "querystring": {"a": "2", "apikey": "secret"},
        },
        "response": {"status": 201},
        "latencies": {"request": 678, "kong": 45, "proxy": 123},
        "started_at": 1763800000005,
        "client_ip": "100.0.0.1",
        "consumer": {"username": "u123"},
        "service": {"name": "articles"},
    }
    base.update(over)
    return base


def test_track_message_has_the_seed_plugins_shape():
    message = SegmentSink("k").message(txn_from(record()))
    assert message["type"] == "track"
    assert message["event"] == "API Request: POST"
    assert message["userId"] == "u123" and "anonymousId" not in message
    assert message["messageId"] == "fid-7"
    assert message["timestamp"] == "2025-11-22T08:26:40.005Z"
    assert message["context"] == {
        "library": {"name": "kong-ship", "version": message["context"]["library"]["version"]},
        "ip": "100.0.0.1",
        "userAgent": "curl",
    }
    props = message["properties"]
    # The whole property set, values exact: a new key or a changed value must be a decision, not an accident.
    assert props == {
        "method": "POST",
        "uri": "https://example.com:443/articles/a123/comments/?a=2&apikey=*****#there",  # Kong's port kept
        "protocol": "https",
        "host": "example.com",
        "port": 443,
        "rawpath": "/articles/a123/comments/?a=2&apikey=*****#there",
        "path": "/articles/a123/comments",  # trailing slash stripped by default
        "queryString": "a=2&apikey=*****",
        "queryObject": {"a": "2", "apikey": "*****"},
        "queryJson": props["queryJson"],
        "hash": "there",
        "pathComponent1": "articles",
        "pathComponent2": "a123",
        "pathComponent3": "comments",
        "timeOfProxy": 123,
        "timeOfKong": 45,
        "timeOfRequest": 678,
        "statusCode": 201,
        "service": "articles",
        "consumer": "u123",
    }
    assert orjson.loads(props["queryJson"]) == {"a": "2", "apikey": "*****"}
    # Kong's integers stay integers on the wire (1430, not 1430.0).
    assert b'"timeOfProxy":123,' in orjson.dumps(props) and isinstance(props["statusCode"], int)


def test_anonymous_calls_ship_with_a_stable_anonymous_id():
    plain = record()
    del plain["consumer"]
    message = SegmentSink("k").message(txn_from(plain))
    assert "userId" not in message and message["anonymousId"].startswith("anon-")
    assert SegmentSink("k").message(txn_from(plain))["anonymousId"] == message["anonymousId"]


def test_event_name_template_and_keep_trailing_slash():
    sink = SegmentSink("k", event_name_template="{method} {path} on {host} → {status}", strip_trailing_slash=False)
    rec = record()
    rec["request"]["url"] = "https://API.Example.COM:443/Articles/A123/comments/?a=2"
    rec["request"]["uri"] = "/Articles/A123/comments/?a=2"
    message = sink.message(txn_from(rec))
    # kong-segment-log lower-cased {host} and {path} in the name; the properties keep the case.
    assert message["event"] == "POST /articles/a123/comments/ on api.example.com → 201"
    assert message["properties"]["path"] == "/Articles/A123/comments/"


def test_unknown_placeholder_is_a_configuration_error():
    with pytest.raises(ConfigError, match=r"\{user\}"):
        SegmentSink("k", event_name_template="{user} did {method}")


def test_request_id_becomes_the_message_id_capped_at_100():
    rec = record()
    rec["request"]["id"] = "x" * 150
    assert SegmentSink("k").message(txn_from(rec))["messageId"] == "x" * 100


def test_oversize_message_is_shrunk_below_32kb():
    rec = record()
    rec["request"]["querystring"] = {f"k{i}": "v" * 200 for i in range(100)}
    data = SegmentSink("k").encode(txn_from(rec))
    assert len(data) <= 32_000
    message = orjson.loads(data)
    # The largest property goes first (queryJson, with its escaping); the rest stays whole.
    assert message["properties"]["queryJson"].startswith("[truncated by kong-ship:")
    assert len(message["properties"]["queryObject"]) == 100
    assert message["properties"]["method"] == "POST"


def test_message_that_cannot_shrink_enough_is_rejected():
    rec = record()
    rec["request"]["headers"]["user-agent"] = "u" * 40_000
    with pytest.raises(EventRejected, match="32 KB"):
        SegmentSink("k").encode(txn_from(rec))


def test_request_is_gzip_with_basic_auth_and_a_fresh_sent_at():
    sink = SegmentSink("wk", endpoint="http://127.0.0.1:9/")
    events = [sink.encode(txn_from(record()))]
    first = sink.request(events)
    assert str(first.url) == "http://127.0.0.1:9/v1/batch"
    assert first.headers["authorization"] == "Basic " + base64.b64encode(b"wk:").decode()
    assert first.headers["content-encoding"] == "gzip"
    body = orjson.loads(gzip.decompress(first.read()))
    assert len(body["batch"]) == 1 and body["batch"][0]["type"] == "track"
    time.sleep(0.002)
    second = orjson.loads(gzip.decompress(sink.request(events).read()))
    assert second["sentAt"] > body["sentAt"]  # stamped per attempt


def answer(status, headers=None):
    return httpx.Response(status, headers=headers, request=httpx.Request("POST", "http://x/v1/batch"), text="{}")


@pytest.mark.parametrize(
    "status, kind",
    [(200, OK), (400, SPLIT), (413, SPLIT), (401, FATAL), (403, FATAL), (404, FATAL), (408, RETRY), (429, RETRY),
     (500, RETRY), (502, RETRY), (503, RETRY), (501, FATAL), (505, FATAL)],
)
def test_answers_are_judged_as_segment_documents(status, kind):
    assert SegmentSink("k").judge(answer(status)).kind == kind


def test_fatal_message_names_the_credential_without_showing_it():
    verdict = SegmentSink("very-secret-key").judge(answer(401))
    assert "SEGMENT_WRITE_KEY" in verdict.reason and "very-secret-key" not in verdict.reason


def test_retry_after_forms():
    assert retry_after_seconds(answer(429, {"Retry-After": "7"})) == 7.0
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after_seconds(answer(429, {"Retry-After": date}), now=1445412470.0) == pytest.approx(10.0)
    assert retry_after_seconds(answer(429, {"X-RateLimit-Reset": "1700000005"}), now=1700000000.0) == 5.0
    assert retry_after_seconds(answer(429)) is None


def test_iso_ms_pads_milliseconds():
    assert iso_ms(1763800000005) == "2025-11-22T08:26:40.005Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize("status", [400, 401, 501])
def test_a_refusal_quoting_the_write_key_back_never_carries_it(status):
    """Segment's answer is quoted in a dead letter's detail or the fatal line: a body that quotes the write key
    (or the Basic token made of it) back has it masked, as Moesif's, Runscope's and the webhook's have."""
    key = "wk-ZQ77SEGMENTKEYQZ"
    token = base64.b64encode(f"{key}:".encode()).decode()
    sink = SegmentSink(key)
    body = orjson.dumps({"error": f"invalid write key {key}", "headers": {"authorization": f"Basic {token}"}})
    verdict = sink.judge(httpx.Response(status, content=body, request=httpx.Request("POST", sink.url)))
    assert verdict.kind != OK and str(status) in verdict.reason, verdict
    assert key not in verdict.reason and token not in verdict.reason, verdict.reason
