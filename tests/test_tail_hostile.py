"""`kong-ship tail` attacked as a long-running service: a real process against the strict fake Segment, files
written by a concurrent O_APPEND writer (as Kong's file-log writes), rotations of every kind, kill -9 of the
process group, vendor outages and odd bytes. Every record carries a unique seq; each test checks the set that
arrived. SIGSTOP/SIGCONT freezes the shipper so that "two rotations before it looks again" happen for sure, not
by the luck of timing."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import signal
import time


import gen
from conftest import wait_until
from tailrun import arrived, at_least_once_same_ids, counts, exactly_once, rename_rotate, size


# -- rotation while writing fast --------------------------------------------------------------------------------
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
