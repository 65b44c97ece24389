"""Deterministic sampling (issue 17): the decision is a function of the event id, so a restart after kill -9 keeps
exactly the same records; kept events carry their rate (Segment `sampleRate`, Moesif `weight`)."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

import gen
from conftest import FAST, ship, ship_env, summary_rows
from fakes.segment import FakeSegment
from shipper.formats import Parser
from shipper.model import Position
from shipper.processors import Dropped
from shipper.processors.sampling import SampleRule, Sampling, draw, parse_rate, sampling_for
from shipper.sinks import moesif_sampling
from shipper.sinks.moesif import MoesifSink
from shipper.sinks.segment import SegmentSink


def txn(seq: int = 1, **kw):
    line = gen.kong_line(gen.kong_record(seq, **kw))
    return Parser("kong").parse(line, Position("f", 0, len(line)), None)


def request_id(seq: int) -> str:
    return gen.kong_record(seq)["request"]["id"]  # the event id of a Kong 3 record


def test_rates_are_fractions_or_percentages():
    assert parse_rate(0.1) == 0.1 and parse_rate("10%") == 0.1 and parse_rate(1) == 1.0 and parse_rate("0") == 0.0
    for bad in (1.5, -0.1, "x", "150%", float("nan"), True, None):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_the_draw_is_stable_uniform_and_independent_of_moesifs():
    ids = [f"req-{i}" for i in range(20_000)]
    assert [draw(i) for i in ids[:50]] == [draw(i) for i in ids[:50]]
    ours = [draw(i) < 0.1 for i in ids]
    assert 1_850 < sum(ours) < 2_150  # 10 % of 20,000, within 2.5 sigma: fixed ids, so this never flickers
    # Independent of Moesif's draw from the same id: both at 10 % keep about 1 %, not 10 % (weights multiply).
    both = sum(1 for i, kept in zip(ids, ours) if kept and moesif_sampling.draw(i) < 10)
    assert 130 < both < 270


def test_the_first_matching_rule_gives_the_rate_and_a_drop_is_named():
    sampling = Sampling(0.0, [SampleRule("alice", 1.0, consumers=["alice"]),
                              SampleRule("orders", 0.0, services=["orders-api"])])
    alice = txn(1, consumer="alice")
    assert sampling(alice) is alice and alice.sample_rate == 1.0  # not sampled: no rate on it
    with pytest.raises(Dropped) as dropped:
        sampling(txn(2))
    assert dropped.value.reason == "sample:orders"
    with pytest.raises(Dropped) as dropped:
        sampling(txn(3, extra={"service": {"name": "billing"}}))
    assert dropped.value.reason == "sample:global"
    assert repr(sampling) == "sample(rate=0, alice=1(consumers=['alice']), orders=0(services=['orders-api']))"
    assert sampling_for(None, []) is None and sampling_for(1.0, []) is None  # nothing sampled: no processor


def test_a_kept_record_carries_its_rate_and_the_decision_follows_the_hash():
    sampling = Sampling(0.1)
    kept = dropped = 0
    for seq in range(1, 400):
        record = txn(seq)
        if draw(record.event_id) < 0.1:
            assert sampling(record) is record and record.sample_rate == 0.1
            kept += 1
        else:
            with pytest.raises(Dropped):
                sampling(record)
            dropped += 1
    assert kept and dropped


def test_segment_ships_the_rate_as_a_property_only_when_sampled():
    sink = SegmentSink("k")
    record = txn(1)
    assert "sampleRate" not in orjson.loads(sink.encode(record))["properties"]
    record.sample_rate = 0.25
    assert orjson.loads(sink.encode(record))["properties"]["sampleRate"] == 0.25


def test_moesif_weights_multiply():
    sink = MoesifSink("moesif-app", "http://127.0.0.1:9", fetch_config=False)
    record = txn(1)
    assert orjson.loads(sink.encode(record))["weight"] == 1
    record.sample_rate = 0.1
    assert orjson.loads(sink.encode(record))["weight"] == 10
    kept_by_moesif = next(seq for seq in range(1, 500) if moesif_sampling.draw(request_id(seq)) < 50)
    record = txn(kept_by_moesif)
    record.sample_rate = 0.1
    sink.sampler.global_rate = 50.0  # Moesif's /v1/config says 50 %: the event stands for 1 / (0.5 × 0.1) calls
    assert orjson.loads(sink.encode(record))["weight"] == 20
    record.sample_rate = 0.2
    assert orjson.loads(sink.encode(record))["weight"] == 10


# -- end to end: a kill -9 and a restart keep the same set -----------------------------------------------------------
CONFIG = """
[sampling]
rate = 0.1

[[sampling.rule]]
name = "all-of-alice"
rate = 1.0
consumers = ["alice"]
"""


def record(seq: int) -> dict:
    return gen.kong_record(seq, consumer="alice" if seq % 25 == 0 else None)


def test_sampling_keeps_exactly_the_hashed_ids_across_a_kill_9_and_a_restart(tmp_path, shippers):
    seqs = range(1, 4001)
    log = tmp_path / "kong.json"
    with open(log, "wb") as handle:
        handle.writelines(gen.kong_line(record(seq)) for seq in seqs)
    config = tmp_path / "kong-ship.toml"
    config.write_text(CONFIG)
    alice = {seq for seq in seqs if seq % 25 == 0}
    hashed = {seq for seq in seqs if seq not in alice and draw(request_id(seq)) < 0.1}
    assert 330 < len(hashed) < 470
    env = ship_env(SEGMENT_WRITE_KEY="test-key")
    with FakeSegment() as segment:
        run = ["--config", str(config), "--sink", "segment", "--endpoint", segment.url, "--state-dir",
               str(tmp_path / "state"), "--batch-size", "20", *FAST]
        segment.script(["slow:0.2"] * 8)  # batches in flight when the kill lands
        proc = shippers("backfill", str(log), "--workers", "2", *run, env=env)
        segment.wait_for(lambda: len(segment.messages) >= 60, timeout=20)
        proc.kill9()
        first = {gen.seq_of_segment_message(m): m["messageId"] for m in segment.messages}
        assert len(first) < len(hashed | alice)  # killed mid-run
        result = ship("backfill", str(log), "--workers", "0", *run, env=env)
        assert result.returncode == 0, result.stderr
        messages = list(segment.messages)
    arrived = Counter(gen.seq_of_segment_message(m) for m in messages)
    assert set(arrived) == hashed | alice  # the same ids after the restart, and no other
    for message in messages:
        seq = gen.seq_of_segment_message(message)
        assert message["messageId"] == first.get(seq, message["messageId"])
        assert message["properties"].get("sampleRate") == (None if seq in alice else 0.1)
    row = summary_rows(result.stderr)["segment"]
    assert row["read"] == row["shipped"] + row["filtered"] + row["dead-lettered"] + row["rejected"] + \
        row["skipped"] + row["blank"]
    assert row["filtered"] > 0
    assert f"filtered: {row['filtered']:,} sample:global" in result.stderr.decode()


def test_the_sample_rate_flag_wins_over_the_file(tmp_path):
    log = tmp_path / "kong.json"
    with open(log, "wb") as handle:
        handle.writelines(gen.kong_line(gen.kong_record(seq)) for seq in range(1, 301))
    config = tmp_path / "kong-ship.toml"
    config.write_text("[sampling]\nrate = 0.1\n")
    result = ship("backfill", str(log), "--config", str(config), "--sample-rate", "0.5", "--sink", "stdout",
                  "--state-dir", str(tmp_path / "state"), "--workers", "0", *FAST)
    assert result.returncode == 0, result.stderr
    shipped = {gen.seq_of_segment_message(orjson.loads(line)) for line in result.stdout.splitlines()}
    assert shipped == {seq for seq in range(1, 301) if draw(request_id(seq)) < 0.5}
