"""Real Kong records (tests/corpus/kong-records.jsonl, origins in tests/corpus/SOURCES.md), 0.x to 3.10, HTTP and
stream: every one parses, goes through the default processors and every sink without a dead letter, and keeps
what it says — the expected values below were read off each record by hand, not produced by the parser."""

from __future__ import annotations

import copy
import json
import pathlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzlines

from shipper.formats import Parser
from shipper.model import Position
from shipper.processors import build_chain, run_chain
from shipper.transform import FAILED, INVALID, REJECTED, Transformer

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus" / "kong-records.jsonl"
LINES = CORPUS.read_bytes().splitlines()

# Every record: (kind, method, host, port, path, status, started_at, user_id, user_source).
_DOCS_0X = ("api", "GET", "httpbin.org", 8000, "/get", 200, 1433209822425)
_CRED_0X = ("80f74eef-31b8-45d5-c525-ae532297ea8e", "credential")
_DOCS_2X = ("api", "GET", "localhost", 8000, "/log", 200, 1614232668342)
_DOCS_38 = ("api", "GET", "localhost", 8000, "/example-route", 200, 1726783839538, None, None)
_STREAM = ("stream", "", "")
BASE = {
    1: (*_DOCS_0X, *_CRED_0X),
    2: (*_DOCS_0X, *_CRED_0X),
    3: (*_DOCS_0X, "demo", "consumer"),
    4: (*_DOCS_0X, "demo", "consumer"),
    5: (*_DOCS_0X, "demo", "consumer"),
    6: (*_DOCS_0X, "demo", "consumer"),
    7: (*_DOCS_2X, None, None),
    8: (*_DOCS_2X, "foo", "consumer"),
    9: (*_DOCS_2X, "foo", "consumer"),
    10: _DOCS_38,
    11: ("api", "GET", "server1", 8000, "/api/v1/healthcheck", 200, 1509202924971, None, None),
    12: ("api", "GET", "localhost", 8000, "/nothing", 502, 1561468027943, None, None),
    13: ("api", "POST", "localhost", 9080, "/hello.HelloService/SayHello", 200, 1564527732516, None, None),
    14: ("api", "GET", "jenkins-ci.youle.game", 8443, "/static/ad8559c0/images/top-sticker-bottom-edge.png", 200,
         1594968780402, None, None),  # fmt: skip
    15: ("api", "GET", "echo.cuiliangblog.cn", 443, "/", 200, 1775462399040, None, None),
    16: ("api", "GET", "echo.cuiliangblog.cn", 443, "/favicon.ico", 200, 1775462399099, None, None),
    **{n: _DOCS_38 for n in range(17, 24)},
    24: (*_STREAM, 5432, "", 200, 1608560000010, None, None),
    25: (*_STREAM, 9443, "", 200, 1726783900000, "foo", "consumer"),
    26: (*_STREAM, 53, "", 200, 1726783950000, None, None),
}

_TRY_38 = {"ip": "34.237.204.224", "port": 80, "balancer_latency": 0.0}
_TRIES_0X = [{"ip": "127.0.0.1", "port": 8000, "state": "next", "code": 502}, {"ip": "127.0.0.1", "port": 8000}]
_TLS_391 = {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "client_verify": "NONE"}
_KONG_38 = {"event_id": "2f6946328ffc4946b8c9120704a4a155", "upstream_status": 200, "latency_receive": 1.0,
            "workspace_name": "default", "upstream_tries": [_TRY_38], "tries": 1}  # fmt: skip
# The fields each record has beyond the base (every other 3.x field must be None: see the test).
EXTRA: dict[int, dict] = {
    1: {"request_size": 75, "response_size": 434, "latency_request": 1921.0, "latency_kong": 9.0},
    3: {"tries": 2, "upstream_tries": _TRIES_0X},
    4: {"tries": 2, "upstream_tries": _TRIES_0X},
    5: {"tries": 2, "upstream_tries": _TRIES_0X},
    6: {"tries": 2, "upstream_tries": _TRIES_0X,
        "tls": {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES256-GCM-SHA384", "client_verify": "NONE"}},
    7: {"tries": 1, "upstream_tries": [{"ip": "18.211.130.98", "port": 80, "balancer_latency": 0.0}],
        "workspace": "54baa5a9-23d6-41e0-9c9a-02434b010b25"},
    9: {"tries": 1, "upstream_tries": [{"ip": "18.211.130.98", "port": 80, "balancer_latency": 0.0}],
        "workspace_name": "default"},
    10: _KONG_38,
    11: {"tries": 1, "upstream_tries": [{"ip": "172.17.0.3", "port": 3000, "balancer_latency": 0.0}],
         "request_size": 423, "response_size": 271},
    12: {"response_size": 318, "latency_kong": 10.0, "service": "buggy-service"},
    13: {"request_size": 46, "scheme": "http", "service": "grpc"},
    14: {"scheme": "https", "response_size": 576, "service": "Jenkins"},
    15: {"event_id": "4eb85d5862f40b087e603e77a58fa929", "tls": _TLS_391, "latency_receive": 0.0,
         "upstream_status": 200, "workspace_name": "default", "scheme": "https", "request_size": 470,
         "upstream_tries": [{"ip": "10.244.13.118", "port": 1027, "balancer_latency": 0.0}]},
    16: {"event_id": "3c66db51da2fd60b1e7f570fda10e721", "tls": _TLS_391, "latency_receive": 1.0,
         "upstream_status": 200, "response_size": 318},
    17: {**_KONG_38, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
    18: {**_KONG_38, "ai": {"provider": "cohere", "model": "command", "prompt_tokens": 28, "completion_tokens": 20,
                            "total_tokens": 48, "cost": 0.0038}},
    19: {**_KONG_38, "ai": {"provider": "azure", "model": "gpt-35-turbo", "prompt_tokens": 89,
                            "completion_tokens": 56, "total_tokens": 145, "cost": 0.0012}},
    20: {**_KONG_38, "ai": {"provider": "openai", "model": "gpt-3.5-turbo-0125", "prompt_tokens": 26,
                            "completion_tokens": 5, "total_tokens": 31}},
    21: {**_KONG_38, "ai": {"provider": "openai", "model": "gpt-4o-2024-08-06", "prompt_tokens": 12,
                            "completion_tokens": 40, "total_tokens": 52, "cost": 0.00042, "time_per_token": 30.07}},
    22: {**_KONG_38, "upstream_statuses": [502, 200], "tries": 2,
         "upstream_tries": [{**_TRY_38, "state": "next", "code": 502},
                            {"ip": "34.237.204.225", "port": 80, "balancer_latency": 1.0}]},
    23: {**_KONG_38, "correlation_id": "2b1f6c36-8a6f-4a8b-9d3e-5c0e7b4f1a2d#12"},
    24: {"protocol": "tcp", "request_size": 112, "response_size": 4096, "latency_request": 2456.0, "latency_kong": 1.0,
         "details": {"upstream_received": 4096, "upstream_sent": 112}, "client_ip": "192.0.2.15", "tries": 1,
         "upstream_tries": [{"ip": "10.0.0.21", "port": 5432, "balancer_latency": 0.0}], "service": "postgres"},
    25: {"protocol": "tls", "request_size": 2048, "response_size": 65536, "latency_request": 10250.0,
         "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "client_verify": "SUCCESS"},
         "details": {"upstream_received": 65536, "upstream_sent": 2048}, "workspace_name": "default",
         "service": "redis"},
    26: {"protocol": "udp", "request_size": 64, "response_size": 512, "latency_request": 3.0, "latency_kong": 0.0,
         "details": {"upstream_received": 512, "upstream_sent": 64}, "service": "dns"},
}  # fmt: skip
NEW_FIELDS = ("latency_receive", "tls", "upstream_statuses", "trace_id", "correlation_id", "ai", "basic_user")


def processed(number: int):
    line = LINES[number - 1]
    txn = Parser().parse(line, Position("corpus", number, number + 1))
    return run_chain(build_chain(), txn)


def test_the_corpus_is_what_sources_md_describes():
    assert len(LINES) == len(BASE) == 26
    sources = (CORPUS.parent / "SOURCES.md").read_text()
    for number in BASE:
        assert f"\n| {number} |" in sources, f"line {number} has no entry in SOURCES.md"


@pytest.mark.parametrize("number", sorted(BASE))
def test_every_record_keeps_what_it_says(number):
    txn = processed(number)
    kind, method, host, port, path, status, started_at, user_id, user_source = BASE[number]
    assert (txn.kind, txn.method, txn.host, txn.port, txn.path, txn.status) == (kind, method, host, port, path, status)
    assert (txn.started_at, txn.started_at_estimated) == (started_at, False)
    assert (txn.user_id, txn.user_source) == (user_id, user_source)
    assert (txn.anonymous_id is None) == (user_id is not None)
    extra = dict(EXTRA.get(number, {}))
    service = extra.pop("service", None)
    if service is not None:
        assert txn.service["name"] == service
    for field, expected in extra.items():
        assert getattr(txn, field) == expected, field
    for field in NEW_FIELDS:  # what a record does not carry stays unknown, not guessed
        if field not in extra:
            assert getattr(txn, field) is None, field
    if kind == "stream":
        assert txn.event_id == f"corpus-{number}" and txn.raw_path == "" and txn.scheme == ""
    else:
        assert txn.protocol == "" and txn.details is None


@pytest.mark.parametrize("sink_name", ["segment", "moesif", "runscope", "webhook", "stdout"])
def test_no_record_is_dead_lettered_by_any_sink(sink_name):
    transform = Transformer(Parser(), build_chain(), fuzzlines.build_sinks()[sink_name])
    for number, line in enumerate(LINES, 1):
        outcome, payload, _anonymous = transform("corpus", line, 0, len(line) + 1)
        assert outcome not in (INVALID, FAILED, REJECTED), (sink_name, number, payload)


# -- the corpus, mutated: its stream, AI, TLS and retry records reach parts of the parser the examples do not ----
RECORDS = [orjson.loads(line) for line in LINES]
VALUES = [*fuzzlines.TIMES, *fuzzlines.HUGE, *fuzzlines.NON_FINITE, *fuzzlines.ODD]
TRANSFORMERS = {name: Transformer(Parser(), build_chain(), sink) for name, sink in fuzzlines.build_sinks().items()}


@st.composite
def mutated(draw) -> bytes:
    record = copy.deepcopy(draw(st.sampled_from(RECORDS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = fuzzlines._paths(record)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = fuzzlines._get(record, path[:-1])
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(VALUES)))
    return json.dumps(record).encode()  # as fuzzlines: NaN and lone surrogates written, as a broken writer would


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_corpus_records_never_break_parsing_or_a_sink(line):
    for name, transform in TRANSFORMERS.items():
        outcome, payload, _anonymous = transform("corpus", line, 0, len(line) + 1)
        if outcome in (INVALID, FAILED):
            assert payload[0] != "internal_error", (name, payload, line[:300])
