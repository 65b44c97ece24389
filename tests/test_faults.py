"""Fault injection: kong-ship attacked the way production attacks a log shipper. Real files, a real `kong-ship`
process, a strict fake Segment on loopback that counts every record it accepts. Every generated record has a
unique sequence number; each test checks the set that arrived: nothing missing, nothing doubled (or, where a
crash made a duplicate unavoidable, the copy carries the same messageId)."""

from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import orjson
import pytest

import gen
from conftest import FAST, FAST_FOLLOW, fill, ship, ship_env, wait_until
from fakes.segment import FakeSegment
from shipper.deadletter import DeadLetter
from shipper.delivery.acks import AckTracker
from shipper.delivery.sender import Aborted, Sender
from shipper.sinks.segment import SegmentSink

ENV = ship_env(SEGMENT_WRITE_KEY="test-key")


def write(path, seqs, **kw) -> None:
    gen.write_records(path, seqs, **kw)


def counts(fake: FakeSegment) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in list(fake.messages))


def assert_exactly_once(fake: FakeSegment, seqs) -> None:
    got = counts(fake)
    missing = sorted(set(seqs) - set(got))
    doubled = sorted(s for s, n in got.items() if n > 1)
    assert not missing and not doubled and set(got) <= set(seqs), (missing[:10], doubled[:10])


def assert_all_arrived_same_ids(fake: FakeSegment, seqs) -> collections.Counter:
    """At-least-once: every record arrived, and every copy of a record has the same messageId."""
    got = counts(fake)
    assert sorted(set(seqs) - set(got))[:10] == [] and set(got) <= set(seqs)
    ids: dict[int, set[str]] = collections.defaultdict(set)
    for message in fake.messages:
        ids[gen.seq_of_segment_message(message)].add(message["messageId"])
    assert all(len(v) == 1 for v in ids.values()), "a resent record changed its messageId"
    return got


def tail_args(fake, tmp_path, *more):
    return ["--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"), *FAST_FOLLOW, *more]


def backfill_args(fake, tmp_path, *more):
    return ["--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"), *FAST, *more]


@pytest.fixture
def segment():
    with FakeSegment() as fake:
        yield fake


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


# -- the vendor misbehaves --------------------------------------------------------------------------------------
def test_long_outage_503_then_refused_then_back_with_a_million_record_backlog_keeps_memory_flat(
    segment, tmp_path, shippers
):
    log = tmp_path / "kong.json"
    # A million records (~1.8 GB) would be slow to write; the backlog that matters for memory is what the
    # reader could pull in, so the file holds a million short records that all parse and encode.
    short = b'{"request":{"method":"GET","uri":"/s?seq=%d","url":"http://h:80/s?seq=%d","headers":{}},"response":{"status":200},"started_at":1763800000000}\n'
    with open(log, "wb") as handle:
        handle.write(b"".join(short % (i, i) for i in range(1_000_000)))
    segment.set_down(True)
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: segment.request_count >= 10, timeout=30)
    time.sleep(1.0)  # the reader has filled the queue and is waiting: the file is the buffer
    peak_down = vm_hwm_kib(proc.proc.pid)
    segment.stop()  # connection refused
    time.sleep(0.5)
    segment.set_down(False)
    segment.start()
    segment.wait_for(lambda: segment.message_count >= 1_000_000, timeout=240)
    peak = vm_hwm_kib(proc.proc.pid)
    code, _, err = proc.stop()
    assert code == 0, err
    seqs = collections.Counter(int(m["properties"]["queryObject"]["seq"]) for m in segment.messages)
    assert len(seqs) == 1_000_000 and max(seqs.values()) == 1
    print(f"peak RSS during outage {peak_down / 1024:.1f} MiB, after catching up {peak / 1024:.1f} MiB")
    assert peak < 100 * 1024, f"peak RSS {peak / 1024:.1f} MiB"


def test_429_storm_honours_retry_after(segment, tmp_path):
    log = tmp_path / "kong.json"
    write(log, range(30))
    segment.script([(429, {"Retry-After": "1"})] * 3)
    started = time.monotonic()
    result = ship("backfill", str(log), *backfill_args(segment, tmp_path, "--concurrency", "1"), env=ENV)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed >= 3.0  # three waits of Retry-After: 1, although --retry-max-delay is 0.2
    assert_exactly_once(segment, range(30))


def test_connection_resets_and_timeouts_mid_request(segment, tmp_path):
    log = tmp_path / "kong.json"
    write(log, range(200))
    # reset: the vendor never saw the batch; hang: the vendor accepted it but the answer came too late, so
    # the resend is a real duplicate at the vendor, which its de-duplication drops by messageId.
    segment.script(["reset", "reset", "hang:2", "reset"])
    result = ship("backfill", str(log), *backfill_args(segment, tmp_path, "--timeout", "0.5", "--batch-size", "50"),
                  env=ENV)
    assert result.returncode == 0, result.stderr
    got = assert_all_arrived_same_ids(segment, range(200))
    assert sum(n - 1 for n in got.values()) <= 50  # at most the one batch whose answer was lost


def test_a_vendor_that_accepts_slowly(segment, tmp_path):
    log = tmp_path / "kong.json"
    write(log, range(300))
    segment.script(["slow:1.5"] * 4)
    result = ship("backfill", str(log), *backfill_args(segment, tmp_path, "--batch-size", "50", "--concurrency", "2"),
                  env=ENV)
    assert result.returncode == 0, result.stderr
    assert_exactly_once(segment, range(300))


# -- crashes ------------------------------------------------------------------------------------------------------
def test_kill_9_at_random_moments_then_a_clean_run(segment, tmp_path, shippers):
    rng = random.Random(20261122)  # deterministic "random" moments
    log = tmp_path / "kong.json"
    seqs = range(3000)
    gen.write_records(log, seqs[:1500], request_id=True)
    gen.write_records(log, seqs[1500:], request_id=False)  # half identified by request.id, half by offset
    segment.script([f"slow:{rng.uniform(0.05, 0.3):.2f}" for _ in range(40)])
    for _ in range(4):
        before = segment.message_count
        proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--batch-size", "100"), env=ENV)
        segment.wait_for(lambda: segment.message_count > before, timeout=20)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill9()
    result = ship("backfill", str(log), *backfill_args(segment, tmp_path), env=ENV)
    assert result.returncode == 0, result.stderr
    got = assert_all_arrived_same_ids(segment, seqs)
    assert sum(n - 1 for n in got.values()) < 3000


# -- rotation under load ------------------------------------------------------------------------------------------


def test_rename_rotations_under_load(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, [0])
    proc = shippers("tail", str(tmp_path / "kong.json"), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 1, timeout=15)  # it follows the file before rotation starts
    writer = gen.Writer(log, range(1, 1500))
    writer.start()
    for n in range(3):
        # Only the live name is followed (the common setup), so a file rotated away before kong-ship ever
        # opened it could not be found: rotations are spaced well beyond the poll interval.
        time.sleep(0.3)
        with writer.pause:  # logrotate: rename, then the writer reopens and creates a new file
            os.rename(log, tmp_path / f"kong.json.{n}")
        gen.write_records(tmp_path / f"kong.json.{n}", [10_000 + n])  # a late write to the old file
    writer.done.wait(30)
    segment.wait_for(lambda: len(segment.messages) >= 1503, timeout=30)
    code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, [*range(1500), 10_000, 10_001, 10_002])


def test_copytruncate_under_load_with_the_copies_matched(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, [0])
    proc = shippers("tail", str(tmp_path / "kong.json*"), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 1, timeout=15)
    writer = gen.Writer(log, range(1, 1200))
    writer.start()
    for n in range(2):
        time.sleep(0.2)
        with writer.pause:  # logrotate copytruncate (with the writer paused, so no line falls in the gap)
            shutil.copy(log, tmp_path / f"kong.json.{n}")
            with open(log, "r+b") as handle:
                handle.truncate(0)
    writer.done.wait(30)
    segment.wait_for(lambda: len(counts(segment)) >= 1200, timeout=30)
    code, _, err = proc.stop()
    assert code == 0, err
    assert_all_arrived_same_ids(segment, range(1200))


def test_file_deleted_while_being_read(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(3000))
    segment.script(["slow:0.3"])  # hold the first batch so the reader is mid-file at the unlink
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--batch-size", "200", "--queue-size", "200"),
                    env=ENV)
    segment.wait_for(lambda: segment.request_count >= 1, timeout=15)
    os.unlink(log)
    segment.wait_for(lambda: len(segment.messages) >= 3000, timeout=30)
    code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, range(3000))


def test_file_replaced_by_one_reusing_the_inode(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(100))
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--rotate-wait", "0"), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 100, timeout=15)
    old_inode = os.stat(log).st_ino
    os.unlink(log)
    time.sleep(0.5)  # kong-ship lets go of the deleted file; its inode is free for reuse
    reused = False
    for attempt in range(50):
        write(log, [100 + attempt])
        if os.stat(log).st_ino == old_inode:
            reused = True
            break
        os.unlink(log)  # not reused this time: its record is lost on purpose, retry
    write(log, range(200, 210))
    expected = ([100 + attempt] if reused else []) + list(range(200, 210))
    segment.wait_for(lambda: len(segment.messages) >= 100 + len(expected), timeout=15)
    code, _, err = proc.stop()
    assert code == 0, err
    got = counts(segment)
    assert all(got[s] == 1 for s in range(100)) and all(got[s] == 1 for s in expected)
    print("inode reused:", reused)


def test_symlinked_log_path_repointed(segment, tmp_path, shippers):
    first, second = tmp_path / "kong-a.json", tmp_path / "kong-b.json"
    write(first, range(50))
    link = tmp_path / "current.json"
    link.symlink_to(first)
    proc = shippers("tail", str(link), *tail_args(segment, tmp_path), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 50, timeout=15)
    write(second, range(50, 80))
    tmp_link = tmp_path / "next.json"
    tmp_link.symlink_to(second)
    os.replace(tmp_link, link)
    write(first, range(80, 90))  # late writes to the old target
    segment.wait_for(lambda: len(segment.messages) >= 90, timeout=15)
    code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, range(90))


def test_hundreds_of_files_appearing_and_disappearing_with_fairness(segment, tmp_path, shippers):
    logs = tmp_path / "logs"
    logs.mkdir()
    busy = logs / "busy.json"
    write(busy, range(100_000, 130_000))  # ~55 MB backlog in one file
    proc = shippers("tail", str(logs / "*.json"), *tail_args(segment, tmp_path, "--rotate-wait", "0.1"), env=ENV)
    expected = set(range(100_000, 130_000))
    for n in range(300):
        path = logs / f"svc-{n}.json"
        write(path, [n])
        expected.add(n)
        if n % 3 == 0 and n:
            (logs / f"svc-{n - 3}.json").unlink()  # appear and disappear (after kong-ship may have read them)
    quiet = logs / "quiet.json"
    write(quiet, [999_999])
    expected.add(999_999)
    # Fairness: the quiet file's record arrives long before the busy file's backlog is through.
    segment.wait_for(lambda: 999_999 in counts(segment), timeout=30)
    assert len(segment.messages) < 30_000
    segment.wait_for(lambda: len(segment.messages) >= 30_000 + 200, timeout=60)
    time.sleep(0.5)
    code, _, err = proc.stop()
    assert code == 0, err
    got = counts(segment)
    assert max(got.values()) == 1
    deleted_unread = expected - set(got)
    # Files deleted before kong-ship could open them are gone with their data (nothing holds them open);
    # every file it saw is shipped whole.
    assert all(s < 300 and s % 3 == 0 for s in deleted_unread), sorted(deleted_unread)[:10]
    assert set(range(100_000, 130_000)) <= set(got)


# -- hostile lines --------------------------------------------------------------------------------------------
def test_hostile_lines_are_dead_lettered_and_nothing_else_is_lost(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    dead = tmp_path / "dead.jsonl"
    good = lambda seq: gen.kong_line(gen.kong_record(seq))  # noqa: E731
    wrong_types = gen.kong_record(7)
    wrong_types["response"] = {"status": "teapot", "headers": "none", "size": [1]}
    wrong_types["latencies"] = "slow"
    wrong_types["request"]["headers"] = ["x"]
    hostile = [
        good(0),
        b'{"request": {"method": "GET", "uri": \n',  # invalid JSON
        good(1),
        b'{"request": {"method": "\xff\xfe"}, "response": \x00}\n',  # invalid UTF-8 and a NUL
        good(2),
        b"\x00\x00\x00\x00\n",
        b"[" * 100_000 + b"]" * 100_000 + b"\n",  # deeply nested
        good(3),
        b'{"request": {"uri": "/big?seq=-1", "headers": {"x": "' + b"a" * 3_000_000 + b'"}}}\n',  # 3 MB line
        b'"just a string"\n',
        b"[1, 2, 3]\n",
        good(4),
        gen.kong_line(wrong_types),
        good(5),
    ]
    with open(log, "wb") as handle:
        handle.write(b"".join(hostile))
        handle.write(good(6)[:500])  # half a line at the end...
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--dead-letter", str(dead)), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 7, timeout=15)
    time.sleep(0.3)
    assert 6 not in counts(segment)  # ...waits for its newline
    with open(log, "ab") as handle:
        handle.write(good(6)[500:])  # ...which comes later
    segment.wait_for(lambda: 6 in counts(segment), timeout=15)
    code, _, err = proc.stop()
    assert code == 0, err
    assert "Traceback" not in err
    assert_exactly_once(segment, [0, 1, 2, 3, 4, 5, 6, 7])
    reasons = [orjson.loads(line)["reason"] for line in dead.read_bytes().splitlines()]
    assert sorted(reasons) == sorted(
        ["not_json", "invalid_utf8", "not_json", "not_json", "too_long", "not_object", "not_object"]
    ), reasons


# -- the state directory ------------------------------------------------------------------------------------------
def test_read_only_state_dir_is_a_clear_error(segment, tmp_path, tiny_fs):
    (tiny_fs / "state").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    log = tmp_path / "kong.json"
    write(log, range(3))
    result = ship("backfill", str(log), "--sink", "segment", "--endpoint", segment.url,
                  "--state-dir", str(tiny_fs / "state"), env=ENV)
    assert result.returncode == 2
    (line,) = result.stderr.decode().strip().splitlines()
    assert "not writable" in line and "Read-only file system" in line
    assert segment.request_count == 0


def test_full_state_dir_at_start_and_during_the_run(segment, tmp_path, tiny_fs, shippers):
    log = tmp_path / "kong.json"
    write(log, range(50))
    state = tiny_fs / "state"
    state.mkdir()
    fill(tiny_fs)
    result = ship("backfill", str(log), "--sink", "segment", "--endpoint", segment.url, "--state-dir", str(state), env=ENV)
    assert result.returncode == 2 and "No space left" in result.stderr.decode()

    os.unlink(tiny_fs / "filler")
    proc = shippers("tail", str(log), "--sink", "segment", "--endpoint", segment.url, "--state-dir", str(state),
                    *FAST_FOLLOW, env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 50, timeout=15)
    wait_until(lambda: (state / "checkpoints-segment.json").exists(), timeout=10)
    fill(tiny_fs)  # the disk fills up while running
    write(log, range(50, 80))
    segment.wait_for(lambda: len(segment.messages) >= 80, timeout=15)  # delivery goes on
    time.sleep(1.5)  # a checkpoint save was due and failed
    os.unlink(tiny_fs / "filler")
    time.sleep(1.5)  # ...and succeeds again
    code, _, err = proc.stop()
    assert code == 0, err
    assert "cannot save checkpoint" in err and "No space left" in err and "saved again" in err
    assert ship("backfill", str(log), *backfill_args(segment, tmp_path)[:4], "--state-dir", str(state), env=ENV).returncode == 0
    assert_exactly_once(segment, range(80))


def test_corrupt_checkpoint_recovers_the_previous_copy_and_says_so(segment, tmp_path):
    log = tmp_path / "kong.json"
    write(log, range(10))
    assert ship("backfill", str(log), *backfill_args(segment, tmp_path), env=ENV).returncode == 0
    write(log, range(10, 20))
    assert ship("backfill", str(log), *backfill_args(segment, tmp_path), env=ENV).returncode == 0
    checkpoint = tmp_path / "state" / "checkpoints-segment.json"
    checkpoint.write_bytes(b'{"version": 1, "fi')
    result = ship("backfill", str(log), *backfill_args(segment, tmp_path), env=ENV)
    assert result.returncode == 0
    assert "recovered the previous good copy" in result.stderr.decode()
    got = assert_all_arrived_same_ids(segment, range(20))
    assert sorted(s for s, n in got.items() if n > 1) == list(range(10, 20))  # only since the previous copy

    checkpoint.write_bytes(b"garbage")
    (tmp_path / "state" / "checkpoints-segment.json.prev").write_bytes(b"garbage")
    result = ship("backfill", str(log), *backfill_args(segment, tmp_path), env=ENV)
    assert result.returncode == 2 and "move both aside" in result.stderr.decode()


# -- signals ------------------------------------------------------------------------------------------------------
def test_sighup_reopens_files_and_rereads_the_glob(segment, tmp_path, shippers):
    write(tmp_path / "a.json", range(5))
    # A long poll interval: without SIGHUP the new file would not be looked for in this test's lifetime.
    proc = shippers("tail", str(tmp_path / "*.json"), "--sink", "segment", "--endpoint", segment.url,
                    "--state-dir", str(tmp_path / "state"), *FAST, "--poll-interval", "60", env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 5, timeout=15)
    write(tmp_path / "b.json", range(5, 10))
    time.sleep(0.5)
    assert len(segment.messages) == 5
    proc.signal(signal.SIGHUP)
    segment.wait_for(lambda: len(segment.messages) >= 10, timeout=10)
    code, _, err = proc.stop()
    assert code == 0, err
    assert "SIGHUP" in err
    assert_exactly_once(segment, range(10))


def test_sigterm_during_a_retry_storm_keeps_checkpoints_consistent(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    write(log, range(500))
    segment.script(["slow:0"] * 2 + [503] * 1000)  # two batches get through, then a storm
    proc = shippers("tail", str(log), *tail_args(segment, tmp_path, "--batch-size", "100",
                                                 "--shutdown-timeout", "1"), env=ENV)
    segment.wait_for(lambda: segment.request_count >= 10, timeout=15)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(timeout=10)
    assert code == 0 and time.monotonic() - started < 3, err
    delivered = set(counts(segment))
    segment.clear_script()
    result = ship("backfill", str(log), *backfill_args(segment, tmp_path), env=ENV)
    assert result.returncode == 0
    got = assert_all_arrived_same_ids(segment, range(500))
    assert all(got[s] == 1 for s in range(500) if s not in delivered)


def test_a_batch_handed_over_after_shutdown_timeout_stays_unacknowledged(segment):
    """The race the SIGTERM test above once lost: the batcher hands a sender a batch after the shutdown
    timeout closed the HTTP client. That batch must stay unacknowledged (read again after a restart), not
    surface as an internal error that turns a clean stop into exit 1."""
    acks = AckTracker()
    acks.start("f", 0)
    counted = collections.Counter()
    sender = Sender(SegmentSink("k", endpoint=segment.url), acks, DeadLetter(None), threading.Event(),
                    lambda key, n: counted.update({key: n}))
    sender.close()
    with pytest.raises(Aborted):
        sender.deliver([("f", 0, 10, b'{"type":"track"}')])
    assert segment.request_count == 0 and not counted["sent"]
