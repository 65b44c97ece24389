"""Issue 16: backfill workers that take blocks of whole lines (sources/blocks.py, transform.transform_block), as
processes against the fake Segment: every record exactly once whatever the block size (lines straddling block
ends, lines longer than a block, lines over --max-line-bytes, blank, invalid and CRLF lines, a file without a
final newline, several files), the same dead letters and counts as the line path (--workers 0); a kill -9 and a
restart lose nothing and resend only what the first run delivered; a worker killed ends the run with exit 1;
Ctrl-C to the process group ends it promptly."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import gen
from conftest import LogBuilder, reaped, ship, summary_rows
from blockrun import MAX_LINE, SLOW, args, counts, env, kill_9_mid_run_then_restart, positions
from fakes.segment import FakeSegment



def write_mixed(tmp_path) -> tuple[list[str], set[int], set[tuple[str, int, str]]]:
    """Three files: records with a blank, a whitespace-only, an invalid, a CRLF and an oversize line between
    them; one without a final newline (its last record is not shipped); a plain one. Returns the paths, the
    seqs to arrive and the dead letters expected as (file, offset, reason)."""
    dead: set[tuple[str, int, str]] = set()
    arrive: set[int] = set()
    a = tmp_path / "a.json"
    log = LogBuilder()
    add = log.add
    for seq in range(120):
        add(gen.kong_line(gen.kong_record(seq)))
        arrive.add(seq)
        if seq % 17 == 3:
            add(b"\n")
            add(b" \t \n")
        if seq % 23 == 5:
            dead.add((str(a), add(b"this is no json {\n"), "not_json"))
        if seq % 29 == 7:
            dead.add((str(a), add(b'{"pad": "' + b"x" * (3 * MAX_LINE) + b'"}\n'), "too_long"))
        if seq % 13 == 1:
            add(gen.kong_line(gen.kong_record(10_000 + seq)).replace(b"\n", b"\r\n"))
            arrive.add(10_000 + seq)
    a.write_bytes(log.data())
    b = tmp_path / "b.json"
    gen.write_records(b, range(1000, 1060))
    unterminated = gen.kong_line(gen.kong_record(1060)).rstrip(b"\n")
    with open(b, "ab") as handle:
        handle.write(unterminated)
    arrive.update(range(1000, 1060))
    c = tmp_path / "c.json"
    gen.write_records(c, range(2000, 2040))
    arrive.update(range(2000, 2040))
    return [str(a), str(b), str(c)], arrive, dead


def dead_letters(path) -> set[tuple[str, int, str]]:
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return {(e["file"], e["offset"], e["reason"]) for e in entries}


def test_the_line_path_oracle_holds(tmp_path):
    """What the block runs are compared with: the line path itself (--workers 0) on the same files."""
    paths, arrive, dead = write_mixed(tmp_path)
    with FakeSegment() as fake:
        result = ship("backfill", *paths, *args(fake, tmp_path, "s0", "--workers", "0", "--max-line-bytes",
                                                str(MAX_LINE)), env=env(1 << 20))  # fmt: skip
        assert result.returncode == 0, result.stderr
        got = counts(fake)
    assert set(got) == arrive and max(got.values()) == 1
    assert dead_letters(tmp_path / "s0" / "dead-letter.jsonl") == dead


@pytest.mark.parametrize("block", [300, 5000, 70_000, 1 << 20])
def test_every_record_exactly_once_whatever_the_block_size(tmp_path, block):
    paths, arrive, dead = write_mixed(tmp_path)
    with FakeSegment() as fake:
        lines = ship("backfill", *paths, *args(fake, tmp_path, "s0", "--workers", "0", "--max-line-bytes",
                                               str(MAX_LINE)), env=env(block))  # fmt: skip
        assert lines.returncode == 0, lines.stderr
        fake.messages.clear()
        blocks = ship("backfill", *paths, *args(fake, tmp_path, "s2", "--workers", "2", "--max-line-bytes",
                                                str(MAX_LINE)), env=env(block))  # fmt: skip
        assert blocks.returncode == 0, blocks.stderr
        got = counts(fake)
    assert set(got) == arrive and max(got.values()) == 1
    assert dead_letters(tmp_path / "s2" / "dead-letter.jsonl") == dead
    # Counted as the line path counts, and the unterminated last line of b.json is reported, not consumed.
    assert summary_rows(blocks.stderr) == summary_rows(lines.stderr)
    assert b"b.json" in blocks.stderr and b"newline" in blocks.stderr.lower()
    # The same checkpoints: each file's offset (past its last newline) and the hash of the bytes before it.
    assert positions(tmp_path / "s2") == positions(tmp_path / "s0")


def test_an_over_long_line_shorter_than_the_kept_prefix_keeps_only_itself(tmp_path):
    """--max-line-bytes under the 4 KiB a dead letter keeps of a line: the dead letter of a line over the limit
    holds that line alone, from a block as on the line path. (A prefix cut from a block must end at the line's
    end, or it carries the next records' bytes into the dead-letter file.)"""
    log = tmp_path / "a.json"
    builder = LogBuilder()
    builder.add(gen.kong_line(gen.kong_record(0)))
    long_line = b'{"pad": "' + b"x" * 3800 + b'"}'
    builder.add(long_line + b"\n")
    for seq in range(1, 40):
        builder.add(gen.kong_line(gen.kong_record(seq)))
    log.write_bytes(builder.data())
    letters = {}
    with FakeSegment() as fake:
        for state, workers in (("s0", "0"), ("s2", "2")):
            result = ship("backfill", str(log), *args(fake, tmp_path, state, "--workers", workers,
                                                      "--max-line-bytes", "3500"), env=env(1 << 20))  # fmt: skip
            assert result.returncode == 0, result.stderr
            letters[state] = [json.loads(line) for line in (tmp_path / state / "dead-letter.jsonl").read_text().splitlines()]
        assert set(counts(fake)) == set(range(40))
    assert [(e["reason"], e["line"]) for e in letters["s2"]] == [(e["reason"], e["line"]) for e in letters["s0"]]
    [letter] = letters["s2"]
    assert letter["reason"] == "too_long" and letter["line"].count("x") == 3800
    assert "request" not in letter["line"]  # nothing of the record after it


def start(argv: list[str], block: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shipper", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env(block), start_new_session=True)  # fmt: skip


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(p) for p in handle.read().split()]


def test_kill_9_mid_run_then_a_restart_loses_nothing(tmp_path):
    log = tmp_path / "kong.json"
    seqs = range(4000)
    gen.write_records(log, seqs)
    line_ends = list(itertools.accumulate(len(line) for line in log.read_bytes().splitlines(keepends=True)))
    first, got, saved = kill_9_mid_run_then_restart(tmp_path, log, len(seqs))
    assert set(got) == set(seqs)
    doubled = {s for s, n in got.items() if n > 1}
    # Only what the first run delivered past the checkpoint seen before the kill comes again.
    past_checkpoint = {seq for seq, end in zip(seqs, line_ends) if end > saved}
    assert doubled <= set(first) & past_checkpoint
    assert max(got.values()) <= 2


@contextlib.contextmanager
def two_workers_mid_run(tmp_path, delay: float) -> Iterator[tuple[FakeSegment, subprocess.Popen]]:
    """(fake, process) of a backfill of 4,000 records with 2 workers to a fake answering after `delay` s, once
    the fake has 100 messages; the process group is killed at the end if it still runs."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(4000))
    with FakeSegment() as fake:
        fake.script([f"slow:{delay}"] * 1000)
        argv = ["backfill", str(log), *args(fake, tmp_path, "state", "--workers", "2", *SLOW)]
        with reaped(start(argv, 16_384)) as proc:
            fake.wait_for(lambda: len(fake.messages) >= 100, timeout=30)
            yield fake, proc


def test_a_worker_killed_ends_the_run_with_exit_1(tmp_path):
    with two_workers_mid_run(tmp_path, 0.1) as (_, proc):
        workers = children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert b"worker process died" in err


def test_ctrl_c_to_the_process_group_ends_it_promptly(tmp_path):
    with two_workers_mid_run(tmp_path, 0.05) as (fake, proc):
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
        delivered = len(fake.messages)
    assert proc.returncode == 130, err
    assert took < 5, took
    assert delivered < 4000
