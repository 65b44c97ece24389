"""The command line as a user meets it: exit codes, one-line errors, credentials, parse, stdout."""

from __future__ import annotations

import gzip
import os
import pathlib
import subprocess
import sys

import orjson
import pytest

import gen
from conftest import ship, ship_env, summary_rows

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_missing_write_key_exits_2_naming_the_variable(tmp_path):
    result = ship("tail", str(tmp_path / "x.json"), "--sink", "segment", "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert "SEGMENT_WRITE_KEY" in one_line(result.stderr)


def test_empty_key_file_exits_2(tmp_path):
    key = tmp_path / "key"
    key.write_text("\n")
    result = ship("backfill", str(SAMPLES / "kong-3x.jsonl"), "--sink", "segment",
                  "--segment-write-key-file", str(key), "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert "is empty" in one_line(result.stderr)


def test_unknown_flag_and_bad_values_exit_2_with_one_line(tmp_path):
    for args in (
        ["tail", "x", "--sink", "stdout", "--no-such-flag"],
        ["tail", "x", "--sink", "nowhere"],
        ["tail", "x"],
        ["tail", "x", "--sink", "stdout", "--batch-size", "zero"],
        ["tail", "x", "--sink", "stdout", "--nginx-field", "nonsense"],
        ["tail", "x", "--sink", "stdout", "--event-name-template", "{nope}"],
        ["backfill", str(tmp_path / "nothing-*.json"), "--sink", "stdout"],
    ):
        result = ship(*args, "--state-dir", str(tmp_path)) if args[0] != "backfill" else ship(*args)
        assert result.returncode == 2, (args, result.stderr)
        line = one_line(result.stderr)
        assert line.startswith("kong-ship: error:"), line


def test_state_dir_that_cannot_be_created_exits_2(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    result = ship("backfill", str(SAMPLES / "kong-3x.jsonl"), "--sink", "stdout", "--state-dir", str(blocker / "s"))
    assert result.returncode == 2
    assert "state directory" in one_line(result.stderr)


def test_state_dir_from_environment(tmp_path):
    env = ship_env(KONG_SHIP_STATE_DIR=str(tmp_path / "from-env"))
    result = ship("backfill", str(SAMPLES / "kong-3x.jsonl"), "--sink", "stdout", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-env" / "checkpoints-stdout.json").exists()


def test_systemd_state_directory_is_the_default(tmp_path):
    env = ship_env(STATE_DIRECTORY=str(tmp_path / "systemd-state"))
    result = ship("backfill", str(SAMPLES / "kong-2x.jsonl"), "--sink", "stdout", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "systemd-state" / "checkpoints-stdout.json").exists()


def test_parse_prints_normalized_transactions_and_reports_bad_lines(tmp_path):
    log = tmp_path / "mixed.json"
    log.write_bytes((SAMPLES / "kong-3x.jsonl").read_bytes() + b"not json\n" + (SAMPLES / "nginx-json.jsonl").read_bytes())
    result = ship("parse", str(log))
    assert result.returncode == 0
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [r["source_format"] for r in records] == ["kong"] * 4 + ["nginx"] * 2
    assert all("raw" not in r for r in records)
    assert "not_json" in result.stderr.decode() and f"{log}:" in result.stderr.decode()
    assert not (tmp_path / "state").exists()


def test_stdout_sink_prints_vendor_ready_events_once(tmp_path):
    args = ["backfill", str(SAMPLES / "*.jsonl"), "--sink", "stdout", "--state-dir", str(tmp_path)]
    first = ship(*args)
    assert first.returncode == 0, first.stderr
    events = [orjson.loads(line) for line in first.stdout.splitlines()]
    assert len(events) == 12 and len({e["messageId"] for e in events}) == 12
    assert all(e["type"] == "track" and e["event"].startswith("API Request: ") for e in events)
    text = first.stdout.decode()
    for secret in ("k-a53b4250568c912dded197d411c78edf", "session=", "sid=", "Bearer "):
        assert secret not in text
    assert summary_rows(first.stderr)["stdout"]["shipped"] == 12
    second = ship(*args)
    assert second.returncode == 0 and second.stdout == b""  # same checkpoints: nothing new


def test_backfill_reads_gzip(tmp_path):
    packed = tmp_path / "kong.json.1.gz"
    packed.write_bytes(gzip.compress((SAMPLES / "kong-3x.jsonl").read_bytes()))
    result = ship("backfill", str(packed), "--sink", "stdout", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4


def test_dead_letter_file_has_reason_file_and_offset(tmp_path):
    log = tmp_path / "bad.json"
    good = (SAMPLES / "kong-3x.jsonl").read_bytes().splitlines()[0]
    log.write_bytes(good + b"\n[1,2]\n" + b"x" * 5000 + b"\n")
    dead = tmp_path / "dead.jsonl"
    result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "s"),
                  "--dead-letter", str(dead), "--max-line-bytes", "2900")
    assert result.returncode == 0, result.stderr
    entries = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert [(e["reason"], e["offset"]) for e in entries] == [("not_object", len(good) + 1), ("too_long", len(good) + 7)]
    assert all(e["file"] == str(log) for e in entries)
    assert entries[1]["truncated"] is True and entries[1]["line"] == "x" * 4096
    assert len(result.stdout.splitlines()) == 1
    assert "dead letters: 1 not_object, 1 too_long" in result.stderr.decode()


def test_version_and_help():
    assert ship("--version").stdout.decode().startswith("kong-ship, version")
    help_text = ship("tail", "--help").stdout.decode()
    for flag in ("--sink", "--endpoint", "--state-dir", "--dead-letter", "--batch-size", "--flush-interval",
                 "--queue-size", "--shutdown-timeout", "--format", "--start-at", "--jwt-from", "--jwt-claim",
                 "--mask-header", "--mask-query", "--max-line-bytes", "--segment-write-key-file",
                 "--event-name-template", "--strip-trailing-slash"):
        assert flag in help_text, flag


def test_worker_processes_give_the_same_events_in_the_same_order(tmp_path):
    import gen

    log = tmp_path / "mixed.json"
    with open(log, "wb") as handle:
        for seq in range(3000):
            handle.write(gen.kong_line(gen.kong_record(seq, request_id=seq % 2 == 0, jwt_sub=f"u{seq % 7}")))
            if seq % 500 == 0:
                handle.write(b"not json\n" + b"y" * 5000 + b"\n")
    outputs = {}
    for workers in ("0", "2"):
        result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / workers),
                      "--workers", workers, "--max-line-bytes", "4096", "--concurrency", "1",
                      "--dead-letter", str(tmp_path / f"dead-{workers}.jsonl"))
        assert result.returncode == 0, result.stderr
        outputs[workers] = result.stdout
        dead = [orjson.loads(line)["offset"] for line in (tmp_path / f"dead-{workers}.jsonl").read_bytes().splitlines()]
        assert len(dead) == 12
        checkpoint = orjson.loads((tmp_path / workers / "checkpoints-stdout.json").read_bytes())
        assert [entry["offset"] for entry in checkpoint["files"].values()] == [log.stat().st_size]
    assert outputs["0"] == outputs["2"] and len(outputs["0"].splitlines()) == 3000
    bad = ship("backfill", str(log), "--sink", "stdout", "--workers", "many", "--state-dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--workers" in one_line(bad.stderr)


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("backfill", "--help"), ("init", "--print", "config")])
def test_a_broken_config_file_does_not_stop_version_help_or_init(tmp_path, args):
    """Vector, Fluent Bit and Filebeat answer --version and --help whatever their configuration holds; so do we,
    and `init --print config` prints a good file beside a broken one (a warning line at most)."""
    broken = tmp_path / "kong-ship.toml"
    broken.write_text("[delivery\n")
    result = ship(*args, env=ship_env(KONG_SHIP_CONFIG=str(broken)))
    assert result.returncode == 0 and result.stdout, result.stderr.decode()
    assert len(result.stderr.decode().splitlines()) <= 1


@pytest.mark.parametrize("progress", [[], ["--no-progress"]])
def test_a_backfill_with_standard_error_closed_ships_and_exits_0(tmp_path, progress):
    """`2>&-` (some cron lines, some daemons): Python's sys.stderr is None and descriptor 2 free for the next
    file opened. kong-ship holds 0-2 open on /dev/null first; before, it died at its first message, silently."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    with open(log, "ab") as handle:
        handle.write(b"not json\n")  # a dead letter: a file opened, and a warning to write
    result = subprocess.run([sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "stdout",
                             "--state-dir", str(tmp_path / "s"), *progress], stdout=subprocess.PIPE,
                            env=ship_env(), timeout=60, preexec_fn=lambda: os.close(2))  # fmt: skip
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 5
    letters = (tmp_path / "s" / "dead-letter.jsonl").read_bytes().splitlines()
    assert len(letters) == 1 and b"not_json" in letters[0]  # whole: no message landed in it


@pytest.mark.parametrize("args", [("--help",), ("--version",)])
def test_help_and_version_into_a_full_disk_are_one_line_and_exit_1(args):
    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-m", "shipper", *args], stdout=full, stderr=subprocess.PIPE,
                                env=ship_env(), timeout=60)  # fmt: skip
    (line,) = result.stderr.decode().splitlines()
    assert result.returncode == 1 and "No space left on device" in line, line
