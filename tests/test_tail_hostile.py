"""`kong-ship tail` attacked as a long-running service: a real process against the strict fake Segment, files
written by a concurrent O_APPEND writer (as Kong's file-log writes), rotations of every kind, kill -9 of the
process group, vendor outages and odd bytes. Every record carries a unique seq; each test checks the set that
arrived. SIGSTOP/SIGCONT freezes the shipper so that "two rotations before it looks again" happen for sure, not
by the luck of timing."""

from __future__ import annotations

import collections
import gzip
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest

import gen
from conftest import FAST_FOLLOW, ship_env, summary_rows, wait_until
from fakes.segment import FakeSegment

ENV = ship_env(SEGMENT_WRITE_KEY="test-key")


@pytest.fixture
def segment():
    with FakeSegment() as fake:
        yield fake


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


@pytest.fixture
def tails():
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


# -- rotation while writing fast --------------------------------------------------------------------------------
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


def test_two_rename_rotations_before_the_shipper_looks_again(segment, tmp_path, tails):
    """The shipper is frozen (SIGSTOP) while the log is rotated twice under a concurrent writer, so the middle
    file exists only as kong.json.1 when it looks again; with the glob, every record arrives once."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(100))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 100)
    writer = gen.Writer(log, range(100, 1600), rate=3000)
    writer.start()
    for _ in range(3):
        wait_until(lambda: size(log) > 50_000, timeout=10)
        tail.freeze()
        if os.path.exists(tmp_path / "kong.json.1"):
            rename_rotate(tmp_path / "kong.json.1", writer, tmp_path / f"kong.json.2.{time.monotonic_ns()}")
        rename_rotate(log, writer, tmp_path / "kong.json.1")
        wait_until(lambda: size(log) > 20_000, timeout=10)
        rename_rotate(tmp_path / "kong.json.1", writer, tmp_path / f"kong.json.2.{time.monotonic_ns()}")
        rename_rotate(log, writer, tmp_path / "kong.json.1")
        time.sleep(0.05)
        tail.thaw()
    assert writer.done.wait(30)
    arrived(segment, 1600)
    err = tail.stop()
    exactly_once(segment, range(1600))
    assert "rotation" in err


def test_a_rotated_file_compressed_while_still_being_read(segment, tmp_path, tails):
    """delaycompress off: the rotated file is gzipped (and the plain one deleted) while kong-ship is in the middle
    of it, held back by a slow vendor; the .gz, matched by the glob, is not read again, the rest of the plain
    file is read from the open descriptor, the new file from its start."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3000))
    segment.script(["slow:0.2"] * 3)
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--batch-size", "100", "--queue-size", "200")
    segment.wait_for(lambda: segment.request_count >= 1, timeout=15)
    tail.freeze()
    rotated = tmp_path / "kong.json.1"
    os.rename(log, rotated)
    with open(rotated, "rb") as src, gzip.open(tmp_path / "kong.json.1.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(rotated)
    gen.write_records(log, range(3000, 3200))
    tail.thaw()
    arrived(segment, 3200, timeout=30)
    gen.write_records(log, range(3200, 3210))
    arrived(segment, 3210)
    tail.stop()
    exactly_once(segment, range(3210))


def test_copytruncate_with_the_writer_going_on_during_the_copy(segment, tmp_path, tails):
    """copytruncate as logrotate does it, the writer not paused during the copy (only the bytes written between
    the end of the copy and the truncate are logrotate's own loss: here the copy is topped up to the file's size
    just before the truncate, so nothing is lost by construction and everything must arrive once)."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(50))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 50)
    writer = gen.Writer(log, range(50, 1250), rate=3000)
    writer.start()
    for n in range(3):
        wait_until(lambda: size(log) > 100_000, timeout=10)
        copy = tmp_path / f"kong.json.{n}"
        shutil.copyfile(log, copy)  # the writer goes on meanwhile
        with writer.pause:
            with open(log, "rb") as src, open(copy, "ab") as dst:
                src.seek(os.path.getsize(copy))
                shutil.copyfileobj(src, dst)
            os.truncate(log, 0)
    assert writer.done.wait(30)
    wait_until(lambda: len(counts(segment)) >= 1250, timeout=30)
    tail.stop()
    exactly_once(segment, range(1250))


def test_copytruncate_then_compress_while_frozen_in_the_middle_of_the_file(segment, tmp_path, tails):
    """logrotate copytruncate + compress (no delaycompress) while kong-ship is frozen half-way through a backlog:
    the unread rest of the old content exists only inside kong.json.1.gz; it continues from where the truncated
    file had been read, the truncated file is read from its start."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3000))
    segment.script(["slow:0.3"] * 2)
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--batch-size", "100", "--queue-size", "200")
    segment.wait_for(lambda: segment.request_count >= 1, timeout=15)
    tail.freeze()
    copy = tmp_path / "kong.json.1"
    shutil.copyfile(log, copy)
    os.truncate(log, 0)
    gen.write_records(log, range(3000, 3100))
    with open(copy, "rb") as src, gzip.open(f"{copy}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(copy)
    tail.thaw()
    arrived(segment, 3100)
    err = tail.stop()
    exactly_once(segment, range(3100))
    assert "was truncated" in err


def test_a_file_truncated_and_rewritten_longer_while_the_shipper_is_frozen(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(100))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 100)
    tail.freeze()
    with open(log, "r+b") as handle:
        handle.truncate(0)
    gen.write_records(log, range(100, 400))  # longer than what was read: the size alone does not tell
    tail.thaw()
    arrived(segment, 400)
    tail.stop()
    exactly_once(segment, range(400))


def test_symlink_switched_to_the_rotated_file_and_back_to_a_new_one(segment, tmp_path, tails):
    """kong.json is a symlink; rotation points it at kong.json.1 (the old target renamed), then at a new file."""
    first = tmp_path / "a.log"
    gen.write_records(first, range(100))
    link = tmp_path / "kong.json"
    link.symlink_to(first)
    tail = tails(tmp_path, segment, link)
    arrived(segment, 100)
    os.rename(first, tmp_path / "kong.json.1")
    tmp_link = tmp_path / "next"
    tmp_link.symlink_to(tmp_path / "kong.json.1")
    os.replace(tmp_link, link)  # kong.json -> kong.json.1: the same file under another name
    gen.write_records(tmp_path / "kong.json.1", range(100, 150))
    arrived(segment, 150)
    second = tmp_path / "b.log"
    gen.write_records(second, range(150, 200))
    tmp_link.symlink_to(second)
    os.replace(tmp_link, link)
    gen.write_records(tmp_path / "kong.json.1", range(200, 210))  # a late write to the old target
    arrived(segment, 210)
    tail.stop()
    exactly_once(segment, range(210))


def test_deleted_and_recreated_at_once_many_times(segment, tmp_path, tails):
    """Deleted and created again under the same name between two looks, each time with new records (the inode
    may be reused): every record once."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    tail = tails(tmp_path, segment, log, "--rotate-wait", "0")
    arrived(segment, 20)
    for n in range(1, 6):
        tail.freeze()
        os.unlink(log)
        gen.write_records(log, range(n * 20, n * 20 + 20))
        tail.thaw()
        arrived(segment, n * 20 + 20)
    tail.stop()
    exactly_once(segment, range(120))


# -- crashes ------------------------------------------------------------------------------------------------------
def test_kill_9_of_the_group_at_random_moments_during_rotations_then_restart(segment, tmp_path, tails):
    """A writer goes on; logrotate renames (and sometimes compresses) the log; the whole process group is killed
    at a random moment each round and started again. Nothing is lost, a resent record keeps its messageId, and
    the last run ends on SIGTERM with exit 0 and a checkpoint that a further run finds nothing to add to."""
    rng = random.Random(20261202)
    log = tmp_path / "kong.json"
    total = 1800
    writer = gen.Writer(log, range(total), rate=1500)
    writer.start()
    segment.script([f"slow:{rng.uniform(0.02, 0.15):.2f}" for _ in range(30)])
    for n in range(3):
        tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--batch-size", "50")
        before = segment.message_count
        segment.wait_for(lambda: segment.message_count > before, timeout=20)
        time.sleep(rng.uniform(0.0, 0.2))
        rename_rotate(log, writer, tmp_path / f"kong.json.{n}")
        if n % 2:
            time.sleep(rng.uniform(0.0, 0.1))
            rotated = tmp_path / f"kong.json.{n - 1}"
            with open(rotated, "rb") as src, gzip.open(f"{rotated}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.unlink(rotated)
        time.sleep(rng.uniform(0.0, 0.3))
        tail.kill9()
    assert writer.done.wait(30)
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    wait_until(lambda: len(counts(segment)) >= total, timeout=30)
    tail.stop()
    got = at_least_once_same_ids(segment, range(total))
    delivered = segment.message_count
    again = tails(tmp_path, segment, tmp_path / "kong.json*")
    gen.write_records(log, [total])
    arrived(segment, total + 1)
    again.stop()
    assert segment.message_count == delivered + 1  # the checkpoint SIGTERM saved covers everything
    assert sum(n - 1 for n in got.values()) < total


def test_kill_9_right_after_a_copytruncate_then_restart(segment, tmp_path, tails):
    """The copy made and the original truncated and written to while a slow vendor holds the first batches;
    killed, started again: the copy continues the old position, the truncated file is read from its start."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(1000))
    segment.script(["slow:0.3"] * 3)
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--batch-size", "100", "--queue-size", "100")
    segment.wait_for(lambda: segment.request_count >= 1, timeout=15)
    tail.freeze()
    shutil.copyfile(log, tmp_path / "kong.json.1")
    os.truncate(log, 0)
    gen.write_records(log, range(1000, 1100))
    tail.thaw()
    time.sleep(0.2)  # a random moment after it noticed
    tail.kill9()
    gen.write_records(log, range(1100, 1200))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    wait_until(lambda: len(counts(segment)) >= 1200, timeout=20)
    tail.stop()
    at_least_once_same_ids(segment, range(1200))


# -- outages --------------------------------------------------------------------------------------------------------
def test_vendor_refusing_connections_during_rotations_then_back(segment, tmp_path, tails):
    """Connection refused while the log is rotated twice and the rotated files are let go (rotate-wait) with
    their lines still unacknowledged; the vendor comes back: every record once, and the checkpoint holds the
    let-go files too: a restart whose glob now matches them resends nothing."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(100))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 100)
    segment.stop()  # connection refused from now on
    writer = gen.Writer(log, range(100, 700), rate=3000)
    writer.start()
    for n in range(2):
        wait_until(lambda: size(log) > 200_000, timeout=10)
        rename_rotate(log, writer, tmp_path / f"kong.json.{n}")
    assert writer.done.wait(30)
    # --rotate-wait: the old files are let go while nothing can be delivered
    assert wait_until(lambda: tail.stderr().count("done with the old") >= 2, timeout=10)
    segment.start()
    arrived(segment, 700, timeout=30)
    tail.stop()
    exactly_once(segment, range(700))
    delivered = segment.message_count
    again = tails(tmp_path, segment, tmp_path / "kong.json*")
    gen.write_records(log, [700])
    arrived(segment, 701)
    again.stop()
    assert segment.message_count == delivered + 1


def test_sighup_during_rotations(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 10)
    writer = gen.Writer(log, range(10, 1010), rate=3000)
    writer.start()
    for n in range(3):
        wait_until(lambda: size(log) > 100_000, timeout=10)
        rename_rotate(log, writer, tmp_path / f"kong.json.{n}")
        tail.proc.send_signal(signal.SIGHUP)
    assert writer.done.wait(30)
    arrived(segment, 1010)
    tail.stop()
    exactly_once(segment, range(1010))


def test_429_with_retry_after_during_rotations(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--batch-size", "100")
    arrived(segment, 10)
    segment.script([(429, {"Retry-After": "1"})] * 2 + [(429, {"Retry-After": "0"})])
    writer = gen.Writer(log, range(10, 810), rate=3000)
    writer.start()
    for n in range(2):
        wait_until(lambda: size(log) > 150_000, timeout=10)
        rename_rotate(log, writer, tmp_path / f"kong.json.{n}")
    assert writer.done.wait(30)
    arrived(segment, 810, timeout=30)
    tail.stop()
    exactly_once(segment, range(810))
    assert segment.script_remaining == 0


# -- odd input while following ------------------------------------------------------------------------------------
def line_of(seq: int) -> bytes:
    return gen.kong_line(gen.kong_record(seq))


def test_a_partial_last_line_completed_long_after_its_file_was_rotated(segment, tmp_path, tails):
    """Half a line, then rotation; the line is completed in the rotated file a second later (the writer took
    that long): under the glob the rotated file is still followed, and the line ships once."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(50))
    half = line_of(50)
    with open(log, "ab") as handle:
        handle.write(half[:700])
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 50)
    os.rename(log, tmp_path / "kong.json.1")
    gen.write_records(log, range(51, 60))
    arrived(segment, 59)
    time.sleep(1.0)  # "much later": past --rotate-wait, the writer long gone to the new file
    with open(tmp_path / "kong.json.1", "ab") as handle:
        handle.write(half[700:])
    arrived(segment, 60)
    tail.stop()
    exactly_once(segment, range(60))


def test_a_partial_last_line_across_a_restart(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    half = line_of(20)
    with open(log, "ab") as handle:
        handle.write(half[:-300])
    tail = tails(tmp_path, segment, log)
    arrived(segment, 20)
    err = tail.stop()
    assert "Traceback" not in err
    with open(log, "ab") as handle:
        handle.write(half[-300:])
    gen.write_records(log, range(21, 30))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 30)
    tail.stop()
    exactly_once(segment, range(30))


def test_a_line_over_max_line_bytes_appended_slowly_across_a_rotation(segment, tmp_path, tails):
    """A 40 KB line arrives in 2 KB pieces; half-way the file is rotated and the rest lands in the rotated file.
    It is set aside once (dead letter), every other record arrives once."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--max-line-bytes", "8192")
    arrived(segment, 10)
    big = gen.kong_line(gen.kong_record(10, **{}))[:-2] + b',"pad":"' + b"x" * 40_000 + b'"}\n'
    pieces = [big[i : i + 2048] for i in range(0, len(big), 2048)]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    for n, piece in enumerate(pieces):
        os.write(fd, piece)
        if n == len(pieces) // 2:
            os.rename(log, tmp_path / "kong.json.1")
            gen.write_records(log, range(11, 20))
        time.sleep(0.01)
    os.close(fd)
    gen.write_records(tmp_path / "kong.json.1", range(20, 25))
    arrived(segment, 24)
    dead = tmp_path / "state" / "dead-letter.jsonl"
    assert wait_until(lambda: dead.exists() and dead.read_bytes().count(b"\n") >= 1, timeout=10)
    err = tail.stop()
    exactly_once(segment, [s for s in range(25) if s != 10])
    assert dead.read_bytes().count(b"\n") == 1, dead.read_bytes()[:500]
    assert summary_rows(err)["segment"]["dead-lettered"] == 1, err[-1500:]


def test_crlf_line_ends_ship_every_record_once(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    with open(log, "wb") as handle:
        handle.write(b"".join(line_of(s)[:-1] + b"\r\n" for s in range(40)))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 40)
    with open(log, "ab") as handle:
        handle.write(b"".join(line_of(s)[:-1] + b"\r\n" for s in range(40, 50)))
    arrived(segment, 50)
    tail.stop()
    exactly_once(segment, range(50))


def test_nuls_of_a_sparse_file_after_copytruncate_with_a_writer_that_keeps_its_offset(segment, tmp_path, tails):
    """A writer without O_APPEND (not Kong, but nginx-like setups exist) writes at its old offset after a
    copytruncate: the file starts with a hole of NULs. The records written after the hole arrive once, the
    copied ones once; no traceback, and the NULs are not taken for a record."""
    log = tmp_path / "kong.json"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
    for seq in range(30):
        os.write(fd, line_of(seq))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 30)
    shutil.copyfile(log, tmp_path / "kong.json.1")
    os.truncate(log, 0)
    os.write(fd, b"\n")  # the first write after the truncate ends the hole (a writer's record separator)
    for seq in range(30, 60):
        os.write(fd, line_of(seq))
    os.close(fd)
    arrived(segment, 60)
    tail.stop()
    exactly_once(segment, range(60))


def test_the_log_replaced_by_a_directory_and_back(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 20)
    os.unlink(log)
    os.mkdir(log)
    assert wait_until(lambda: "is a directory" in tail.stderr(), timeout=10)
    assert tail.proc.poll() is None
    os.rmdir(log)
    gen.write_records(log, range(20, 40))
    arrived(segment, 40)
    err = tail.stop()
    exactly_once(segment, range(40))
    assert err.count("is a directory") == 1


def test_the_log_replaced_by_a_fifo(segment, tmp_path, tails):
    """A named pipe where the log was: said once, never opened (an open would block the reader for good)."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 10)
    os.rename(log, tmp_path / "kong.json.1")
    os.mkfifo(log)
    assert wait_until(lambda: "not a regular file" in tail.stderr(), timeout=10)
    gen.write_records(tmp_path / "kong.json.1", range(10, 20))
    arrived(segment, 20)
    tail.stop()
    exactly_once(segment, range(20))


# -- the state directory's disk full ------------------------------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path):
    """A real 256 KiB tmpfs for the state directory (as test_worker_faults.py mounts one)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(path) -> None:
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_state_disk_full_while_rotating_then_free_again(segment, tmp_path, tiny_fs, tails):
    """Checkpoints cannot be saved while the log is rotated twice (delivery goes on); once space is back the
    checkpoint catches up, SIGTERM exits 0, and a second run resends nothing."""
    log = tmp_path / "kong.json"
    state = tiny_fs / "state"
    gen.write_records(log, range(50))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", state=state)
    arrived(segment, 50)
    assert wait_until(lambda: (state / "checkpoints-segment.json").exists(), timeout=10)
    fill(tiny_fs)
    writer = gen.Writer(log, range(50, 650), rate=3000)
    writer.start()
    for n in range(2):
        wait_until(lambda: size(log) > 150_000, timeout=10)
        rename_rotate(log, writer, tmp_path / f"kong.json.{n}")
    assert writer.done.wait(30)
    arrived(segment, 650)
    assert wait_until(lambda: "No space left" in tail.stderr(), timeout=10)
    os.unlink(tiny_fs / "filler")
    assert wait_until(lambda: "saved again" in tail.stderr(), timeout=10)
    err = tail.stop()
    assert "Traceback" not in err
    exactly_once(segment, range(650))
    delivered = segment.message_count
    again = tails(tmp_path, segment, tmp_path / "kong.json*", state=state)
    gen.write_records(log, [650])
    arrived(segment, 651)
    again.stop()
    assert segment.message_count == delivered + 1


def test_a_long_line_while_the_dead_letter_disk_is_full_is_set_aside_once_space_is_back(segment, tmp_path, tiny_fs, tails):
    """The dead-letter file (in the state directory) cannot be written: nothing after the long line is
    acknowledged meanwhile; once space is back, the long line is set aside once and every record arrives once."""
    log = tmp_path / "kong.json"
    state = tiny_fs / "state"
    gen.write_records(log, range(20))
    tail = tails(tmp_path, segment, log, "--max-line-bytes", "4096", state=state)
    arrived(segment, 20)
    assert wait_until(lambda: (state / "checkpoints-segment.json").exists(), timeout=10)
    fill(tiny_fs)
    with open(log, "ab") as handle:
        handle.write(b'{"x":"' + b"y" * 10_000 + b'"}\n')
    gen.write_records(log, range(20, 40))
    assert wait_until(lambda: "cannot write the dead-letter file" in tail.stderr(), timeout=10)
    os.unlink(tiny_fs / "filler")
    arrived(segment, 40)
    err = tail.stop()
    exactly_once(segment, range(40))
    assert (state / "dead-letter.jsonl").read_bytes().count(b"\n") == 1
    assert summary_rows(err)["segment"]["dead-lettered"] == 1
