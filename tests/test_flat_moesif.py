"""Moesif's flat path (issue 16, `sinks/moesif_flat.py`) against the Transaction path, byte for byte: for the
corpus, generated records, hand-made secrets and hypothesis-mutated records, under several chains and Moesif
options, `Transformer(parser, chain, sink, flat)` and `Transformer(parser, chain, sink)` give equal outcomes.
Each side has its own sink and chain (the masks and the sampler keep state). Fallbacks are counted, so the test
fails if the flat path silently stops handling ordinary records."""

from __future__ import annotations

import base64
import gzip
import json
import pathlib
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

import fuzzlines
import gen
from shipper.formats import Parser
from shipper.processors import build_chain
from shipper.sinks.moesif import MoesifSink
from shipper.sinks.runscope import RunscopeSink
from shipper.transform import EVENT, INVALID, Transformer

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus" / "kong-records.jsonl"
NOW = time.time()  # frozen: a record without a start time is dated when read, on both sides alike
DAY_MS = 86_400_000

# name → (sink options, chain options)
CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({"max_age_days": 30}, {}),
    "no-window": ({}, {}),
    "since-until": ({}, {"since_ms": gen.BASE_STARTED_AT + 50, "until_ms": gen.BASE_STARTED_AT + 150}),
    "extra-masks": ({"request_header_masks": ("X-Seq,accept",), "response_header_masks": ("via",),
                     "request_query_masks": ("seq",), "request_body_masks": ("name",), "response_body_masks": ("id",)},
                    {"extra_mask_headers": ("X-Request-Id",), "extra_mask_query": ("page",),
                     "extra_mask_body_keys": ("email",)}),
    "no-bodies": ({"disable_capture_request_body": True, "disable_capture_response_body": True}, {}),
    "ids": ({"user_id_header": "x-seq", "company_id_header": "x-request-id", "authorization_user_id_field": "tenant",
             "authorization_company_id_field": "scope", "client_ip_from_kong": True, "api_version": "2.0"},
            {"jwt_claim": "tenant"}),
    "small-bodies": ({"request_max_body_size_limit": 20, "response_max_body_size_limit": 20,
                      "disable_gzip_payload_decompression": True}, {"ship_raw_bodies": True}),
}

RUNSCOPE_CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "runscope": ({}, {}),
    "runscope-bodies": ({"log_body": True}, {}),
    "runscope-masks": ({"log_body": True}, CONFIGS["extra-masks"][1]),
    "runscope-since-until": ({"log_body": True}, CONFIGS["since-until"][1]),
}


def make_sink(config: str) -> Any:
    if config in RUNSCOPE_CONFIGS:
        return RunscopeSink("t", "bucket", "http://127.0.0.1:9/", **RUNSCOPE_CONFIGS[config][0])
    return MoesifSink("m", "http://127.0.0.1:9/", fetch_config=False, **CONFIGS[config][0])


class Pair:
    """The same configuration twice: one Transformer with the flat path, one without."""

    def __init__(self, config: str, fmt: str = "auto", sampling: dict[str, Any] | None = None):
        chain_options = {**CONFIGS, **RUNSCOPE_CONFIGS}[config][1]
        sinks = [make_sink(config) for _ in range(2)]
        for sink in sinks:
            for key, value in (sampling or {}).items():
                setattr(sink.sampler, key, value)
        parser = Parser(fmt)
        flat_chain, plain_chain = build_chain(**chain_options), build_chain(**chain_options)
        flat = sinks[0].flat_path(parser, flat_chain)
        assert flat is not None
        self.counting = fuzzlines.CountingFlat(flat)
        self.flat = Transformer(parser, flat_chain, sinks[0], self.counting)
        self.plain = Transformer(parser, plain_chain, sinks[1])

    def check(self, line: bytes, offset: int = 0) -> Any:
        got, want = self.flat("f1", line, offset, offset + 1), self.plain("f1", line, offset, offset + 1)
        assert got == want, (line[:300], got, want)
        return got


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: NOW)


def generated_lines() -> list[bytes]:
    out = []
    for seq in range(240):
        version = "032"[seq % 3]
        kw: dict[str, Any] = {"version": version}
        if seq % 4 == 0:
            kw["jwt_sub"] = f"user-{seq}"
        if seq % 5 == 0:
            kw["consumer"] = f"consumer-{seq % 7}"
        if seq % 6 == 0:
            kw["extra"] = {"request": {**gen.kong_record(seq, version=version)["request"],
                                       "body": {"name": "n", "password": "p", "email": "e@x"}},
                           "response": {"status": 200, "headers": {"content-type": "application/json"},
                                        "body": '{"id": 1, "token": "t", "items": [{"secret": 1}]}'}}
        out.append(gen.kong_line(gen.kong_record(seq, **kw)))
    return out


def secret_lines() -> list[bytes]:
    """Secrets where masks must find them: odd-case header names, percent-encoded query names, body fields."""
    base = gen.kong_record(7, jwt_sub="alice")
    packed = base64.b64encode(gzip.compress(b'{"password": "hunter2", "ok": 1}')).decode()
    variants = [
        {"headers": {"AuThOrIzAtIoN": "Bearer abc.def.ghi", "X-API-KEY": "k", "Cookie": "a=b", "host": "h:81",
                     "referer": "https://u:p@x.example/cb?token=t#access_token=z"}},
        {"uri": "/p?%61pi_key=1&api%5Fkey=2&access%2Dtoken=3&ok=4#frag=1&token=2",
         "url": "http://user:pw@api.example.com:8080/p?%61pi_key=1&api%5Fkey=2&access%2Dtoken=3&ok=4"},
        {"body": "password=x&user%5Bpassword%5D=y&z=1", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        {"body": packed, "headers": {"content-encoding": "gzip"}},
        {"body": "plain text body, not json"},
        {"body": {"deep": [{"client_secret": "s", "n": [1, 2, {"Api-Key": "k"}]}]}},
        {"body": '{"nested": "{\\"password\\": \\"x\\"}"}'},
        {"headers": {"authorization": "Basic " + base64.b64encode(b"bob:secret").decode(), "x-forwarded-for": "::1, 1.2.3.4"}},
        {"headers": {"authorization": ["Bearer " + gen.jwt_for("carol"), "x"], "x-client-ip": "2001:db8::1"}},
    ]
    out = []
    for i, change in enumerate(variants):
        record = json.loads(json.dumps(base))
        record["request"]["id"] = f"secret-{i}"
        request = record["request"]
        if "headers" in change:
            request["headers"] = {**request["headers"], **change["headers"]}
        for key in ("uri", "url", "body"):
            if key in change:
                request[key] = change[key]
        record["response"]["body"] = change.get("body")
        out.append(gen.kong_line(record))
    stream = {"session": {"status": 200}, "started_at": int(NOW * 1000), "latencies": {"session": 5}}
    no_time = {k: v for k, v in base.items() if k != "started_at"}
    out += [orjson.dumps(stream), gen.kong_line(no_time), b'{"request": 1, "started_at": 1}', b"[1]", b"\xff{",
            gen.kong_line({**base, "started_at": gen.BASE_STARTED_AT - 40 * DAY_MS})]
    return out


@pytest.mark.parametrize("config", sorted(CONFIGS) + sorted(RUNSCOPE_CONFIGS))
def test_generated_and_secret_records_are_byte_identical_and_flat(config):
    pair = Pair(config)
    lines = generated_lines()
    outcomes = [pair.check(line, i) for i, line in enumerate(lines)]
    # Every generated record is an ordinary Kong HTTP record: the flat path makes (or drops) each one itself.
    assert pair.counting.fallbacks == 0
    assert pair.counting.events + pair.counting.dropped == len(lines)
    assert sum(o[0] == EVENT for o in outcomes) == pair.counting.events > 0
    before = pair.counting.events + pair.counting.dropped
    for i, line in enumerate(secret_lines()):
        pair.check(line, 1000 + i)
    assert pair.counting.events + pair.counting.dropped >= before + 5


@pytest.mark.parametrize("config", ["default", "no-window", "extra-masks", "runscope-masks"])
def test_the_corpus_is_byte_identical(config):
    pair = Pair(config)
    lines = [line for line in CORPUS.read_bytes().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        pair.check(line, i)
    if config == "default":  # the corpus is years old: Moesif's window filters it on the Transaction path
        assert pair.counting.events == 0
    else:
        assert pair.counting.events >= len(lines) * 3 // 4, (pair.counting.events, len(lines))


def test_the_kong_format_and_the_examples_are_byte_identical():
    pair = Pair("no-window", fmt="kong")
    for i, record in enumerate(fuzzlines.RECORDS):
        pair.check(orjson.dumps(record), i)
    assert pair.counting.events > 0
    assert MoesifSink("m", fetch_config=False).flat_path(Parser("nginx"), build_chain()) is None
    sink, chain = MoesifSink("m", fetch_config=False), build_chain(since_ms=1)
    assert sink.flat_path(Parser(), chain[:-1]) is None and sink.flat_path(Parser(), chain[1:] + chain[:1]) is None
    assert sink.flat_path(Parser(), [*chain, lambda txn: txn]) is None and sink.flat_path(Parser("kong"), chain)
    runscope = make_sink("runscope")
    assert runscope.flat_path(Parser("nginx"), chain) is None and runscope.flat_path(Parser(), chain[:-1]) is None
    assert runscope.flat_path(Parser(), chain) is not None


def test_sampling_keeps_and_weighs_alike_and_skips_go_the_transaction_way():
    pair = Pair("default", sampling={"global_rate": 40.0, "user_rates": {"user-0": 0.0}})
    outcomes = [pair.check(line, i) for i, line in enumerate(generated_lines())]
    kept = [o for o in outcomes if o[0] == EVENT]
    assert 0 < len(kept) < len(outcomes)
    assert all(orjson.loads(o[1])["weight"] == 2 for o in kept)
    assert pair.counting.events == len(kept)


MUTATION_PAIRS = {name: Pair(name) for name in ("no-window", "extra-masks", "small-bodies", "runscope-bodies")}


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                                    HealthCheck.function_scoped_fixture])
@given(fuzzlines.mutated_lines())
def test_mutated_records_are_byte_identical(frozen_clock, line):
    for pair in MUTATION_PAIRS.values():
        pair.check(line)


@pytest.mark.parametrize("depth", [3, 9, 300, 900])
def test_lists_nested_in_the_query_object_take_the_same_fate_on_both_paths(depth):
    """Found by the mutations above: lists nested 500 deep in the query object were walked one frame a level by
    the query masks (Segment ships the object, Moesif does not): the Transaction path hit Python's recursion limit
    (too_deep) where the flat path shipped. Past MAX_NESTING a value is masked whole, lists counting as levels."""
    text = orjson.dumps(fuzzlines.RECORDS[1]).decode()
    nested = '{"seq":' + "[" * depth + '"a?token=s1"' + "]" * depth + ',"page":"8"}'
    line = text.replace('"querystring":', '"querystring":' + nested + ',"was":', 1).encode()
    for pair in MUTATION_PAIRS.values():
        fate = pair.check(line)[0]
        assert fate == EVENT, fate


def test_the_fast_transaction_id_and_ipv4_test_are_the_standard_ones():
    """moesif_event's shortcuts (both paths use them): uuid5 without the UUID object, IPv4 by a pattern."""
    import ipaddress
    import random
    import uuid

    from shipper.sinks.moesif_event import NAMESPACE, is_ip, transaction_id

    for name in ["", "a", "é☃", "x" * 1000, "2e0a930eefc714116e734db36df78d47", "f1-12"]:
        assert transaction_id(name) == str(uuid.uuid5(NAMESPACE, name))

    def standard(value: str) -> bool:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return False
        return True

    rng = random.Random(7)
    octets = ["0", "00", "1", "9", "10", "99", "100", "199", "200", "249", "250", "255", "256", "300", "01", "012", "１"]
    cases = [".".join(rng.choice(octets) for _ in range(rng.choice([3, 4, 4, 5]))) for _ in range(5000)]
    cases += ["1.2.3.4\n", " 1.2.3.4", "::1", "::ffff:1.2.3.4", "1.2.3.4%eth0", "255.255.255.255"]
    assert all(is_ip(value) == standard(value) for value in cases)
    assert sum(map(is_ip, cases)) > 100


# Values the parser refuses or may refuse, put in records inside and outside --since/--until: the parser checks
# them before the window drops a record, so a flat path must too (it once dropped them first: filtered, where the
# Transaction path dead-letters them as `bad_value`).
_ODD = (
    ("response", "status", 1000), ("response", "size", -5), ("request", "size", 1e300), ("latencies", "request", -9),
    ("latencies", "proxy", "slow"), (None, "upstream_status", "abc"), ("request", "url", "http://h:99999/x"),
)


@pytest.mark.parametrize("config", ["since-until", "runscope-since-until"])
def test_a_refused_value_outside_the_window_is_a_dead_letter_on_both_paths(config):
    pair = Pair(config)
    outside_refused = 0
    for seq in range(0, 200, 7):  # started_at BASE + seq: before, inside and after the window [50, 150)
        for block, key, value in _ODD:
            record = gen.kong_record(seq)
            (record if block is None else record[block])[key] = value
            fate = pair.check(gen.kong_line(record), seq)[0]  # the same outcome on both paths, byte for byte
            outside_refused += fate == INVALID and not 50 <= seq < 150
    assert outside_refused >= 4 * len(range(0, 50, 7))  # the case is exercised: at least 4 of the values refused
