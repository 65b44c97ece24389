"""What the tail tests share (tests/test_tail_hostile.py, test_tail_edges.py): a real `kong-ship tail` in its own
process group against the strict fake Segment, and the set of records that arrived."""

from __future__ import annotations

import collections
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import orjson

import gen
from conftest import FAST_FOLLOW, ship_env, wait_until
from fakes.segment import FakeSegment

ENV = ship_env(SEGMENT_WRITE_KEY="test-key")


def counts(fake: FakeSegment) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in list(fake.messages))


def exactly_once(fake: FakeSegment, seqs) -> None:
    got = counts(fake)
    missing = sorted(set(seqs) - set(got))
    doubled = sorted(s for s, n in got.items() if n > 1)
    extra = sorted(set(got) - set(seqs))
    assert not missing and not doubled and not extra, (len(missing), missing[:10], doubled[:10], extra[:10])


def at_least_once_same_ids(fake: FakeSegment, seqs) -> collections.Counter:
    got = counts(fake)
    missing = sorted(set(seqs) - set(got))
    assert not missing and set(got) <= set(seqs), (len(missing), missing[:10])
    ids: dict[int, set[str]] = collections.defaultdict(set)
    for message in list(fake.messages):
        ids[gen.seq_of_segment_message(message)].add(message["messageId"])
    assert all(len(v) == 1 for v in ids.values()), "a resent record changed its messageId"
    return got


class Tail:
    """`python -m shipper tail` in its own process group (as systemd runs it), stderr to a file."""

    def __init__(self, tmp_path, fake: FakeSegment, pattern, *more: str, state=None):
        self.err_path = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
        state = state or tmp_path / "state"
        argv = [sys.executable, "-m", "shipper", "tail", str(pattern), "--sink", "segment", "--endpoint", fake.url,
                "--state-dir", str(state), *FAST_FOLLOW, *more]  # fmt: skip
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=ENV, start_new_session=True)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def freeze(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> str:
        """SIGTERM: exit 0, no traceback; returns stderr."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        err = self.stderr()
        assert "Traceback" not in err, err[-3000:]
        assert code == 0, err[-3000:]
        return err


def tail_starter() -> Iterator[Callable[..., Tail]]:
    """For a test's `tails` fixture: a function that starts a Tail; each still running is killed at the end."""
    started: list[Tail] = []

    def start(*args, **kw) -> Tail:
        tail = Tail(*args, **kw)
        started.append(tail)
        return tail

    yield start
    for tail in started:
        if tail.proc.poll() is None:
            os.killpg(tail.proc.pid, signal.SIGCONT)
            os.killpg(tail.proc.pid, signal.SIGKILL)
            tail.proc.wait(10)


def arrived(fake: FakeSegment, n: int, timeout: float = 20) -> None:
    fake.wait_for(lambda: len(counts(fake)) >= n, timeout=timeout, what=f"{n} distinct records")


SAMPLE = orjson.loads((pathlib.Path(__file__).resolve().parents[1] / "examples" / "kong-3x.jsonl").read_bytes().splitlines()[0])


def fixed_line(seq: int) -> bytes:
    """A record line whose length does not depend on seq (for 5-digit seqs), ending as every Kong line does."""
    record = orjson.loads(orjson.dumps(SAMPLE))
    record["request"]["uri"] = f"/orders/{seq}?seq={seq}"
    record["request"]["url"] = f"https://api.example.com:443/orders/{seq}?seq={seq}"
    record["request"]["querystring"] = {"seq": str(seq)}
    record["started_at"] = 1763800000000 + seq
    record["request"].pop("id", None)
    return orjson.dumps(record) + b"\n"


def size(path) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def rename_rotate(log, writer: gen.Writer, to) -> None:
    """logrotate's `create`: rename; the writer (paused between two of its writes) then opens the new name."""
    assert wait_until(lambda: size(log) > 0, timeout=10)
    with writer.pause:
        os.rename(log, to)
