"""What the block tests share (tests/test_block_workers.py, test_gz_blocks.py): a `kong-ship backfill` to the fake
Segment with a block size of the test's choosing, the count of each record's arrivals, the checkpoints, and a
kill -9 in the middle of a run followed by a restart."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import gen
from conftest import FAST, ship, ship_env, wait_until
from fakes.segment import FakeSegment

MAX_LINE = 4096


def env(block: int) -> dict[str, str]:
    return ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_BLOCK_BYTES=str(block))


def args(fake: FakeSegment, tmp_path, state: str, *more: str) -> list[str]:
    return ["--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / state), *FAST, *more]


def counts(fake: FakeSegment) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in list(fake.messages))


SLOW = ["--queue-size", "300", "--batch-size", "100", "--concurrency", "1"]


def positions(state) -> dict[str, tuple[int, str]]:
    files = json.loads((state / "checkpoints-segment.json").read_text())["files"]
    return {entry["path"]: (entry["offset"], entry["tail"]) for entry in files.values()}


def checkpointed(state) -> int:
    """The checkpointed offset of the one file (0 while none is saved; not the file being written)."""
    try:
        files = json.loads((state / "checkpoints-segment.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(entry["offset"] for entry in files.values())


def kill_9_mid_run_then_restart(tmp_path, path, count: int) -> tuple[collections.Counter, collections.Counter, int]:
    """A backfill of `path` (`count` records) with 2 workers and blocks of 16 KiB to a slow fake Segment, killed
    with -9 (its whole process group) once 600 records arrived and a checkpoint was saved, then run again to its
    end: (each record's arrivals before the kill, in all, and the checkpoint seen before the kill)."""
    with FakeSegment() as fake:
        fake.script(["slow:0.05"] * 1000)
        argv = [sys.executable, "-m", "shipper", "backfill", str(path),
                *args(fake, tmp_path, "state", "--workers", "2", *SLOW)]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env(16_384),
                                start_new_session=True)  # fmt: skip
        try:
            fake.wait_for(lambda: len(fake.messages) >= 600, timeout=60)
            saved = wait_until(lambda: checkpointed(tmp_path / "state"), timeout=30)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        time.sleep(0.5)  # a request the fake was still answering (slowly) when the shipper died counts too
        first = counts(fake)
        assert 600 <= len(first) < count
        fake.clear_script()
        result = ship(*argv[3:], env=env(16_384))
        assert result.returncode == 0, result.stderr
        return first, counts(fake), saved
