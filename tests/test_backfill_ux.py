"""Backfill for people: the progress bar (on a terminal only), the summary table, --since/--until and
--max-rate. Real processes, real files, a real pseudo-terminal, a fake Segment on loopback."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

import pytest

import gen
from conftest import read_terminal, ship, ship_env, summary_rows
from fakes.segment import FakeSegment
from shipper.delivery.ratelimit import TokenBucket
from shipper.processors.window import parse_time, time_window
from shipper.model import Transaction

HOUR = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEY = "test-key"


def _hourly_log(path, count):
    for seq in range(count):
        gen.write_records(path, [seq], started_at=T0 + seq * HOUR)


# -- the time window ---------------------------------------------------------------------------------------------
def test_parse_time_forms():
    assert parse_time("2026-01-01T00:00:00Z") == T0
    assert parse_time("2026-01-01") == T0  # no zone: UTC
    assert parse_time("2026-01-01T02:00:00+02:00") == T0
    assert parse_time("1767225600") == T0
    now = T0 / 1000
    assert parse_time("7d", now=now) == T0 - 7 * 24 * HOUR
    assert parse_time("90m", now=now) == T0 - 90 * 60_000
    assert parse_time("30s", now=now) == T0 - 30_000
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_time("yesterday")


def test_window_is_half_open_and_keeps_undated_records():
    keep = time_window(T0, T0 + HOUR)

    def txn(started_at):
        return Transaction(event_id="e", source_format="kong", started_at=started_at)

    assert keep(txn(T0)) is not None
    assert keep(txn(T0 + HOUR - 1)) is not None
    assert keep(txn(T0 + HOUR)) is None
    assert keep(txn(T0 - 1)) is None
    assert keep(txn(None)) is not None
    assert time_window(None, T0)(txn(T0 - 1)) is not None and time_window(T0, None)(txn(T0 - 1)) is None


def test_backfill_ships_only_the_window_and_counts_the_rest(tmp_path):
    log = tmp_path / "kong.json"
    _hourly_log(log, 10)
    with FakeSegment(write_key=KEY) as segment:
        result = ship(
            "backfill", str(log), "--sink", "segment", "--endpoint", segment.url, "--state-dir", str(tmp_path / "s"),
            "--since", "2026-01-01T03:00:00Z", "--until", "2026-01-01T07:00:00Z",
            env=ship_env(SEGMENT_WRITE_KEY=KEY),
        )
        assert result.returncode == 0, result.stderr
        got = sorted(gen.seq_of_segment_message(m) for m in segment.messages)
    assert got == [3, 4, 5, 6]
    row = summary_rows(result.stderr)["segment"]
    assert row["read"] == 10 and row["shipped"] == 4 and row["filtered"] == 6


def test_parse_honours_the_window(tmp_path):
    log = tmp_path / "kong.json"
    _hourly_log(log, 5)
    result = ship("parse", str(log), "--since", str((T0 + 2 * HOUR) // 1000))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--since", "last tuesday"), "--since"),
        (("--since", "2026-01-02", "--until", "2026-01-01"), "window is empty"),
    ],
)
def test_bad_window_is_a_usage_error(tmp_path, flags, message):
    log = tmp_path / "kong.json"
    _hourly_log(log, 1)
    result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "s"), *flags)
    err = result.stderr.decode()
    assert result.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err


# -- the rate limit -----------------------------------------------------------------------------------------------
def test_token_bucket_reserves_with_debt():
    now = [100.0]
    bucket = TokenBucket(10, clock=lambda: now[0])
    assert bucket.reserve(10) == 0.0  # one second's worth is saved up
    assert bucket.reserve(5) == pytest.approx(0.5)  # in debt: wait for 5 tokens
    assert bucket.reserve(5) == pytest.approx(1.0)
    now[0] += 1.0
    assert bucket.reserve(1) == pytest.approx(0.1)  # 10 tokens came, 10 were owed
    now[0] += 60
    assert bucket.reserve(10) == 0.0  # idle time saves up no more than the burst
    assert bucket.reserve(1) == pytest.approx(0.1)


def test_max_rate_spreads_the_replay_and_caps_batches(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(60))
    with FakeSegment(write_key=KEY) as segment:
        started = time.monotonic()
        result = ship(
            "backfill", str(log), "--sink", "segment", "--endpoint", segment.url, "--state-dir", str(tmp_path / "s"),
            "--max-rate", "20", "--flush-interval", "0.05", env=ship_env(SEGMENT_WRITE_KEY=KEY),
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert sorted(gen.seq_of_segment_message(m) for m in segment.messages) == list(range(60))
        assert max(len(b["batch"]) for b in segment.batches) <= 20
    # 20 may go at once, the other 40 need two seconds at 20/s: a lower bound the limiter guarantees.
    assert elapsed >= 1.9


# -- the progress bar and the summary -----------------------------------------------------------------------------
def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(50))
    result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 0
    err = result.stderr.decode()
    assert "\r" not in err and "ETA" not in err and "\x1b[" not in err
    row = summary_rows(err)["stdout"]
    assert row["read"] == 50 and row["shipped"] == 50 and row["filtered"] == 0 and row["dead-lettered"] == 0


def test_progress_bar_on_a_terminal(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(200))
    size = log.stat().st_size
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "stdout", "--state-dir",
             str(tmp_path / "s")],
            stdout=subprocess.DEVNULL, stderr=slave, env=ship_env(COLUMNS="120"),
        )
        os.close(slave)
        output = read_terminal(master)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    out = output.decode()
    assert "\r" in out and "ETA" in out
    final = [part for part in out.replace("\r\n", "\n").split("\r") if "ETA" in part][-1]
    assert "100%" in final and "[" + "#" * 10 in final
    assert f"{size / 1e6:,.1f}/{size / 1e6:,.1f} MB" in final
    assert summary_rows(out.replace("\r\n", "\n").split("\r")[-1])["stdout"]["shipped"] == 200
