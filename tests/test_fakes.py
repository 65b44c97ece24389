"""Self-tests of the test infrastructure: the fakes must be right before they can judge the shipper."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import os
import time

import httpx
import orjson
import pytest

import gen
from fakes.httpfake import FakeHTTPServer, wait_until
from fakes.nginx import APT_PACKAGE, NginxServer, nginx_available
from fakes.segment import FakeSegment, decode_body, example_message


_client = httpx.Client(timeout=5)  # shared: a client per call would spend ~20 ms loading CA certificates


def post_batch(fake: FakeSegment, messages: list, *, key: str = "test-key", timeout: float = 5) -> httpx.Response:
    body = gzip.compress(orjson.dumps({"batch": messages, "sentAt": "2025-11-22T10:15:31.000Z"}))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    return _client.post(f"{fake.url}/v1/batch", content=body, headers=headers, auth=(key, ""), timeout=timeout)


# -- FakeSegment ----------------------------------------------------------------------------------------------
def test_segment_accepts_valid_gzip_batch():
    with FakeSegment() as fake:
        r = post_batch(fake, [example_message(1), example_message(2)])
        assert r.status_code == 200 and r.json() == {"success": True}
        assert fake.message_ids() == ["msg-1", "msg-2"]
        assert [gen.seq_of_segment_message(m) for m in fake.messages] == [1, 2]
        assert fake.sent_ats == ["2025-11-22T10:15:31.000Z"] and len(fake.batches) == 1
        assert decode_body(fake.requests[0])["batch"][0]["messageId"] == "msg-1"
        assert fake.requests[0].headers["content-encoding"] == "gzip"


def test_segment_rejects_wrong_or_missing_auth():
    with FakeSegment(write_key="right") as fake:
        assert post_batch(fake, [example_message(1)], key="wrong").status_code == 401
        r = _client.post(f"{fake.url}/v1/batch", json={"batch": [example_message(1)], "sentAt": "2025-11-22T10:15:31Z"})
        assert r.status_code == 401
        assert post_batch(fake, [example_message(1)], key="right").status_code == 200
        assert fake.message_count == 1


def test_segment_rejects_oversize_uncompressed_body():
    big = [example_message(i, properties={"pad": "x" * 30_000}) for i in range(17)]  # ~510 KB, gzips to ~2 KB
    with FakeSegment() as fake:
        r = post_batch(fake, big)
        assert r.status_code in (400, 413) and "bytes" in r.json()["error"]
        assert fake.messages == []


@pytest.mark.parametrize(
    "message, problem",
    [
        (example_message(1, userId=None), "userId or anonymousId"),
        (example_message(1, userId=""), "userId or anonymousId"),
        (example_message(1, type="identify"), "type"),
        (example_message(1, event=""), "event"),
        (example_message(1, timestamp="2025-11-22 10:15:30"), "timestamp"),
        (example_message(1, timestamp="2025-11-22T10:15:30+02:00"), "timestamp"),
        (example_message(1, messageId="m" * 101), "messageId"),
        (example_message(1, properties=None), "properties"),
        (example_message(1, properties={"pad": "x" * 33_000}), "bytes"),
    ],
)
def test_segment_rejects_invalid_message(message, problem):
    with FakeSegment() as fake:
        r = post_batch(fake, [example_message(0), message])
        assert r.status_code == 400
        assert problem in r.json()["error"] and "batch[1]" in r.json()["error"]
        assert fake.messages == [] and fake.rejections[0][0] == 400


def test_segment_accepts_anonymous_id_and_rejects_too_many_messages():
    tiny = {"type": "track", "event": "e", "anonymousId": "a", "properties": {}, "context": {},
            "timestamp": "2025-01-01T00:00:00Z"}  # fmt: skip
    with FakeSegment() as fake:
        assert post_batch(fake, [{**tiny, "messageId": "only"}]).status_code == 200
        r = post_batch(fake, [{**tiny, "messageId": f"m{i}"} for i in range(2501)])
        assert r.status_code == 400 and "2500" in r.json()["error"]
        assert post_batch(fake, []).status_code == 400
        assert fake.message_count == 1


def test_segment_checks_content_type_gzip_and_json():
    with FakeSegment() as fake:
        url, auth = f"{fake.url}/v1/batch", ("test-key", "")
        r = _client.post(url, content=b"{}", headers={"Content-Type": "text/plain"}, auth=auth)
        assert r.status_code == 400 and "Content-Type" in r.json()["error"]
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        assert _client.post(url, content=b"not gzip", headers=headers, auth=auth).status_code == 400
        headers = {"Content-Type": "application/json; charset=utf-8"}
        assert _client.post(url, content=b"{nope", headers=headers, auth=auth).status_code == 400
        assert _client.post(url, content=b'{"batch":[]}', headers=headers, auth=auth).status_code == 400


def test_segment_reject_message_ids_isolates_a_poison_message():
    with FakeSegment(reject_message_ids={"msg-2"}) as fake:
        r = post_batch(fake, [example_message(i) for i in range(4)])
        assert r.status_code == 400 and "msg-2" in r.json()["error"]
        assert post_batch(fake, [example_message(0), example_message(1)]).status_code == 200
        assert post_batch(fake, [example_message(2)]).status_code == 400
        assert fake.message_ids() == ["msg-0", "msg-1"]


def test_segment_counter_only_mode_keeps_nothing():
    with FakeSegment(store=False) as fake:
        for _ in range(3):
            assert post_batch(fake, [example_message(1), example_message(2)]).status_code == 200
        assert (fake.message_count, fake.batch_count, fake.request_count) == (6, 3, 3)
        assert fake.messages == [] and fake.requests == [] and fake.batches == []


# -- fault injection ------------------------------------------------------------------------------------------
def test_script_429_with_retry_after_then_normal():
    with FakeSegment() as fake:
        fake.script([(429, {"Retry-After": "1"}), 500])
        assert fake.script_remaining == 2
        r = post_batch(fake, [example_message(1)])
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json() == {}
        assert post_batch(fake, [example_message(1)]).status_code == 500
        assert post_batch(fake, [example_message(1)]).status_code == 200
        assert fake.request_count == 3 and fake.message_ids() == ["msg-1"]
        assert _client.get(f"{fake.url}/v1/batch").status_code == 404


def test_script_reset_is_a_connection_error():
    with FakeSegment() as fake:
        fake.script(["reset"])
        with pytest.raises(httpx.TransportError):
            post_batch(fake, [example_message(1)])
        assert fake.request_count == 1 and fake.messages == []
        assert post_batch(fake, [example_message(1)]).status_code == 200


def test_script_hang_processes_but_answers_late():
    with FakeSegment() as fake:
        fake.script(["hang:30"])
        with pytest.raises(httpx.ReadTimeout):
            post_batch(fake, [example_message(1)], timeout=0.2)
        assert fake.message_ids() == ["msg-1"]  # accepted although the client saw a timeout: a resend duplicates
    # leaving the context woke the hanging handler; nothing to wait for


def test_script_slow_delays_processing():
    with FakeSegment() as fake:
        fake.script(["slow:0.05"])
        started = time.monotonic()
        assert post_batch(fake, [example_message(1)]).status_code == 200
        assert time.monotonic() - started >= 0.05


def test_bad_script_action_fails_in_the_caller():
    with FakeHTTPServer() as fake:
        for bad in ("explode", "hang:soon", True, [500]):
            with pytest.raises(ValueError):
                fake.script([bad])


def test_set_down_and_restart_on_same_port():
    with FakeSegment() as fake:
        fake.set_down(True)
        assert post_batch(fake, [example_message(1)]).status_code == 503
        fake.set_down(False)
        assert post_batch(fake, [example_message(1)]).status_code == 200
        url = fake.url
        fake.stop()
        with pytest.raises(httpx.ConnectError):
            post_batch(fake, [example_message(2)])
        fake.start()
        assert fake.url == url and post_batch(fake, [example_message(2)]).status_code == 200
        assert fake.message_ids() == ["msg-1", "msg-2"]


def test_keepalive_replies_do_not_stall():
    # Nagle + delayed ACK would cost ~40 ms a request; 50 requests stay far below that.
    with FakeSegment() as fake, httpx.Client() as client:
        body = gzip.compress(orjson.dumps({"batch": [example_message(1)], "sentAt": "2025-11-22T10:15:31Z"}))
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        started = time.monotonic()
        for _ in range(50):
            r = client.post(f"{fake.url}/v1/batch", content=body, headers=headers, auth=("test-key", ""))
            assert r.status_code == 200
        assert time.monotonic() - started < 1.5
        assert fake.open_connections == 1  # one keep-alive connection served them all


def test_wait_for_returns_value_or_fails_fast():
    with FakeSegment() as fake:
        post_batch(fake, [example_message(1)])
        assert fake.wait_for(lambda: fake.message_count) == 1
        started = time.monotonic()
        with pytest.raises(AssertionError, match="1 requests received"):
            fake.wait_for(lambda: fake.message_count >= 2, timeout=0.05)
        assert time.monotonic() - started < 0.5


# -- generator ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["0", "2", "3"])
def test_generator_lines_parse_and_carry_unique_seqs(tmp_path, version):
    path = tmp_path / "kong.log"
    gen.write_records(path, range(100), version=version, jwt_sub="u1")
    gen.write_records(path, range(100, 150), version=version)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 151
    records = [json.loads(line) for line in lines[:-1]]
    seqs = [int(r["request"]["querystring"]["seq"]) for r in records]
    assert seqs == list(range(150))
    for seq, r in zip(seqs, records):
        assert r["request"]["headers"]["x-seq"] == str(seq)
        assert gen.seq_of_url(r["request"]["uri"]) == seq
    sized = [r["request"]["size"] for r in records]
    assert all(isinstance(s, int) for s in sized) if version == "3" else all(isinstance(s, str) for s in sized)
    if version == "0":
        assert "api" in records[0] and "request_uri" in records[0]["request"]
        assert records[0]["request"]["headers"]["authorization"].startswith("Bearer ")
    else:
        assert records[0]["request"]["headers"]["authorization"] == "REDACTED" and "jwt" in records[0]
        assert "jwt" not in records[120]
    if version == "3":
        assert len({r["request"]["id"] for r in records}) == 150
    assert 1200 < sum(map(len, lines)) / 150 < 3000  # about the size of a real record


def test_generator_is_deterministic_and_options_apply():
    assert gen.kong_record(7) == gen.kong_record(7)
    r = gen.kong_record(7, consumer="alice", request_id=False, status=502, method="GET", path="/x")
    assert "id" not in r["request"] and r["consumer"]["username"] == "alice"
    assert r["request"]["headers"]["x-consumer-username"] == "alice" and r["response"]["status"] == 502
    assert r["request"]["uri"].startswith("/x?seq=7") and r["latencies"]["proxy"] == -1
    assert b"\\/" in gen.kong_line(r) and json.loads(gen.kong_line(r)) == r


def test_make_jwt_is_valid_hs256():
    token = gen.make_jwt({"sub": "u42"}, key=b"k")
    header, payload, signature = token.split(".")
    decode = lambda part: base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))  # noqa: E731
    assert json.loads(decode(header)) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(decode(payload)) == {"sub": "u42"}
    assert decode(signature) == hmac.new(b"k", f"{header}.{payload}".encode(), hashlib.sha256).digest()


def test_seq_of_segment_message_fallbacks():
    assert gen.seq_of_segment_message({"properties": {"queryObject": {"seq": ["5", "6"]}}}) == 5
    assert gen.seq_of_segment_message({"properties": {"queryObject": {}, "queryString": "a=1&seq=6"}}) == 6
    assert gen.seq_of_segment_message({"properties": {"queryObject": "[truncated]", "rawpath": "/p?seq=7"}}) == 7
    assert gen.seq_of_segment_message({"properties": {"queryJson": '{"seq":"8"}'}}) == 8
    with pytest.raises(ValueError):
        gen.seq_of_segment_message({"properties": {"rawpath": "/p"}, "messageId": "m"})


NGINX_KEYS = ["time", "msec", "remote_addr", "request_method", "request_uri", "uri", "args", "status",
              "body_bytes_sent", "request_length", "request_time", "upstream_response_time", "upstream_addr",
              "http_user_agent", "http_referer", "http_authorization", "host", "scheme", "server_port",
              "request_id"]  # fmt: skip


def test_nginx_record_shape(tmp_path):
    r = gen.nginx_record(3, jwt_sub="u3")
    assert list(r) == NGINX_KEYS and all(isinstance(v, str) for v in r.values())
    assert gen.seq_of_url(r["request_uri"]) == 3 and r["args"].startswith("seq=3")
    assert r["http_authorization"].startswith("Bearer ")
    gen.write_records(tmp_path / "a.json", [1, 2], nginx=True)
    assert [json.loads(x)["request_uri"].split("?")[1][:5] for x in (tmp_path / "a.json").read_bytes().splitlines()] == [
        "seq=1",
        "seq=2",
    ]


# -- nginx ----------------------------------------------------------------------------------------------------
needs_nginx = pytest.mark.skipif(nginx_available() is None, reason=f"nginx not installed (apt-get install {APT_PACKAGE})")


@needs_nginx
def test_nginx_writes_one_json_line_per_request(tmp_path):
    with NginxServer(tmp_path) as ng:
        token = gen.make_jwt({"sub": "u9"})
        r = ng.request("/orders/1?seq=9", headers={"Authorization": f"Bearer {token}", "User-Agent": "t/1"})
        assert (r.status, r.body) == (200, b"ok\n")
        assert ng.request(ng.bad_gateway_path + "?seq=10", method="POST", body=b"{}").status == 502
        first, second = ng.wait_logged(2)
    assert list(first) == NGINX_KEYS and all(isinstance(v, str) for v in first.values())
    assert (first["status"], first["args"], first["http_user_agent"]) == ("200", "seq=9", "t/1")
    assert first["http_authorization"] == f"Bearer {token}" and first["upstream_addr"] == ""
    assert (second["status"], second["request_method"], gen.seq_of_url(second["request_uri"])) == ("502", "POST", 10)
    assert second["upstream_addr"].startswith("127.0.0.1:") and second["upstream_response_time"] != ""


@needs_nginx
def test_nginx_reopen_logs_after_rename(tmp_path):
    with NginxServer(tmp_path) as ng:
        ng.request("/?seq=1")
        ng.wait_logged(1)
        rotated = ng.access_log_path.with_suffix(".json.1")
        os.rename(ng.access_log_path, rotated)
        ng.reopen_logs()
        wait_until(ng.access_log_path.exists, timeout=5, what="log reopened")
        ng.request("/?seq=2")
        assert [gen.seq_of_url(r["request_uri"]) for r in ng.wait_logged(1)] == [2]
        assert [gen.seq_of_url(r["request_uri"]) for r in ng.records(rotated)] == [1]
