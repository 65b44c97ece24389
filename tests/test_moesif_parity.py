"""Parity of the Moesif sink with kong-plugin-moesif 2.1.2 (issue 13): sampling (lowest of the user, company and
regex_config rates, `weight` on every event), `ip_address` (client_ip.lua), `user_id`, `company_id`,
`session_token`, `metadata.kong`, Moesif's 30-day window and the kinds that are not HTTP calls."""

from __future__ import annotations

import gzip
import hashlib
import time

import httpx
import orjson
import pytest

import gen
from conftest import FAST, ship, ship_env
from fakes.moesif import FakeMoesif
from shipper.model import Transaction
from shipper.sinks.base import EventFiltered, EventSkipped
from shipper.sinks.moesif import MoesifSink, count_outside_window
from shipper.sinks.moesif_sampling import config_mapping, parse_regex_config, regex_rate

ENV = ship_env(MOESIF_APPLICATION_ID="moesif-app")
NOW = int(time.time() * 1000)
DAY = 86_400_000


def sink(**kw) -> MoesifSink:
    return MoesifSink("moesif-app", "http://127.0.0.1:9", fetch_config=False, **kw)


def call(event_id: str = "evt-1", **fields) -> Transaction:
    base = dict(
        event_id=event_id, source_format="kong", started_at=NOW - 60_000, method="GET", scheme="https",
        host="api.example.com", port=443, raw_path="/orders/7?x=1", path="/orders/7", query_string="x=1",
        client_ip="203.0.113.9", status=200, latency_request=12.0,
    )
    base.update(fields)
    return Transaction(**base)


def encoded(s: MoesifSink, txn: Transaction) -> dict:
    return orjson.loads(s.encode(txn))


# -- 1. sampling -------------------------------------------------------------------------------------------------
def kept(s: MoesifSink, n: int, **fields) -> list[dict]:
    out = []
    for i in range(n):
        try:
            out.append(encoded(s, call(f"evt-{i}", **fields)))
        except EventSkipped:
            pass
    return out


def test_the_lowest_of_user_and_company_rates_applies_with_its_weight():
    s = sink(company_id_header="x-company")
    s.sampler.user_rates, s.sampler.company_rates = {"alice": 50.0}, {"acme": 10.0}
    headers = {"x-consumer-custom-id": "alice", "x-company": "acme"}
    events = kept(s, 2000, request_headers=headers)
    # The draw comes from the event id, so the count is exact; 10 % of 2,000 is 200. The plugin let the user's
    # rate win (50 %, about 1,000) before its 2021 "fix sampling".
    assert len(events) == 196
    assert {e["weight"] for e in events} == {10}
    # Swapped, the lowest still applies: the same draws, the same events.
    s.sampler.user_rates, s.sampler.company_rates = {"alice": 10.0}, {"acme": 50.0}
    assert [e["transaction_id"] for e in kept(s, 2000, request_headers=headers)] == [e["transaction_id"] for e in events]


def test_specific_rates_replace_the_global_rate_even_when_higher():
    s = sink()
    s.sampler.global_rate, s.sampler.user_rates = 10.0, {"alice": 100.0}
    events = kept(s, 300, request_headers={"x-consumer-custom-id": "alice"})
    assert len(events) == 300 and {e["weight"] for e in events} == {1}  # the plugin: global only when none applies
    assert 15 < len(kept(s, 300)) < 50  # nobody: the global 10 %


def test_weight_is_sent_on_every_event_and_is_1_at_100_percent():
    events = kept(sink(), 50)
    assert len(events) == 50 and [e["weight"] for e in events] == [1] * 50
    s = sink()
    s.sampler.global_rate = 30.0
    assert {e["weight"] for e in kept(s, 200)} == {3}  # floor(100 / 30), as the plugin


REGEX = [
    {"sample_rate": 0, "conditions": [{"path": "request.route", "value": "^/health$"}]},
    {"sample_rate": 5, "conditions": [{"path": "request.verb", "value": "POST"},
                                      {"path": "response.status", "value": "^5"}]},
    {"sample_rate": 50, "conditions": [{"path": "request.ip_address", "value": "^10\\."}]},
    {"sample_rate": 1, "conditions": [{"path": "request.route", "value": "(unclosed"}]},
]


def test_regex_config_rules_match_the_plugins_request_fields():
    rules = parse_regex_config(REGEX)

    def rate(method="GET", path="/orders/7", ip="203.0.113.9", status=200):
        event = sink().event(call(method=method, raw_path=path, path=path, query_string="", client_ip=ip, status=status))
        return regex_rate(rules, config_mapping(event))

    assert rate(path="/health") == 0
    assert rate(path="/health/deep") is None and rate() is None
    assert rate(method="POST", status=503) == 5  # conditions of a rule are ANDed
    assert rate(method="POST", status=200) is None and rate(method="GET", status=503) is None
    assert rate(ip="10.1.2.3") == 50
    assert rate(path="/health", ip="10.1.2.3") == 0  # the first matching rule wins
    mapping = config_mapping(sink().event(call(raw_path="/a/b?x=1")))
    assert mapping == {"request.verb": "GET", "request.route": "/a/b", "request.ip_address": "203.0.113.9",
                       "response.status": "200"}
    assert config_mapping(sink().event(call(raw_path="/?x=1", path="/")))["request.route"] == "/"


def test_a_regex_rate_counts_in_the_minimum():
    s = sink()
    s.sampler.user_rates, s.sampler.regex_rules = {"alice": 50.0}, parse_regex_config(REGEX)
    assert kept(s, 200, raw_path="/health", path="/health", request_headers={"x-consumer-custom-id": "alice"}) == []
    posts = kept(s, 400, method="POST", status=502, request_headers={"x-consumer-custom-id": "alice"})
    assert 5 <= len(posts) <= 40 and {e["weight"] for e in posts} == {20}


def test_backfill_samples_by_the_config_regex_rules(tmp_path):
    log = tmp_path / "kong.json"
    health = set()
    with open(log, "wb") as out:
        for seq in range(300):
            record = gen.kong_record(seq, path="/health" if seq % 3 == 0 else None, started_at=NOW - 3_600_000 + seq,
                                     consumer="vip")
            if record["request"]["uri"].split("?")[0] == "/health":
                health.add(seq)  # every third, and those the generator happened to send there too
            out.write(gen.kong_line(record))
    assert 100 <= len(health) < 200
    config = {"sample_rate": 100, "user_sample_rate": {"cust-vip": 100}, "company_sample_rate": {},
              "regex_config": REGEX[:1]}
    with FakeMoesif(config=config) as fake:
        result = ship("backfill", str(log), "--sink", "moesif", "--endpoint", fake.url, "--state-dir",
                      str(tmp_path / "state"), *FAST, env=ENV)
        assert result.returncode == 0, result.stderr
        seqs = sorted(gen.seq_of_url(e["request"]["uri"]) for e in fake.events)
        assert seqs == [seq for seq in range(300) if seq not in health]  # /health at 0 %, the rest at 100 %
        assert {e["weight"] for e in fake.events} == {1}
        assert not fake.rejections


def test_encode_never_fetches_the_config_without_the_senders_client():
    with FakeMoesif(config={"sample_rate": 0}) as fake:
        s = MoesifSink("moesif-app", fake.url)  # fetch_config on: as built by the CLI
        encoded(s, call())  # no client yet (`kong-ship parse`, a test): no request from the reader, 100 %
        assert fake.config_requests == 0
        with httpx.Client() as client:
            s.use_client(client)
            with pytest.raises(EventSkipped):
                s.encode(call())  # the first fetch, before the first event that can use it
            assert fake.config_requests == 1
            with pytest.raises(EventSkipped):
                s.encode(call("evt-2"))
            assert fake.config_requests == 1  # the next refresh is due in five minutes, in the background
            fake.set_config({"sample_rate": 100}, etag="v2")
            s.sampler.config_changed("v2")
            assert encoded(s, call("evt-3"))["weight"] == 1  # a new ETag: fetched before the next event
            assert fake.config_requests == 2
            s.sampler.config_changed("v2")
            encoded(s, call("evt-4"))
            assert fake.config_requests == 2


# -- 2. ip_address ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("headers", "expected"), [
    ({}, "203.0.113.9"),
    ({"x-client-ip": "192.0.2.1", "x-forwarded-for": "192.0.2.2"}, "192.0.2.1"),
    ({"x-client-ip": "nope", "x-forwarded-for": "unknown, 192.0.2.2, 192.0.2.3"}, "192.0.2.2"),
    ({"x-forwarded-for": "192.0.2.4:5555"}, "192.0.2.4"),
    ({"x-forwarded-for": "2001:db8::7"}, "2001:db8::7"),
    ({"x-forwarded-for": "[2001:db8::8]:443"}, "2001:db8::8"),
    ({"x-forwarded-for": "*****", "cf-connecting-ip": "192.0.2.5", "true-client-ip": "192.0.2.6"}, "192.0.2.5"),
    ({"fastly-client-ip": "192.0.2.7", "true-client-ip": "192.0.2.6"}, "192.0.2.7"),
    ({"true-client-ip": "192.0.2.6", "x-real-ip": "192.0.2.8"}, "192.0.2.6"),
    ({"x-real-ip": "192.0.2.8", "x-cluster-client-ip": "192.0.2.9"}, "192.0.2.8"),
    ({"x-cluster-client-ip": "192.0.2.9", "x-forwarded": "192.0.2.10"}, "192.0.2.9"),
    ({"x-forwarded": "192.0.2.10", "forwarded-for": "192.0.2.11"}, "192.0.2.10"),
    ({"forwarded-for": "192.0.2.11", "forwarded": "192.0.2.12"}, "192.0.2.11"),
    ({"forwarded": "192.0.2.12"}, "192.0.2.12"),
    ({"forwarded": "for=192.0.2.12", "x-real-ip": ["192.0.2.1", "192.0.2.2"]}, "203.0.113.9"),
])
def test_ip_address_follows_client_ip_lua(headers, expected):
    assert sink().event(call(request_headers=headers))["request"]["ip_address"] == expected


def test_ip_address_from_kong_only_ignores_forgeable_headers():
    headers = {"x-client-ip": "192.0.2.1", "x-forwarded-for": "192.0.2.2"}
    assert sink(client_ip_from_kong=True).event(call(request_headers=headers))["request"]["ip_address"] == "203.0.113.9"
    assert "ip_address" not in {k for k, v in sink(client_ip_from_kong=True).event(call(client_ip=""))["request"].items() if v}


# -- 3. user_id ------------------------------------------------------------------------------------------------
def test_user_id_in_the_plugins_order():
    s = sink(user_id_header="x-user")
    headers = {"x-user": "h-user", "x-consumer-custom-id": "c-custom", "x-consumer-username": "c-name",
               "x-consumer-id": "c-id"}
    claims = {"sub": "jwt-sub", "uid": "jwt-uid"}
    full = dict(request_headers=dict(headers), jwt_claims=claims, user_id="jwt-sub", user_source="jwt",
                basic_user="basic", response_headers={"x-user": "resp-user"})
    order = ["h-user", "c-custom", "c-name", "c-id", "jwt-sub", "basic", "resp-user", None]
    got = []
    for step in range(len(order)):
        txn = call(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in full.items()})
        names = list(headers)[step:]
        txn.request_headers = {k: headers[k] for k in names}
        if step > 4:
            txn.jwt_claims, txn.user_id, txn.user_source = None, None, None
        if step > 5:
            txn.basic_user = None
        if step > 6:
            txn.response_headers = {}
        got.append(s.event(txn).get("user_id"))
    assert got == order


def test_user_id_from_the_consumer_kong_logged_and_a_named_claim():
    txn = call(consumer={"id": "c-id", "username": "c-name"})
    assert sink().event(txn)["user_id"] == "c-name"  # no custom_id: username, as x-consumer-username
    claims = call(jwt_claims={"sub": "s", "UserId": 42}, user_id="s", user_source="jwt")
    assert sink().event(claims)["user_id"] == "s"  # default: the identity processor's --jwt-claim
    assert sink(authorization_user_id_field="userid").event(claims)["user_id"] == "42"  # case-insensitive
    assert sink(user_id_header=None).event(call(request_headers={"x-consumer-custom-id": "*****"})).get("user_id") is None


def test_an_audit_records_user_is_its_rbac_admin():
    assert sink().event(call(kind="admin_request", user_id="ops", user_source="rbac"))["user_id"] == "ops"
    assert "user_id" not in sink().event(call(user_id="cred-user", user_source="credential"))


# -- 4. company_id ---------------------------------------------------------------------------------------------
def test_company_id_request_header_then_response_header_then_claim():
    s = sink(company_id_header="X-Company", authorization_company_id_field="org")
    claims = {"org": "jwt-org"}
    assert s.event(call(request_headers={"x-company": "req"}, response_headers={"x-company": "resp"},
                        jwt_claims=claims))["company_id"] == "req"
    assert s.event(call(response_headers={"x-company": "resp"}, jwt_claims=claims))["company_id"] == "resp"
    assert s.event(call(jwt_claims=claims))["company_id"] == "jwt-org"
    assert "company_id" not in s.event(call())
    assert "company_id" not in sink().event(call(jwt_claims=claims))  # no claim configured, as the plugin


# -- 5. session_token ------------------------------------------------------------------------------------------
def test_session_token_is_the_credential_never_its_raw_key():
    assert sink().event(call(authenticated_entity={"id": "cred-1", "key": "k-secret"}))["session_token"] == "cred-1"
    txn = call(authenticated_entity={"key": "k-secret", "consumer_id": "c"})
    event_bytes = sink().encode(txn)
    token = orjson.loads(event_bytes)["session_token"]
    assert token == "sha256:" + hashlib.sha256(b"k-secret").hexdigest()[:32] and b"k-secret" not in event_bytes
    assert sink().event(call(jwt_claims={"sid": "s-1"}))["session_token"] == "s-1"
    assert "session_token" not in sink().event(call())


# -- 6. metadata -----------------------------------------------------------------------------------------------
def test_metadata_keeps_the_plugins_keys_beside_kong_3_fields():
    txn = call(
        service={"id": "s1", "name": "orders-api", "host": "svc"}, route={"id": "r1", "name": "orders", "hosts": ["a.example"]},
        consumer={"id": "c1", "username": "bob"}, workspace="w1", workspace_name="default",
        latency_kong=1.0, latency_proxy=10.0, latency_receive=0.5, upstream_uri="/orders/7", upstream_status=200,
        upstream_statuses=[502, 200], tries=2, upstream_tries=[{"ip": "10.0.0.1", "port": 80, "state": "failed", "code": 502},
                                                              {"ip": "10.0.0.2", "port": 80}],
        response_source="upstream", request_size=300, response_size=900, trace_id="t-1", correlation_id="c-1",
        tls={"version": "TLSv1.3"}, ai={"provider": "openai", "model": "gpt-4o", "total_tokens": 30, "cost": 0.01},
    )
    kong = sink().event(txn)["metadata"]["kong"]
    assert kong == {
        "route_hosts": ["a.example"], "service_name": "orders-api",
        "service": {"id": "s1", "name": "orders-api"}, "route": {"id": "r1", "name": "orders"},
        "consumer": {"id": "c1", "username": "bob"}, "workspace": {"id": "w1", "name": "default"},
        "latencies": {"request": 12.0, "kong": 1.0, "proxy": 10.0, "receive": 0.5},
        "upstream_uri": "/orders/7", "upstream_status": 200, "upstream_statuses": [502, 200], "tries": 2,
        "upstream_tries": txn.upstream_tries, "source": "upstream", "request_size": 300, "response_size": 900,
        "trace_id": "t-1", "correlation_id": "c-1", "tls": {"version": "TLSv1.3"},
        "ai": {"provider": "openai", "model": "gpt-4o", "total_tokens": 30, "cost": 0.01},
    }
    bare = sink().event(call())["metadata"]["kong"]
    assert bare == {"latencies": {"request": 12.0, "kong": None, "proxy": None}}


# -- 7. Moesif's 30-day window ---------------------------------------------------------------------------------
def test_events_older_than_30_days_are_filtered_with_a_reason(monkeypatch):
    monkeypatch.setenv("MOESIF_APPLICATION_ID", "moesif-app")
    with pytest.raises(EventFiltered, match="30-day"):
        sink(max_age_days=30).encode(call(started_at=NOW - 31 * DAY))
    assert encoded(sink(max_age_days=30), call(started_at=NOW - 29 * DAY))["weight"] == 1
    # Read-time dating (no start time in the record) is recent by construction.
    assert encoded(sink(max_age_days=30), call(started_at=NOW - 31 * DAY, started_at_estimated=True))["weight"] == 1
    assert encoded(sink(), call(started_at=NOW - 400 * DAY))["weight"] == 1  # built by hand: no window
    assert MoesifSink.from_options({}, None).max_age_ms == 30 * DAY  # every CLI-built sink has it


def test_backfill_counts_old_records_as_filtered_and_sends_the_rest(tmp_path):
    log = tmp_path / "kong.json"
    with open(log, "wb") as out:
        for seq in range(40):
            started = NOW - (40 if seq < 15 else 1) * DAY + seq
            out.write(gen.kong_line(gen.kong_record(seq, started_at=started)))
    assert count_outside_window([log]) == count_outside_window([log], time.time())
    message = count_outside_window([log])
    assert message is not None and message.startswith("moesif: 15 of 40 records started before ")
    with FakeMoesif() as fake:
        result = ship("backfill", str(log), "--sink", "moesif", "--endpoint", fake.url, "--state-dir",
                      str(tmp_path / "state"), *FAST, env=ENV)
        assert result.returncode == 0, result.stderr
        assert sorted(gen.seq_of_url(e["request"]["uri"]) for e in fake.events) == list(range(15, 40))
        assert fake.too_old == []  # none sent to be dropped
        err = result.stderr.decode()
        # said before the run starts: the warning comes before the summary table
        said = err.index("moesif: 15 of 40 records started before ")  # the time moves on between the two scans
        assert "they will be counted as filtered, not sent" in err[said:] and said < err.index("sink ")
        row = next(line for line in result.stderr.decode().splitlines() if line.startswith("moesif "))
        assert row.split()[1:4] == ["40", "25", "15"]  # read, shipped, filtered


def test_count_outside_window_reads_gzip_and_splits_nothing(tmp_path):
    plain, packed, empty = tmp_path / "a.json", tmp_path / "b.json.gz", tmp_path / "c.json"
    lines = b"".join(gen.kong_line(gen.kong_record(seq, started_at=NOW - (31 if seq % 2 else 2) * DAY))
                     for seq in range(3000))  # over 1 MiB: records cross the scan's chunks
    plain.write_bytes(lines)
    packed.write_bytes(gzip.compress(lines))
    empty.write_bytes(gen.kong_line(gen.kong_record(1, started_at=NOW)))
    assert len(lines) > 1 << 20
    message = count_outside_window([plain, packed, tmp_path / "missing.json"])
    assert message.startswith("moesif: 3,000 of 6,000 records started before ")
    assert message.endswith("older than Moesif's 30-day window: they will be counted as filtered, not sent")
    assert count_outside_window([empty]) is None


# -- 8. kinds that are not HTTP calls ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["stream", "config_change", "event_hook"])
def test_non_http_kinds_are_skipped(kind):
    with pytest.raises(EventSkipped):
        sink().encode(call(kind=kind, protocol="tcp"))
    assert encoded(sink(), call(kind="admin_request"))["request"]["verb"] == "GET"


# -- options ---------------------------------------------------------------------------------------------------
def test_new_options_are_flags():
    text = ship("tail", "--help").stdout.decode()
    for flag in ("--moesif-authorization-user-id-field", "--moesif-authorization-company-id-field",
                 "--moesif-client-ip-from-kong"):
        assert flag in text
