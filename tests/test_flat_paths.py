"""The flat paths (issue 16) against the Transaction path: for every line, `Transformer(parser, chain, sink, flat)`
gives the very outcome `Transformer(parser, chain, sink)` gives — fate, event bytes, anonymity — for the corpus,
generated records, and mutated ones (hypothesis), under several chains (--since/--until, extra mask names, other
JWT places and claims) and sink settings. And the flat path must really handle the ordinary records: its
fallbacks are counted, so this fails if it silently stopped working.

A sink with a flat path joins by one line in FLAT_SINKS: its name and the sink variants to build.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzlines
import gen
import shipper.formats
from shipper.formats import Parser
from shipper.processors import build_chain
from shipper.processors.masking import drop_raw
from shipper.sinks.segment import SegmentSink
from shipper.transform import Transformer

SINKS = fuzzlines.build_sinks()
SEGMENT_TEMPLATE = "{method} {path} {host} {status} {service} {route}"
# name -> (the sink variants to compare, how its flat path is made); one line per sink with a flat path. The
# path is the one the lane gets: the sink's own `flat_path`.
FlatMaker = Callable[[Any, Parser, list], Any]
FLAT_SINKS: dict[str, tuple[list[Callable[[], Any]], FlatMaker]] = {
    "segment": (
        [
            lambda: SINKS["segment"],
            lambda: SegmentSink("k", event_name_template=SEGMENT_TEMPLATE, strip_trailing_slash=False),
        ],
        lambda sink, parser, chain: sink.flat_path(parser, chain),
    ),
}
CHAINS: dict[str, dict[str, Any]] = {
    "default": {},
    "window": {"since_ms": gen.BASE_STARTED_AT + 40, "until_ms": gen.BASE_STARTED_AT + 160},
    "since_corpus": {"since_ms": 1_726_783_839_538},
    "masks": {"extra_mask_query": ("seq", "Name"), "extra_mask_headers": ("x-seq", "route")},
    "places": {"jwt_places": ("jwt", "request.headers.x-token", "token"), "jwt_claim": "name"},
    "authorization_only": {"jwt_places": ("request.headers.authorization",), "jwt_claim": "sub"},
}
CORPUS = pathlib.Path(__file__).resolve().parent / "corpus" / "kong-records.jsonl"
CORPUS_LINES = [line for line in CORPUS.read_bytes().splitlines() if line.strip()]
GEN_KINDS = [
    {}, {"version": "0"}, {"version": "2"}, {"jwt_sub": "u-1"}, {"consumer": "bob"}, {"version": "0", "jwt_sub": "x"},
    {"consumer": {"id": "c-1", "custom_id": "cust"}, "jwt_sub": "s"}, {"request_id": False}, {"path": "/a/b;v=1/c/"},
]  # fmt: skip
GEN_LINES = [gen.kong_line(gen.kong_record(seq, **GEN_KINDS[seq % len(GEN_KINDS)])).rstrip(b"\n") for seq in range(200)]
SECRET_QUERIES = ["access_token=abc", "Access_Token=abc", "access%5Ftoken=abc", "API-KEY=k", "api%2Dkey=k",
                  "%54oken=t", "seq=9&Name=n", "next=%2Fcb%3Ftoken%3Dx", "a=1;password=p", "flag", "x=%FF%FE"]  # fmt: skip


class FixedTime:
    """`time` for the parser: a record without a start time is dated when read, the same ms on both paths."""

    @staticmethod
    def time() -> float:
        return 1_764_000_000.0


@pytest.fixture(autouse=True)
def fixed_read_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shipper.formats, "time", FixedTime)


def pairs(sink_name: str) -> list[tuple[str, Transformer, Transformer, fuzzlines.CountingFlat]]:
    """(label, with the flat path, without, its counter) for every chain and sink variant."""
    out = []
    parser = Parser()
    makers, flat_path = FLAT_SINKS[sink_name]
    for chain_name, options in CHAINS.items():
        for i, make in enumerate(makers):
            sink = make()
            chain = build_chain(**options)  # one chain for both paths, as the lane gives them (its caches too)
            flat = flat_path(sink, parser, chain)
            assert flat is not None, f"{sink_name} offers no flat path for the chain {chain_name}"
            counting = fuzzlines.CountingFlat(flat)
            fast = Transformer(parser, chain, sink, counting)
            full = Transformer(parser, build_chain(**options), sink)
            out.append((f"{chain_name}/{i}", fast, full, counting))
    return out


def assert_same(pairs_: list, lines: list[bytes]) -> None:
    for label, fast, full, _ in pairs_:
        for offset, line in enumerate(lines):
            got, want = fast("file", line, offset * 10, offset * 10 + 9), full("file", line, offset * 10, offset * 10 + 9)
            assert got == want, f"{label}: line {offset}: {line[:300]!r}\nflat: {got!r}\nfull: {want!r}"


def is_kong_http(line: bytes) -> bool:
    record = orjson.loads(line)
    return isinstance(record.get("request"), dict) and "started_at" in record


@pytest.mark.parametrize("sink_name", FLAT_SINKS)
def test_corpus_and_generated_records_are_the_same_and_take_the_flat_path(sink_name: str) -> None:
    lines = CORPUS_LINES + GEN_LINES
    kong_http = sum(is_kong_http(line) for line in lines)
    assert kong_http >= len(GEN_LINES) + 20  # the corpus's HTTP records (its stream sessions take the full path)
    all_pairs = pairs(sink_name)
    assert_same(all_pairs, lines)
    for label, _, _, counting in all_pairs:
        assert counting.fallbacks == len(lines) - kong_http, label
        assert counting.handled == kong_http, label


@pytest.mark.parametrize("sink_name", FLAT_SINKS)
def test_no_flat_path_for_a_chain_or_format_it_does_not_know(sink_name: str) -> None:
    makers, flat_path = FLAT_SINKS[sink_name]
    sink = makers[0]()
    assert flat_path(sink, Parser("nginx"), build_chain()) is None
    assert flat_path(sink, Parser(), [*build_chain(), lambda txn: txn]) is None
    assert flat_path(sink, Parser(), [drop_raw]) is None  # known parts, but not the default chain
    assert flat_path(sink, Parser("kong"), build_chain(jwt_places=("request.querystring.jwt",))) is not None


# -- mutations ---------------------------------------------------------------------------------------------------
def _set_query(record: dict[str, Any], query: str, choose: random.Random) -> None:
    request = record["request"]
    for key in ("uri", "url", "request_uri"):
        if isinstance(request.get(key), str):
            target = request[key]
            request[key] = target + ("&" if "?" in target else "?") + query
    if choose.random() < 0.5:
        request.pop("querystring", None)  # the query object from the query string
    if choose.random() < 0.3 and isinstance(record.get("upstream_uri"), str):
        record["upstream_uri"] = request.get("uri", record["upstream_uri"])


# Every number and URL the parser checks, each of which may cost a record (bad_value) before any window drops it:
# a record outside --since/--until with one of these must be dead-lettered on both paths, not filtered on one.
CHECKED = [("response", "status"), ("response", "size"), ("request", "size"), ("latencies", "request"),
           ("latencies", "kong"), ("latencies", "receive"), ("latencies", "proxy"), (None, "upstream_status"),
           ("request", "url"), (None, "started_at")]  # fmt: skip
ODD_CHECKED = [1000, 99, 70000, -3, 1.5, "404", " 200", "502, 200", "500 : 0", "1e3", "https://h:70000/x",
               "https://h:8.5/x", "http://[::1]:99999/", "http://u:p@h/x?token=t", 2**63, 2**64 - 1]  # fmt: skip


def _odd_checked(record: dict[str, Any], choose: random.Random) -> None:
    parent, key = choose.choice(CHECKED)
    node = record if parent is None else record.get(parent)
    if isinstance(node, dict):
        node[key] = choose.choice([*ODD_CHECKED, *fuzzlines.HUGE, *fuzzlines.NON_FINITE, *fuzzlines.ODD])


def _text_damage(line: bytes, how: str, choose: random.Random) -> bytes:
    headers_at = line.find(b'"headers":{')
    if how == "bad_utf8_skipped" and headers_at > 0:
        at = headers_at + len(b'"headers":{')
        return line[:at] + b'"x-odd":"\xff\xfe",' + line[at:]
    if how == "number_skipped" and headers_at > 0:
        at = headers_at + len(b'"headers":{')
        value = choose.choice([b"1e400", b"-1E+309", b"1" + b"0" * 320, b"1" + b"0" * 30, b"1.5e+18", b"[" * 300 + b"1" + b"]" * 300])
        return line[:at] + b'"x-odd":' + value + b"," + line[at:]
    if how == "duplicate":
        return line[:-1] + choose.choice([b',"started_at":null}', b',"request":"x"}', b',"client_ip":"1.2.3.4"}', b',"response":{}}'])
    if how == "crlf":
        return line + b"\r"
    if how == "escaped":
        return line.replace(b'"GET"', b'"G\\u0000ET"').replace(b"curl", b"c\\r\\nurl").replace(b"python", b"p\\u00e9th\xc3\xa9n")
    if how == "bom":
        return b"\xef\xbb\xbf" + line
    if how == "trailing":
        return line + b' {"a":1}'
    return line


def mutated_line(seed: int) -> bytes:
    """A real (corpus) or generated record, mutated in its fields (fuzzlines: types, huge and non-finite numbers,
    time units, deep nesting, drops) or by us (secret query names, a JWT elsewhere), then maybe damaged as bytes."""
    choose = random.Random(seed)
    source = choose.choice(["fuzzlines", "corpus", "generated"])
    if source == "fuzzlines":
        return fuzzlines.mutated_line(fuzzlines.RandomChooser(choose.randrange(1 << 30)))
    record = json.loads(choose.choice(CORPUS_LINES if source == "corpus" else GEN_LINES))
    if isinstance(record.get("request"), dict):
        if choose.random() < 0.5:
            _set_query(record, choose.choice(SECRET_QUERIES), choose)
        if choose.random() < 0.5:
            token = gen.jwt_for(choose.choice(["alice", "bob"]))
            place = choose.choice(["jwt", "token", "x-token", "authorization"])
            value: Any = choose.choice([token, f"Bearer {token}", [token], {"t": token}, 5, "REDACTED"])
            if place in ("x-token", "authorization") and isinstance(record["request"].get("headers"), dict):
                record["request"]["headers"][place] = value
            else:
                record[place] = value
        if choose.random() < 0.3:
            record["started_at"] = choose.choice([*fuzzlines.TIMES, *fuzzlines.HUGE, *fuzzlines.NON_FINITE, None, "x"])
        if choose.random() < 0.4:
            _odd_checked(record, choose)
    text = json.dumps(record, separators=(",", ":"), allow_nan=True).encode()
    how = choose.choice(["none", "bad_utf8_skipped", "number_skipped", "duplicate", "crlf", "escaped", "bom", "trailing"])
    return _text_damage(text, how, choose)


PAIRS = {name: pairs(name) for name in FLAT_SINKS}
FUZZ = settings(
    max_examples=int(os.environ.get("FLAT_EXAMPLES", "300")), deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip


@pytest.mark.parametrize("sink_name", FLAT_SINKS)
@FUZZ
@given(seed=st.integers(0, 1 << 30))
def test_mutated_lines_give_the_same_outcome_on_both_paths(sink_name: str, seed: int) -> None:
    assert_same(PAIRS[sink_name], [mutated_line(seed)])


@pytest.mark.parametrize("sink_name", FLAT_SINKS)
def test_an_ipv6_host_header_keeps_its_brackets_on_both_paths(sink_name: str) -> None:
    """Without `request.url`, the host is the Host header's: `[::1]` was cut at its last `:` into `[:`, on both
    paths alike (values.host_of_header now, one helper for both)."""
    lines = []
    for seq, host in enumerate(["[::1]", "[2001:db8::1]:8443", "api.example.com:8000", "api.example.com", ""]):
        record = gen.kong_record(seq)
        del record["request"]["url"]
        record["request"]["headers"]["host"] = host
        lines.append(gen.kong_line(record))
    all_pairs = pairs(sink_name)
    assert_same(all_pairs, lines)
    hosts = [orjson.loads(all_pairs[0][1]("file", line, 0, 9)[1])["properties"].get("host") for line in lines]
    assert hosts == ["[::1]", "[2001:db8::1]", "api.example.com", "api.example.com", ""]


@pytest.mark.parametrize("sink_name", FLAT_SINKS)
def test_objects_and_lists_nested_deep_in_the_query_object_are_the_same_on_both_paths(sink_name: str) -> None:
    """Kong writes texts, true and lists of texts there; hand-made or hostile objects and lists inside are masked
    by name at any depth and whole past MAX_NESTING, on both paths alike (900 levels recursed past Python's limit
    on one path only), and their secrets never shipped."""
    lines = []
    for seq, depth in enumerate([3, 9, 300, 900]):
        text = gen.kong_line(gen.kong_record(seq)).decode()
        nested = '{"deep":' + '{"k":[' * depth + '{"token":"s1","next":"/cb?access_token=s2"}' + "]}" * depth + "}"
        lines.append(text.replace('"querystring":', '"querystring":' + nested + ',"was":', 1).encode())
    all_pairs = pairs(sink_name)
    assert_same(all_pairs, lines)
    for line in lines:
        shipped = all_pairs[0][1]("file", line, 0, 9)[1]
        assert b"s1" not in shipped and b"s2" not in shipped, shipped
