"""`--sink webhook`: JSON arrays POSTed to --endpoint, custom headers, and Kong's event-hook signature
(`x-kong-signature: sha1=<hex HMAC-SHA1 of the body>`), checked by a receiving fake that computes it itself."""

from __future__ import annotations

import collections
import hashlib
import hmac
import time

import httpx
import orjson
import pytest

import gen
from conftest import FAST, ship, ship_env
from fakes.webhook import FakeWebhook, kong_signature
from shipper.errors import ConfigError
from shipper.formats import Parser
from shipper.model import Transaction
from shipper.sinks import base
from shipper.sinks.webhook import WebhookSink, parse_headers, shown_endpoint, sign, signature_ok

SECRET = "wh-s3cr3t-value-77"


def args(fake, tmp_path, *more):
    return ["--sink", "webhook", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"), *FAST, *more]


def seqs(events):
    return collections.Counter(gen.seq_of_url(e["raw_path"]) for e in events)


# -- units ---------------------------------------------------------------------------------------------------
def test_signature_is_kongs_form_and_both_forms_verify():
    body = b'[{"a":1}]'
    expected = "sha1=" + hmac.new(b"k", body, hashlib.sha1).hexdigest()
    assert sign(b"k", body) == expected == kong_signature(b"k", body)
    assert signature_ok(b"k", body, expected)
    assert signature_ok(b"k", body, expected[5:])  # bare hex
    assert signature_ok(b"k", body, "SHA1=" + expected[5:].upper())
    assert not signature_ok(b"k", body + b" ", expected)
    assert not signature_ok(b"other", body, expected)
    assert not signature_ok(b"k", body, None) and not signature_ok(b"k", body, "")
    assert not signature_ok(b"k", body, "sha1=zz\u00e9")


def test_request_is_an_array_signed_with_headers():
    sink = WebhookSink("http://127.0.0.1:1/hook", secret="k", headers=parse_headers(["X-Tenant: acme", "X-A:b"]))
    request = sink.request([b'{"a":1}', b'{"b":2}'])
    body = request.read()
    assert body == b'[{"a":1},{"b":2}]'
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-tenant"] == "acme" and request.headers["x-a"] == "b"
    assert request.headers["x-kong-signature"] == kong_signature(b"k", body)
    unsigned = WebhookSink("http://127.0.0.1:1/hook").request([b"{}"])
    assert "x-kong-signature" not in unsigned.headers


@pytest.mark.parametrize("bad", ["NoColon", ": v", "Bad Name: v", "Content-Type: text/plain", "x-kong-signature: x"])
def test_bad_headers_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_headers([bad])


@pytest.mark.parametrize("status, kind", [
    (200, base.OK), (202, base.OK), (204, base.OK), (401, base.FATAL), (403, base.FATAL), (404, base.FATAL),
    (408, base.RETRY), (429, base.RETRY), (500, base.RETRY), (503, base.RETRY), (413, base.SPLIT),
    (400, base.REJECT), (422, base.REJECT), (301, base.FATAL),
])  # fmt: skip
def test_judge(status, kind):
    sink = WebhookSink("http://127.0.0.1:1/hook")
    response = httpx.Response(status, headers={"Retry-After": "3"}, request=httpx.Request("POST", sink.url))
    verdict = sink.judge(response)
    assert verdict.kind == kind
    if kind == base.RETRY:
        assert verdict.retry_after == 3.0


@pytest.mark.parametrize("status", [401, 403, 404, 501])
def test_a_fatal_line_shows_the_endpoint_without_the_secret_in_its_path(status):
    """Slack, Discord and Zapier put the secret in the webhook's path: a fatal line (stderr, the journal) shows the
    origin and the first segment only, and never userinfo or the query."""
    url = "https://bot:pw1@hooks.example.com/services/T0A1/B0C2/ZQ88PATHSECRETQZ?token=ZQ89QUERYSECRETQZ"
    sink = WebhookSink(url)
    verdict = sink.judge(httpx.Response(status, request=httpx.Request("POST", url)))
    assert verdict.kind == base.FATAL and "https://hooks.example.com/services/…" in verdict.reason, verdict.reason
    assert not [s for s in ("ZQ88", "ZQ89", "pw1", "T0A1") if s in verdict.reason], verdict.reason
    assert shown_endpoint("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert shown_endpoint("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080/hook"


def test_encode_is_the_normalized_transaction_for_api_calls_and_event_hooks():
    sink = WebhookSink("http://127.0.0.1:1/hook")
    txn = Parser().parse(gen.kong_line(gen.kong_record(7)))
    assert orjson.loads(sink.encode(txn)) == orjson.loads(orjson.dumps(txn.to_dict()))
    envelope = {"spool": "event_hook", "seq": 1, "received_at": "2025-01-01T00:00:00.000Z",
                "record": {"source": "crud", "event": "consumers", "operation": "create", "entity": {"id": "c1"}}}
    hook = Parser().parse(orjson.dumps(envelope))
    event = orjson.loads(sink.encode(hook))
    assert event["kind"] == "event_hook" and event["details"]["entity"] == {"id": "c1"}
    assert event["started_at"] == 1735689600000


# -- the real process ----------------------------------------------------------------------------------------
def test_backfill_signed_with_headers_every_record_exactly_once(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(1, 301))
    with FakeWebhook(secret=SECRET.encode(), require_headers={"X-Tenant": "acme"}) as fake:
        result = ship("backfill", str(log), *args(fake, tmp_path, "--batch-size", "40", "--webhook-header",
                                                  "X-Tenant: acme"), env=ship_env(KONG_SHIP_WEBHOOK_SECRET=SECRET))
        assert result.returncode == 0, result.stderr
        assert not fake.rejections
        got = seqs(fake.events)
        assert set(got) == set(range(1, 301)) and max(got.values()) == 1
        assert fake.batches >= 300 // 40  # batched as arrays, not one request per event
        assert all(r.headers["x-kong-signature"].startswith("sha1=") for r in fake.requests)
        event = fake.events[0]
        assert event["request_headers"]["authorization"] == "*****"  # masks applied before sending
        assert event["kind"] == "api" and event["event_id"]
        assert SECRET not in result.stderr.decode()


def test_secret_file(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    with FakeWebhook(secret=SECRET.encode()) as fake:
        result = ship("backfill", str(log), *args(fake, tmp_path, "--webhook-secret-file", str(secret_file)))
        assert result.returncode == 0, result.stderr
        assert set(seqs(fake.events)) == set(range(5))


def test_wrong_secret_401_is_fatal_in_one_line(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    with FakeWebhook(secret=b"the-right-one") as fake:
        started = time.monotonic()
        result = ship("backfill", str(log), *args(fake, tmp_path), env=ship_env(KONG_SHIP_WEBHOOK_SECRET=SECRET))
        assert time.monotonic() - started < 10
        stderr = result.stderr.decode()
        assert result.returncode == 1, stderr
        fatal = [line for line in stderr.splitlines() if line.startswith("kong-ship: fatal:")]
        assert len(fatal) == 1 and "401" in fatal[0], stderr
        assert "Traceback" not in stderr and SECRET not in stderr
        assert not fake.events


def test_missing_endpoint_exits_2(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(1))
    result = ship("backfill", str(log), "--sink", "webhook", "--state-dir", str(tmp_path / "state"))
    stderr = result.stderr.decode()
    assert result.returncode == 2 and len(stderr.strip().splitlines()) == 1 and "--endpoint" in stderr, stderr


def test_bad_header_exits_2_without_its_value(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(1))
    result = ship("backfill", str(log), "--sink", "webhook", "--endpoint", "http://127.0.0.1:9/",
                  "--webhook-header", "Bad Name: topsecretvalue", "--state-dir", str(tmp_path / "state"))
    stderr = result.stderr.decode()
    assert result.returncode == 2 and len(stderr.strip().splitlines()) == 1 and "topsecretvalue" not in stderr


def test_retried_after_503_and_nothing_duplicated(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(50))
    with FakeWebhook(secret=SECRET.encode()) as fake:
        fake.script([(503, {"Retry-After": "0.2"}), 503, 502, "reset"])
        started = time.monotonic()
        result = ship("backfill", str(log), *args(fake, tmp_path, "--batch-size", "10", "--concurrency", "1"),
                      env=ship_env(KONG_SHIP_WEBHOOK_SECRET=SECRET))
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started >= 0.2  # Retry-After honoured
        got = seqs(fake.events)
        assert set(got) == set(range(50)) and max(got.values()) == 1
        assert fake.request_count >= 5 + 4
        assert fake.script_remaining == 0
