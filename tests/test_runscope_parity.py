"""Runscope messages against Kong's Runscope plugin (Kong 0.13.1: `kong/plugins/log-serializers/runscope.lua`,
`kong/plugins/runscope/handler.lua`), delivered through the strict fake Messages API."""

from __future__ import annotations

import pathlib
import time

import httpx
import orjson
import pytest

from conftest import FAST, ship, ship_env, summary_rows
from fakes.runscope import FakeRunscope
from shipper.formats import Parser
from shipper.model import Position, Transaction
from shipper.processors import build_chain, run_chain
from shipper.sinks.base import EventSkipped
from shipper.sinks.runscope import RunscopeSink

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus" / "kong-records.jsonl"


def deliver(txns: list[Transaction], **options) -> list[dict]:
    with FakeRunscope() as fake:
        sink = RunscopeSink("runscope-token", "bucket1", fake.url, **options)
        with httpx.Client() as client:
            for txn in txns:
                response = client.send(sink.request([sink.encode(txn)]))
                assert response.status_code == 200, response.text
        return list(fake.messages)


def kong_txn(**over) -> Transaction:
    record = {
        "request": {"method": "POST", "uri": "/login?next=%2Fhome", "url": "https://auth.example:443/login?next=%2Fhome",
                    "headers": {"host": "auth.example", "content-type": "application/x-www-form-urlencoded",
                                "user-agent": "curl"},
                    "querystring": {"next": "/home"}, "body": "user=ann&password=hunter2&remember&tag=a&tag=b"},
        "response": {"status": 302, "size": 431, "headers": {"location": "/home"}, "body": '{"ok": true}'},
        "latencies": {"request": 250, "kong": 5, "proxy": 245},
        "started_at": 1763800000000,
        "client_ip": "10.0.0.1",
    }
    record.update(over)
    return run_chain(build_chain(), Parser().parse(orjson.dumps(record), Position("fid", 0, 1)))


def test_message_has_the_plugins_fields_with_the_port_kept():
    (message,) = deliver([kong_txn()])
    request, response = message["request"], message["response"]
    assert set(request) == {"method", "url", "headers", "timestamp"}  # no bodies or form without log_body
    assert set(response) == {"status", "headers", "response_time", "timestamp", "size_bytes"}
    assert request["url"] == "https://auth.example:443/login?next=%2Fhome"  # the plugin: scheme://host:server_port
    assert request["method"] == "POST" and request["timestamp"] == 1763800000.0
    assert response["status"] == 302 and response["response_time"] == 0.25
    assert response["timestamp"] == 1763800000.25
    assert response["size_bytes"] == 431 and type(response["size_bytes"]) is int


def test_log_body_sends_bodies_and_the_form_fields_masked_without_body_encoding():
    (message,) = deliver([kong_txn()], log_body=True)
    request, response = message["request"], message["response"]
    assert set(request) == {"method", "url", "headers", "timestamp", "body", "form"}
    assert set(response) == {"status", "headers", "response_time", "timestamp", "size_bytes", "body"}
    assert "hunter2" not in request["body"]
    # nginx's get_post_args: a bare field is true, a repeated one a list.
    assert request["form"] == {"user": "ann", "password": "*****", "remember": True, "tag": ["a", "b"]}
    assert response["body"] == '{"ok": true}'


def test_a_json_body_has_no_form():
    txn = kong_txn(request={"method": "POST", "uri": "/x", "url": "http://h.example:8000/x",
                            "headers": {"content-type": "application/json"}, "body": '{"a": 1}'})
    (message,) = deliver([txn], log_body=True)
    assert message["request"]["url"] == "http://h.example:8000/x"
    assert message["request"]["body"] == '{"a": 1}' and "form" not in message["request"]


def test_unknown_size_is_left_out():
    txn = kong_txn(response={"status": 200, "headers": {}})
    (message,) = deliver([txn])
    assert "size_bytes" not in message["response"]


def test_no_start_time_is_now_never_1970():
    txn = Transaction(event_id="e1", source_format="kong", method="GET", scheme="https", host="h.example", port=443,
                      raw_path="/", path="/", status=200, latency_request=10.0)
    before = time.time()
    (message,) = deliver([txn])
    assert before - 1 <= message["request"]["timestamp"] <= time.time() + 1
    assert message["response"]["timestamp"] == pytest.approx(message["request"]["timestamp"] + 0.01)


def test_the_fake_refuses_a_1970_timestamp_and_a_string_size():
    with FakeRunscope() as fake, httpx.Client() as client:
        url = f"{fake.url}/buckets/bucket1/messages"
        headers = {"Authorization": "Bearer runscope-token"}
        good = {"request": {"method": "GET", "url": "http://h:80/", "timestamp": 1763800000.0},
                "response": {"status": 200, "response_time": 0.1, "timestamp": 1763800000.1}}
        assert client.post(url, json=good, headers=headers).status_code == 200
        zero = orjson.loads(orjson.dumps(good))
        zero["request"]["timestamp"] = 0.0
        assert client.post(url, json=zero, headers=headers).status_code == 400
        text_size = orjson.loads(orjson.dumps(good))
        text_size["response"]["size_bytes"] = "434"
        assert client.post(url, json=text_size, headers=headers).status_code == 400


def test_stream_sessions_are_skipped():
    txn = Transaction(event_id="s1", source_format="kong", kind="stream", protocol="tcp", started_at=1, port=5432)
    with pytest.raises(EventSkipped):
        RunscopeSink("t", "b").encode(txn)


def test_backfill_of_a_stream_and_an_http_record_sends_the_http_one_and_counts_the_skip(tmp_path):
    lines = CORPUS.read_bytes().splitlines()
    stream_line = next(line for line in lines if b'"session"' in line)
    log = tmp_path / "kong.json"
    log.write_bytes(stream_line + b"\n" + orjson.dumps(kong_txn_record()) + b"\n")
    env = ship_env(RUNSCOPE_ACCESS_TOKEN="runscope-token", RUNSCOPE_BUCKET_KEY="bucket1")
    with FakeRunscope() as fake:
        result = ship("backfill", str(log), "--sink", "runscope", "--endpoint", fake.url,
                      "--state-dir", str(tmp_path / "state"), *FAST, env=env)
        assert result.returncode == 0, result.stderr
        assert [m["request"]["url"] for m in fake.messages] == ["https://k.example:443/a"]
    row = summary_rows(result.stderr)["runscope"]
    assert (row["read"], row["shipped"], row["skipped"]) == (2, 1, 1)


def kong_txn_record() -> dict:
    return {"request": {"method": "GET", "uri": "/a", "url": "https://k.example:443/a", "headers": {}},
            "response": {"status": 200, "size": 10}, "latencies": {"request": 5, "kong": 1, "proxy": 4},
            "started_at": 1763800000000, "client_ip": "10.0.0.1"}
