"""What the block tests share (tests/test_block_workers.py, test_gz_blocks.py): a `kong-ship backfill` to the fake
Segment with a block size of the test's choosing, and the count of each record's arrivals."""

from __future__ import annotations

import collections

import gen
from conftest import FAST, ship_env
from fakes.segment import FakeSegment

MAX_LINE = 4096


def env(block: int) -> dict[str, str]:
    return ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_BLOCK_BYTES=str(block))


def args(fake: FakeSegment, tmp_path, state: str, *more: str) -> list[str]:
    return ["--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / state), *FAST, *more]


def counts(fake: FakeSegment) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in list(fake.messages))
