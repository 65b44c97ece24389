"""The Moesif sink: the event kong-plugin-moesif built, every plugin option, sampling, and the answers, against
a strict fake Moesif on loopback and a real `kong-ship` process."""

from __future__ import annotations

import base64
import collections
import gzip
import time
import uuid

import orjson
import pytest

import gen
from conftest import FAST, ship, ship_env
from fakes.moesif import FakeMoesif
from shipper.formats import Parser
from shipper.model import Position
from shipper.processors import build_chain, run_chain
from shipper.sinks.base import FATAL, OK, RETRY, SPLIT
from shipper.sinks.moesif import MoesifSink, transaction_id

ENV = ship_env(MOESIF_APPLICATION_ID="moesif-app")


def txn(record: dict):
    line = orjson.dumps(record)
    return run_chain(build_chain(), Parser().parse(line, Position("fid", 0, len(line) + 1)))


def sink(**kw) -> MoesifSink:
    return MoesifSink("moesif-app", "http://127.0.0.1:9", fetch_config=False, **kw)


def record(**over):
    rec = gen.kong_record(3, jwt_sub="user-3")
    rec["request"]["headers"]["x-consumer-custom-id"] = "custom-9"
    rec["request"]["headers"]["x-company"] = "acme"
    rec["request"]["body"] = {"card": {"number": "4111", "cvc": "123"}, "amount": 5}
    rec["response"]["body"] = '{"ok": true, "token": "secret-token"}'
    rec.update(over)
    return rec


# Moesif refuses events older than 30 days, so records shipped to the fake start an hour ago (plus seq ms).
RECENT = int(time.time() * 1000) - 3_600_000


def write_recent(path, seqs, **kw) -> None:
    with open(path, "ab") as out:
        for seq in seqs:
            out.write(gen.kong_line(gen.kong_record(seq, started_at=RECENT + seq, **kw)))


def seq_of(event: dict) -> int:
    return gen.seq_of_url(event["request"]["uri"])


def test_event_has_the_plugins_shape():
    rec = record()
    event = sink(company_id_header="X-Company").event(txn(rec))
    request, response = event["request"], event["response"]
    assert request["verb"] == rec["request"]["method"]
    assert request["uri"].startswith("https://") and "seq=3" in request["uri"]
    assert request["time"].endswith("Z") and len(request["time"]) == len("2025-11-22T08:26:40.005Z")
    # client_ip.lua: X-Forwarded-For's first valid address before the address Kong saw
    assert request["ip_address"] == rec["request"]["headers"]["x-forwarded-for"] != rec["client_ip"]
    assert request["api_version"] == "1.0"
    assert request["headers"]["authorization"] == "*****"  # the plugin sent it in clear
    assert request["body"] == {"card": {"number": "4111", "cvc": "123"}, "amount": 5}
    assert response["status"] == rec["response"]["status"]
    assert response["body"] == {"ok": True, "token": "*****"}  # bodies are masked by key by default
    started = rec["started_at"]
    assert response["time"] > request["time"] or rec["latencies"]["request"] == 0
    from shipper.sinks.segment import iso_ms

    assert response["time"] == iso_ms(started + rec["latencies"]["request"])
    assert event["direction"] == "Incoming"
    assert event["user_id"] == "custom-9"  # user_id_header first, as the plugin
    assert event["company_id"] == "acme"
    assert event["transaction_id"] == transaction_id(rec["request"]["id"])
    assert len(event["transaction_id"]) == 36 and uuid.UUID(event["transaction_id"])
    kong = event["metadata"]["kong"]
    assert kong["service"]["name"] and kong["route"]["name"] and "latencies" in kong
    assert kong["service_name"] == rec["service"]["name"]  # the plugin's key, which dashboards filter on


def test_user_falls_back_to_the_jwt_then_consumer():
    rec = record()
    del rec["request"]["headers"]["x-consumer-custom-id"]
    assert sink().event(txn(rec))["user_id"] == "user-3"
    assert sink(user_id_header="x-not-there").event(txn(rec))["user_id"] == "user-3"


def test_masks_remove_headers_and_body_keys_at_any_depth_and_mask_query():
    rec = record()
    rec["request"]["uri"] += "&email=a@b.c"
    rec["request"]["url"] += "&email=a@b.c"
    event = sink(
        request_header_masks=["x-company"],
        request_query_masks=["email"],
        request_body_masks=["cvc"],
        response_header_masks=["content-type"],
        response_body_masks=["token"],
    ).event(txn(rec))
    assert "x-company" not in event["request"]["headers"]
    assert "email=*****" in event["request"]["uri"] and "a@b.c" not in event["request"]["uri"]
    assert event["request"]["body"] == {"card": {"number": "4111"}, "amount": 5}
    assert "content-type" not in event["response"]["headers"]
    assert event["response"]["body"] == {"ok": True}


def test_body_capture_limits_and_encodings():
    rec = record()
    rec["request"]["body"] = "a=1&b=two"
    rec["response"]["body"] = '{"x": "%s"}' % ("x" * 500)
    event = sink(response_max_body_size_limit=100).event(txn(rec))
    assert event["request"]["transfer_encoding"] == "base64"  # a form body
    assert base64.b64decode(event["request"]["body"]) == b"a=1&b=two"
    assert "exceeded response_max_body_size_limit" in event["response"]["body"]["msg"]  # a marker, valid JSON
    off = sink(disable_capture_request_body=True, disable_capture_response_body=True).event(txn(record()))
    assert "body" not in off["request"] and "body" not in off["response"]


def test_gzip_bodies_are_decompressed_unless_disabled():
    rec = record()
    rec["response"]["headers"]["content-encoding"] = "gzip"
    rec["response"]["body"] = base64.b64encode(gzip.compress(b'{"zipped": 1}')).decode()
    assert sink().event(txn(rec))["response"]["body"] == {"zipped": 1}
    raw = sink(disable_gzip_payload_decompression=True).event(txn(rec))["response"]
    assert raw["transfer_encoding"] == "base64" and raw["body"] == rec["response"]["body"]


def test_answers():
    import httpx

    def answer(status):
        return httpx.Response(status, request=httpx.Request("POST", "http://x/v1/events/batch"))

    s = sink()
    assert [s.judge(answer(code)).kind for code in (200, 201, 202, 204)] == [OK] * 4  # the plugin wanted 201
    assert [s.judge(answer(code)).kind for code in (401, 402, 403)] == [FATAL] * 3
    assert [s.judge(answer(code)).kind for code in (429, 500, 503)] == [RETRY] * 3
    assert s.judge(answer(413)).kind == SPLIT


def test_options_have_plugin_defaults():
    result = ship("tail", "--help")
    text = result.stdout.decode()
    for flag, default in (
        ("--moesif-user-id-header", "X-Consumer-Custom-Id"),
        ("--moesif-event-queue-size", "5000"),
        ("--moesif-request-max-body-size-limit", "100000"),
        ("--moesif-response-max-body-size-limit", "100000"),
        ("--moesif-connect-timeout", "1000"),
        ("--moesif-send-timeout", "2000"),
        ("--moesif-keepalive", "5000"),
        ("--moesif-api-version", "1.0"),
    ):
        assert flag in text
        assert default in text.split(flag, 1)[1].split("--", 1)[0].replace("\n", "").replace(" ", "")
    for flag in ("--moesif-company-id-header", "--moesif-disable-capture-request-body",
                 "--moesif-disable-capture-response-body", "--moesif-request-header-masks",
                 "--moesif-request-query-masks", "--moesif-request-body-masks", "--moesif-response-header-masks",
                 "--moesif-response-body-masks", "--moesif-disable-gzip-payload-decompression", "--moesif-debug",
                 "--moesif-application-id-file"):
        assert flag in text


# -- the real process against the fake ------------------------------------------------------------------------
def args(fake, tmp_path, *more):
    return ["--sink", "moesif", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"), *FAST, *more]


def test_backfill_to_moesif_exactly_once_with_default_batch_size(tmp_path):
    log = tmp_path / "kong.json"
    write_recent(log, range(450))
    with FakeMoesif() as fake:
        # A long flush interval: batches fill to batch_size whatever the machine's load.
        result = ship("backfill", str(log), *args(fake, tmp_path, "--concurrency", "1", "--flush-interval", "5"), env=ENV)
        assert result.returncode == 0, result.stderr
        got = collections.Counter(seq_of(e) for e in fake.events)
        assert set(got) == set(range(450)) and max(got.values()) == 1
        posts = [r for r in fake.requests if r.method == "POST"]
        assert all(r.headers["content-encoding"] == "gzip" for r in posts)
        sizes = [len(orjson.loads(gzip.decompress(r.body))) for r in posts]
        assert max(sizes) == 200  # the plugin's batch_size
        assert {e["weight"] for e in fake.events} == {1}  # the plugin weighs every event, 1 at 100 %
        assert fake.config_requests >= 1


def test_sampling_from_config_is_deterministic_and_weighted(tmp_path):
    log = tmp_path / "kong.json"
    write_recent(log, range(400), jwt_sub=None)
    config = {"sample_rate": 25, "user_sample_rate": {}, "company_sample_rate": {}}
    with FakeMoesif(config=config) as fake:
        result = ship("backfill", str(log), *args(fake, tmp_path), env=ENV)
        assert result.returncode == 0, result.stderr
        first = {seq_of(e) for e in fake.events}
        assert 40 < len(first) < 160  # about a quarter
        assert all(e["weight"] == 4 for e in fake.events)
    # A second shipper over the same records (no checkpoints) samples exactly the same ones.
    with FakeMoesif(config=config) as fake:
        assert ship("backfill", str(log), *args(fake, tmp_path / "again"), env=ENV).returncode == 0
        assert {seq_of(e) for e in fake.events} == first
    # Sampled-out events are acknowledged: the checkpoint covers the whole file.
    checkpoints = orjson.loads((tmp_path / "state" / "checkpoints-moesif.json").read_bytes())
    assert [e["offset"] for e in checkpoints["files"].values()] == [log.stat().st_size]


def test_per_user_rates_and_config_refresh_on_etag_change(tmp_path, shippers):
    log = tmp_path / "kong.json"
    write_recent(log, range(0, 50), consumer="vip")
    write_recent(log, range(50, 100), consumer="nobody")
    config = {"sample_rate": 100, "user_sample_rate": {"cust-nobody": 0}, "company_sample_rate": {}}
    with FakeMoesif(config=config) as fake:
        proc = shippers("tail", str(log), *args(fake, tmp_path, "--poll-interval", "0.05"), env=ENV)
        fake.wait_for(lambda: len(fake.events) >= 50, timeout=15)
        time.sleep(0.3)
        assert {seq_of(e) for e in fake.events} == set(range(50))  # "nobody" sampled at 0 %
        fake.set_config({"sample_rate": 100, "user_sample_rate": {}, "company_sample_rate": {}}, etag="v2")
        # The next answer to a batch carries the new config ETag; kong-ship fetches the config again.
        write_recent(log, range(100, 110), consumer="vip")
        fake.wait_for(lambda: any(seq_of(e) >= 100 for e in fake.events), timeout=15)
        time.sleep(0.2)
        write_recent(log, range(110, 120), consumer="nobody")
        fake.wait_for(lambda: len({seq_of(e) for e in fake.events} & set(range(110, 120))) == 10, timeout=15)
        code, _, err = proc.stop()
        assert code == 0, err
        assert fake.config_requests >= 2  # fetched again when an answer carried a new config ETag


@pytest.mark.parametrize("status", [401, 402, 403])
def test_refusals_stop_within_seconds(tmp_path, status):
    log = tmp_path / "kong.json"
    write_recent(log, range(5))
    with FakeMoesif() as fake:
        fake.script([status] * 5)
        started = time.monotonic()
        result = ship("backfill", str(log), *args(fake, tmp_path), env=ENV)
        assert time.monotonic() - started < 10
        assert result.returncode == 1
        err = result.stderr.decode()
        assert f"{status}" in err and "fatal" in err and "Traceback" not in err


def test_wrong_application_id_and_missing_credential(tmp_path):
    log = tmp_path / "kong.json"
    write_recent(log, range(5))
    with FakeMoesif() as fake:
        result = ship("backfill", str(log), *args(fake, tmp_path), env=ship_env(MOESIF_APPLICATION_ID="wrong"))
        assert result.returncode == 1 and "MOESIF_APPLICATION_ID" in result.stderr.decode()
    result = ship("backfill", str(log), "--sink", "moesif", "--state-dir", str(tmp_path / "s"), env=ship_env())
    assert result.returncode == 2 and "MOESIF_APPLICATION_ID" in result.stderr.decode()


def test_429_and_5xx_are_retried_with_nothing_lost(tmp_path):
    log = tmp_path / "kong.json"
    write_recent(log, range(300))
    with FakeMoesif() as fake:
        fake.script([(429, {"Retry-After": "1"}), 500, 503, "reset"])
        result = ship("backfill", str(log), *args(fake, tmp_path), env=ENV)
        assert result.returncode == 0, result.stderr
        got = collections.Counter(seq_of(e) for e in fake.events)
        assert set(got) == set(range(300)) and max(got.values()) == 1


def test_metadata_workspace_is_each_calls_own_though_its_entities_are_shared():
    # metadata.kong's entity keys are remembered per entity objects (the masks hand back one per entity): the
    # workspace remembered with them must be the call's own, not the first call's with those objects.
    moesif, call = sink(), txn(record())
    assert call.service and call.route  # the remembered keys are made of these objects
    seen = []
    for workspace, name in (("w-1", "team-a"), ("w-2", "team-b"), (None, None), ("w-1", None)):
        call.workspace, call.workspace_name = workspace, name
        seen.append(moesif.event(call)["metadata"]["kong"].get("workspace"))
    assert seen == [{"id": "w-1", "name": "team-a"}, {"id": "w-2", "name": "team-b"}, None, {"id": "w-1", "name": None}]
    assert moesif.event(call)["metadata"]["kong"]["service"] == {"id": call.service["id"], "name": call.service["name"]}
