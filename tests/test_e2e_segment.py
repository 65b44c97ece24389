"""kong-ship as a real process against a strict fake Segment on loopback, with real files, real rotation and a
real kill -9. Every record carries a unique sequence number; each test checks the set that arrived."""

from __future__ import annotations

import collections
import os
import pathlib
import shutil
import signal
import time

import orjson
import pytest

from conftest import FAST, FAST_FOLLOW, ship, ship_env, summary_rows, wait_until
from fakes.segment import FakeSegment, decode_body

SAMPLE = orjson.loads((pathlib.Path(__file__).resolve().parents[1] / "examples" / "kong-3x.jsonl").read_bytes().splitlines()[0])


def line(seq: int, request_id: bool = False) -> bytes:
    record = orjson.loads(orjson.dumps(SAMPLE))
    record["request"]["uri"] = f"/orders/{seq}?seq={seq}"
    record["request"]["url"] = f"https://api.example.com:443/orders/{seq}?seq={seq}"
    record["request"]["querystring"] = {"seq": str(seq)}
    record["started_at"] = 1763800000000 + seq
    if request_id:
        record["request"]["id"] = f"req-{seq:08d}"
    else:
        record["request"].pop("id", None)
    return orjson.dumps(record) + b"\n"


def write(path, seqs, **kw) -> None:
    with open(path, "ab") as handle:
        for seq in seqs:
            handle.write(line(seq, **kw))


def seq_of(message: dict) -> int:
    return int(message["properties"]["queryObject"]["seq"])


def arrived(fake: FakeSegment) -> collections.Counter:
    return collections.Counter(seq_of(m) for m in list(fake.messages))


def exactly_once(fake: FakeSegment, seqs) -> None:
    counts = arrived(fake)
    missing = sorted(set(seqs) - set(counts))
    doubled = sorted(s for s, n in counts.items() if n > 1)
    extra = sorted(set(counts) - set(seqs))
    assert not missing and not doubled and not extra, (missing[:10], doubled[:10], extra[:10])


def args(fake, tmp_path, *more):
    return ["--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"), *FAST, *more]


def tail_args(fake, tmp_path, *more):
    return ["--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"), *FAST_FOLLOW, *more]


ENV = ship_env(SEGMENT_WRITE_KEY="test-key")


@pytest.fixture
def segment():
    with FakeSegment() as fake:
        yield fake


def test_backfill_ships_everything_once_and_a_second_run_only_what_is_new(segment, tmp_path):
    log = tmp_path / "kong.json"
    write(log, range(3000))  # ~2.4 KB each: several 500 KB batches
    result = ship("backfill", str(log), *args(segment, tmp_path), env=ENV)
    assert result.returncode == 0, result.stderr
    exactly_once(segment, range(3000))
    assert max(len(b["batch"]) for b in segment.batches) <= 2500
    assert all(r.headers.get("content-encoding") == "gzip" for r in segment.requests)
    summary = result.stderr.decode()
    rows = summary_rows(summary)
    assert rows["segment"]["read"] == 3000 and rows["segment"]["shipped"] == 3000 and "records/s" in summary

    again = ship("backfill", str(log), *args(segment, tmp_path), env=ENV)
    assert again.returncode == 0
    exactly_once(segment, range(3000))

    write(log, range(3000, 3010))
    third = ship("backfill", str(log), *args(segment, tmp_path), env=ENV)
    assert third.returncode == 0
    exactly_once(segment, range(3010))


def test_tail_follows_appends_and_new_files_matching_the_glob(segment, tmp_path, shippers):
    first = tmp_path / "a.json"
    write(first, range(10))
    proc = shippers("tail", str(tmp_path / "*.json"), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 10, timeout=15)
    write(first, range(10, 20))
    write(tmp_path / "b.json", range(20, 30))
    segment.wait_for(lambda: len(segment.messages) >= 30, timeout=15)
    code, _, err = proc.stop()
    assert code == 0, err
    exactly_once(segment, range(30))


def test_message_ids_come_from_the_record(segment, tmp_path):
    log = tmp_path / "kong.json"
    write(log, range(5), request_id=True)
    write(log, range(5, 10))
    assert ship("backfill", str(log), *args(segment, tmp_path), env=ENV).returncode == 0
    ids = {seq_of(m): m["messageId"] for m in segment.messages}
    assert [ids[s] for s in range(5)] == [f"req-{s:08d}" for s in range(5)]
    assert all(ids[s].startswith("f") and ids[s].rsplit("-", 1)[1].isdigit() for s in range(5, 10))


def test_rename_rotation_with_late_writes_loses_and_doubles_nothing(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(100))
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 100, timeout=15)
    os.rename(log, tmp_path / "kong.json.1")
    write(tmp_path / "kong.json.1", range(100, 150))  # Kong (reopen=false) still writes to the old file
    write(log, range(150, 200))
    segment.wait_for(lambda: len(segment.messages) >= 200, timeout=15)
    code, _, err = proc.stop()
    assert code == 0, err
    exactly_once(segment, range(200))
    assert "rotation" in err


def test_copytruncate_rotation(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(50))
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 50, timeout=15)
    shutil.copy(log, tmp_path / "kong.json.1")
    with open(log, "r+b") as handle:
        handle.truncate(0)
    write(log, range(50, 80))
    segment.wait_for(lambda: len(segment.messages) >= 80, timeout=15)
    code, _, err = proc.stop()
    assert code == 0, err
    exactly_once(segment, range(80))
    assert "truncated" in err


def test_gzip_rotation_after_partial_delivery_resumes_inside_the_archive(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(40))
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 40, timeout=15)
    proc.stop()
    write(log, range(40, 60))  # written while kong-ship is down...
    packed = tmp_path / "kong.json.1.gz"
    import gzip

    packed.write_bytes(gzip.compress(log.read_bytes()))  # ...then rotated and compressed
    log.unlink()
    write(log, range(60, 70))
    result = ship("backfill", str(tmp_path / "kong.json*"), *args(segment, tmp_path), env=ENV)
    assert result.returncode == 0, result.stderr
    exactly_once(segment, range(70))


def test_kill_9_then_restart_loses_nothing_and_resends_with_the_same_ids(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(2000))
    segment.script(["slow:0.3"] * 6)  # keep batches in flight when the kill lands
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--batch-size", "100"), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 300, timeout=15)
    proc.kill9()
    first_ids = {seq_of(m): m["messageId"] for m in segment.messages}
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--batch-size", "100"), env=ENV)
    segment.wait_for(lambda: len(set(arrived(segment))) >= 2000, timeout=30)
    code, _, err = proc.stop()
    assert code == 0, err
    counts = arrived(segment)
    assert set(counts) == set(range(2000))
    for message in segment.messages:  # a resent record keeps the identity it had the first time
        seq = seq_of(message)
        if seq in first_ids:
            assert message["messageId"] == first_ids[seq]
    # Only what was in flight or acknowledged-but-not-checkpointed may come twice; never the whole file.
    assert sum(n - 1 for n in counts.values()) < 1000


def test_401_stops_within_seconds_with_one_clear_line(tmp_path):
    with FakeSegment(write_key="the-right-key") as fake:
        log = tmp_path / "kong.json"
        write(log, range(10))
        started = time.monotonic()
        result = ship("backfill", str(log), *args(fake, tmp_path), env=ship_env(SEGMENT_WRITE_KEY="wrong-key"))
        assert time.monotonic() - started < 10
        assert result.returncode == 1
        err = result.stderr.decode()
        fatal = [l for l in err.splitlines() if l.startswith("kong-ship: fatal:")]
        assert fatal and "401" in fatal[0] and "SEGMENT_WRITE_KEY" in fatal[0]
        assert "wrong-key" not in err and "Traceback" not in err
        assert fake.request_count == 1  # not retried


def test_a_refused_message_is_isolated_dead_lettered_and_the_rest_delivered(segment, tmp_path):
    log = tmp_path / "kong.json"
    write(log, range(40), request_id=True)
    segment.reject(["req-00000017"])
    dead = tmp_path / "dead.jsonl"
    result = ship("backfill", str(log), *args(segment, tmp_path, "--dead-letter", str(dead)), env=ENV)
    assert result.returncode == 1  # the vendor permanently rejected an event
    exactly_once(segment, set(range(40)) - {17})
    entries = [orjson.loads(l) for l in dead.read_bytes().splitlines()]
    assert len(entries) == 1 and entries[0]["reason"] == "rejected" and entries[0]["sink"] == "segment"
    assert "req-00000017" in entries[0]["event"] and "400" in entries[0]["detail"]
    again = ship("backfill", str(log), *args(segment, tmp_path), env=ENV)
    assert again.returncode == 0  # the rejected record was acknowledged: not resent forever


def test_429_retry_after_is_honoured_and_sent_at_is_fresh(segment, tmp_path):
    log = tmp_path / "kong.json"
    write(log, range(20))
    segment.script([(429, {"Retry-After": "1"})])
    started = time.monotonic()
    result = ship("backfill", str(log), *args(segment, tmp_path, "--batch-size", "100", "--concurrency", "1"), env=ENV)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 1.0
    exactly_once(segment, range(20))
    attempts = [decode_body(r)["sentAt"] for r in segment.requests]
    assert len(attempts) == 2 and attempts[1] > attempts[0]


def test_vendor_outage_then_recovery_delivers_everything(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(300))
    segment.set_down(True)
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: segment.request_count >= 5, timeout=15)
    segment.stop()  # connection refused for a while
    time.sleep(0.5)
    segment.set_down(False)
    segment.start()
    segment.wait_for(lambda: len(segment.messages) >= 300, timeout=20)
    code, _, err = proc.stop()
    assert code == 0, err
    exactly_once(segment, range(300))
    assert "retry" in err


def test_sigterm_delivers_in_flight_saves_checkpoints_and_exits_0(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(200))
    segment.script(["slow:0.5"])
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: segment.request_count >= 1, timeout=15)
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(timeout=15)
    assert code == 0, err
    delivered = set(arrived(segment))
    checkpoints = orjson.loads((tmp_path / "state" / "checkpoints-segment.json").read_bytes())
    (entry,) = checkpoints["files"].values()
    # Everything before the checkpoint was delivered; restarting ships the rest, nothing twice.
    assert entry["offset"] == sum(len(line(s)) for s in range(len(delivered)))
    result = ship("backfill", str(log), *args(segment, tmp_path), env=ENV)
    assert result.returncode == 0
    exactly_once(segment, range(200))


def test_shutdown_timeout_bounds_a_retry_storm_and_a_second_signal_exits_at_once(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(50))
    segment.set_down(True)
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--shutdown-timeout", "1"), env=ENV)
    segment.wait_for(lambda: segment.request_count >= 3, timeout=15)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(timeout=10)
    assert code == 0 and time.monotonic() - started < 4, err
    assert "not acknowledged" in err

    before = segment.request_count
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--shutdown-timeout", "30"), env=ENV)
    segment.wait_for(lambda: segment.request_count >= before + 3, timeout=15)
    proc.signal(signal.SIGTERM)
    time.sleep(0.2)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(timeout=10)
    assert time.monotonic() - started < 3 and code == 128 + signal.SIGTERM, err
    segment.set_down(False)
    assert ship("backfill", str(log), *args(segment, tmp_path), env=ENV).returncode == 0
    exactly_once(segment, range(50))


def test_start_at_end_skips_history(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(20))
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--start-at", "end"), env=ENV)
    wait_until(lambda: (tmp_path / "state").exists(), timeout=10)
    time.sleep(0.3)  # give it the chance to (wrongly) ship history
    write(log, range(20, 25))
    segment.wait_for(lambda: len(segment.messages) >= 5, timeout=15)
    code, _, err = proc.stop()
    assert code == 0, err
    exactly_once(segment, range(20, 25))
