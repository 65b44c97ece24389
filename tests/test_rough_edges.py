"""Issue 12, the rough edges a new user hit: stopping a backfill with workers (a real SIGINT/SIGTERM to the
process group, as a terminal's Ctrl-C and systemd's KillMode=control-group send them), inputs that match
nothing, offsets that read as line numbers, JSON on stderr, and the smaller nits. Real processes, real files."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import gen
from conftest import FAST, read_terminal, reaped, ship, ship_env, summary_rows, wait_until
from fakes.segment import FakeSegment

ENV = ship_env(SEGMENT_WRITE_KEY="test-key")


# -- 1. Ctrl-C / SIGTERM on a backfill with workers ---------------------------------------------------------------
def _backfill(fake, tmp_path, log, *more):
    return [
        sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "segment", "--endpoint", fake.url,
        "--state-dir", str(tmp_path / "state"), "--workers", "2", *FAST, *more,
    ]


def _arrived(fake) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in list(fake.messages))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_group_stops_a_backfill_with_workers_at_once_and_the_next_run_resumes(tmp_path, signum):
    total = 12_000
    log = tmp_path / "kong.json"
    gen.write_records(log, range(total))
    with FakeSegment() as fake:
        # --max-rate keeps the run long (about 6 s) so the signal lands in the middle of it.
        proc = subprocess.Popen(
            _backfill(fake, tmp_path, log, "--max-rate", "2000", "--queue-size", "1000", "--progress"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True,
        )
        with reaped(proc):
            assert wait_until(lambda: fake.message_count >= 1500, timeout=30), "the backfill never got going"
            os.killpg(proc.pid, signum)
            sent = time.monotonic()
            _, err = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        err = err.decode()
        assert proc.returncode == 128 + signum, err
        # in flight: at most the 1,000 queued events at 2,000/s, and the workers' chunks
        assert took < 8, f"took {took:.1f} s to stop (the shutdown timeout is 10 s)"
        assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Unpickling" not in err, err
        assert f"interrupted by {signal.Signals(signum).name}" in err and "of 1 file(s) done" in err, err
        done_mb = re.search(r"file\(s\) done, ([\d.,]+) of ([\d.,]+) MB, ([\d,]+) shipped to segment", err)
        assert done_mb and 0 < float(done_mb[1]) < float(done_mb[2]), err
        bars = [part for part in err.replace("\n", "\r").split("\r") if "ETA" in part]
        assert bars and " 0% " not in bars[-1], bars[-1:]
        first = _arrived(fake)
        assert 0 < len(first) < total
        # The rerun ships the rest: together every record, duplicates only within what was in flight.
        again = subprocess.run(_backfill(fake, tmp_path, log), capture_output=True, env=ENV, timeout=120)
        assert again.returncode == 0, again.stderr.decode()
        both = _arrived(fake)
        assert set(both) == set(range(total))
        assert sum(n - 1 for n in both.values()) <= 1000


# -- 2. tail says at start what matches nothing -------------------------------------------------------------------
def test_tail_warns_at_start_about_a_missing_path_a_directory_and_a_glob_that_matches_nothing(tmp_path):
    missing, folder, pattern = tmp_path / "nope.jsonl", tmp_path / "logs", str(tmp_path / "x" / "*.json")
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipper", "tail", str(missing), str(folder), pattern, "--sink", "stdout",
         "--state-dir", str(tmp_path / "state"), *FAST],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ship_env(), start_new_session=True,
    )
    lines = []
    try:
        for raw in proc.stderr:
            lines.append(raw.decode())
            if "started:" in lines[-1]:
                break
        os.killpg(proc.pid, signal.SIGTERM)
        lines += [raw.decode() for raw in proc.stderr]
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = "".join(lines)
    assert f"kong-ship: WARNING: {missing}: no such file yet; watching for it" in err, err
    assert f"kong-ship: WARNING: {folder} is a directory, not a log file: not read (use a glob such as {folder}/*.json)" in err, err
    assert f"kong-ship: WARNING: {pattern}: no file matches yet; watching for it" in err, err
    # one start line, not two near-identical ones
    assert sum("started: following" in line for line in lines) == 1 and not any("tailing" in line for line in lines)


# -- 3. offsets are called offsets --------------------------------------------------------------------------------
def test_parse_calls_a_byte_offset_an_offset(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_bytes(b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    result = ship("parse", str(passwd))
    err = result.stderr.decode()
    assert f"kong-ship: {passwd}: offset 0: not_json" in err and f"kong-ship: {passwd}: offset 32: not_json" in err, err
    assert f"{passwd}:32:" not in err


# -- 4. --log-format json: every stderr line is JSON ---------------------------------------------------------------
def test_log_format_json_makes_every_stderr_line_json_the_summary_included(tmp_path):
    import orjson

    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    with open(log, "ab") as handle:
        handle.write(b"not json\n")
    result = ship("backfill", str(log), str(tmp_path / "missing.json"), "--sink", "stdout", "--state-dir",
                  str(tmp_path / "s"), "--log-format", "json")
    assert result.returncode == 1
    records = [orjson.loads(line) for line in result.stderr.decode().splitlines()]  # each one JSON, or this raises
    summary = next(r for r in records if r["message"] == "summary")
    assert summary["sinks"] == [{
        "sink": "stdout", "read": 21, "shipped": 20, "filtered": 0, "dead_lettered": 1, "rejected": 0,
        "skipped": 0, "blank": 0, "anonymous": summary["sinks"][0]["anonymous"], "retries": 0,
    }]
    assert summary["dead_letters"] == {"not_json": 1} and summary["level"] == "info" and summary["time"].endswith("Z")
    assert any(r["level"] == "error" and "missing.json: no such file" in r["message"] for r in records)


# -- 5. audit verify of something that holds no audit records ------------------------------------------------------
def test_audit_verify_of_an_access_log_says_it_holds_no_audit_records(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = tmp_path / "pub.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    log = tmp_path / "access-log.jsonl"
    gen.write_records(log, range(4))
    result = ship("audit", "verify", "--public-key", str(pem), str(log))
    err = result.stderr.decode()
    assert result.returncode == 2, (result.stdout, err)
    assert len(err.splitlines()) == 1 and "holds no Kong audit records" in err and str(log) in err
    assert b"unsigned" not in result.stdout
    # An empty file (truncated, or the wrong one) neither: it said "0 records: 0 verified, 0 invalid", exit 0.
    empty = tmp_path / "audit.json"
    empty.write_bytes(b" \n")
    result = ship("audit", "verify", "--public-key", str(pem), str(empty))
    assert result.returncode == 2 and result.stderr.decode() == f"kong-ship: error: {empty}: is empty: expected " \
        "what /audit/requests or /audit/objects answer\n", result.stderr
    answer = tmp_path / "none.json"
    answer.write_bytes(b'{"data": [], "next": null}')  # Kong had none: checked, and nothing is wrong
    result = ship("audit", "verify", "--public-key", str(pem), str(answer))
    assert result.returncode == 0 and result.stdout.startswith(b"0 records"), (result.stdout, result.stderr)


# -- 6. status: rotated files, compactly ----------------------------------------------------------------------------
def test_status_folds_fully_shipped_rotations_into_one_line_and_says_which_are_not_done(tmp_path):
    log, state = tmp_path / "kong.json", tmp_path / "state"
    seq = 0
    for rotation in range(4):
        gen.write_records(log, range(seq, seq + 5))
        seq += 5
        assert ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(state)).returncode == 0
        if rotation == 3:
            gen.write_records(log, range(seq, seq + 2))  # written after the last backfill: not shipped
        for n in range(rotation, 0, -1):
            os.rename(f"{log}.{n}", f"{log}.{n + 1}")
        os.rename(log, f"{log}.1")
    gen.write_records(log, range(1000, 1001))
    text = ship("status", "--state-dir", str(state)).stdout.decode()
    lines = text.splitlines()
    assert "stdout: 3 rotated file(s) fully shipped" in lines, text
    assert [line for line in lines if "(rotated" in line] == [
        next(line for line in lines if f"{log} (rotated; now kong.json.1; not done)" in line)
    ], text


# -- 7. the nits ---------------------------------------------------------------------------------------------------
def test_a_short_run_does_not_count_dead_letters_in_the_last_0_s(tmp_path):
    log = tmp_path / "kong.json"
    log.write_bytes(b"not json\n")
    err = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "s")).stderr.decode()
    assert "dead letters: 1 not_json" in err and "in the last 0 s" not in err, err


def test_progress_bar_and_summary_fit_a_50_column_terminal(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    log = tmp_path / "kong.json"
    gen.write_records(log, range(300))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
    env = ship_env()
    env.pop("COLUMNS", None)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "stdout", "--state-dir",
             str(tmp_path / "s")],
            stdout=subprocess.DEVNULL, stderr=slave, env=env,
        )
        os.close(slave)
        output = read_terminal(master)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    out = output.decode().replace("\r\n", "\n").replace("\x1b[K", "")
    bars = [part for part in out.replace("\n", "\r").split("\r") if "%" in part and "MB" in part]
    assert bars and "ETA 0:00" in bars[-1] and "100%" in bars[-1], bars[-1:]
    assert all(len(part) < 50 for part in bars), max(bars, key=len)
    table = out.split("\r")[-1].splitlines()
    assert table and all(len(line) < 50 for line in table), table
    assert summary_rows("\n".join(table))["stdout"]["shipped"] == 300


@pytest.mark.parametrize("command", ["parse", "backfill"])
def test_an_empty_jwt_from_is_a_usage_error(tmp_path, command):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(2))
    more = ["--sink", "stdout", "--state-dir", str(tmp_path / "s")] if command == "backfill" else []
    result = ship(command, str(log), "--jwt-from", "", *more)
    err = result.stderr.decode()
    assert result.returncode == 2 and len(err.splitlines()) == 1 and "--jwt-from ''" in err, err


def test_parse_help_does_not_mention_a_dead_letter_file_it_never_writes():
    text = " ".join(ship("parse", "--help").stdout.decode().split())
    assert "dead-letter" not in text.replace("when shipping: in the dead-letter file", "")


def test_units_tolerate_a_missing_log_folder():
    from pathlib import Path

    for unit in (Path(__file__).resolve().parents[1] / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith(("ReadOnlyPaths=", "ReadWritePaths=")) and "/var/log" in line:
                assert all(p.startswith("-") for p in line.split("=", 1)[1].split() if "/var/log" in p), (unit, line)


def test_log_format_json_holds_for_errors_found_before_the_run_starts(tmp_path):
    import orjson

    nothing = ship("backfill", str(tmp_path / "nope-*.json"), "--sink", "stdout", "--log-format", "json")
    usage = ship("backfill", str(tmp_path), "--sink", "nowhere", "--log-format=json")
    for result in (nothing, usage):
        assert result.returncode == 2
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and orjson.loads(lines[0])["level"] == "error", lines
    assert "no file matches" in orjson.loads(nothing.stderr)["message"]
    assert "--sink" in orjson.loads(usage.stderr)["message"]


def test_log_format_json_holds_for_check_config(tmp_path):
    import orjson

    log = tmp_path / "kong.json"
    gen.write_records(log, range(3))
    result = ship("check-config", str(log), "--sink", "stdout", "--log-format", "json")
    assert result.returncode == 0, result.stderr.decode()
    messages = [orjson.loads(line)["message"] for line in result.stderr.decode().splitlines()]
    assert messages[-1] == "configuration OK" and any(m.startswith("inputs: ") for m in messages)


class _Slow:
    """A transformer whose worker takes a while over its chunk: the source has let go of the file by then."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, file_id, data, offset, end):
        if offset == 0:
            time.sleep(0.5)
        return self.transform(file_id, data, offset, end)


def test_a_file_let_go_while_its_lines_are_in_the_workers_is_not_forgotten_under_them(tmp_path):
    """The checkpoint save forgot a file the source had closed once everything numbered was acknowledged; with
    workers, lines were numbered only when their outcomes came back, so a save in between dropped the file and
    the reader died (KeyError) with its lines undelivered. (Seen as a rare `fatal: thread read-segment died`.)"""
    import threading

    from shipper.pipeline import Pipeline
    from shipper.settings import Settings
    from shipper.sinks import sink_class
    from shipper.workers import WorkerPool

    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    (tmp_path / "state").mkdir()
    sink = sink_class("stdout").from_options({}, None)
    settings = Settings(paths=[str(log)], sinks=["stdout"], state_dir=str(tmp_path / "state"), flush_interval=0.01,
                        checkpoint_interval=0.01)
    pipeline = Pipeline(settings, [sink], follow=False)
    lane = pipeline.lanes[0]
    lane.pool = WorkerPool(_Slow(lane.transform), 2)
    ended: list[object] = []

    def run() -> None:  # a thread of its own: no signal handlers, and a hang shows as one
        try:
            ended.append(pipeline.run())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            ended.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(30)
    assert ended, "the run never ended"
    assert not isinstance(ended[0], BaseException), ended[0]
    assert ended[0].lanes[0].sent == 20


def test_workers_of_a_parent_killed_with_sigkill_end_on_their_own(tmp_path):
    """Ignoring SIGINT/SIGTERM must not leave orphans: a worker whose parent is gone (kill -9, OOM killer) exits."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(6000))
    with FakeSegment() as fake:
        proc = subprocess.Popen(
            _backfill(fake, tmp_path, log, "--max-rate", "1000"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True,
        )
        try:
            assert wait_until(lambda: fake.message_count >= 500, timeout=30)
            children = f"/proc/{proc.pid}/task/{proc.pid}/children"
            with open(children) as handle:
                workers = [int(pid) for pid in handle.read().split()]
            assert len(workers) == 2
            proc.kill()
            proc.wait(10)

            def gone() -> bool:
                return not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in workers)

            assert wait_until(gone, timeout=10), "orphaned workers are still running"
        finally:
            if proc.poll() is None:
                proc.kill()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
