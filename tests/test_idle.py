"""An idle tail costs next to nothing, and gives up no guarantee for it: what the file source does on a round over
quiet files is counted (system calls through wrapped `os` functions), never timed."""

from __future__ import annotations

import os
import threading
import time

import pytest

from shipper.delivery.batcher import Batcher
from shipper.delivery.queue import BoundedQueue
from shipper.sources import quiet
from shipper.sources.files import FileSource


class Calls:
    """Counts the calls of some `os` functions (all of the process's, for the time of a test)."""

    def __init__(self, monkeypatch, *names):
        self.counts = dict.fromkeys(names, 0)
        for name in names:
            real = getattr(os, name)

            def counting(*args, _name=name, _real=real, **kw):
                self.counts[_name] += 1
                return _real(*args, **kw)

            monkeypatch.setattr(os, name, counting)

    def reset(self):
        self.counts = dict.fromkeys(self.counts, 0)


def source_of(pattern) -> FileSource:
    return FileSource([str(pattern)], known=lambda fingerprint: {})


def rounds(source: FileSource, n: int) -> list:
    lines = []
    for _ in range(n):
        lines.extend(source.read_round())
        source.check()
    return lines


@pytest.fixture
def settled(monkeypatch):
    """The files' stamps are older than quiet.SETTLED_NS from now on (the wall clock moved on by a minute)."""
    monkeypatch.setattr(quiet, "wall_clock_ns", lambda: time.time_ns() + 60 * 10**9)


def test_idle_rounds_over_300_unchanged_files_do_one_fstat_each_and_no_read(tmp_path, monkeypatch, settled):
    for i in range(300):
        (tmp_path / f"kong.json.{i}").write_bytes(b'{"n":%d}\n' % i)
    source = source_of(tmp_path / "kong.json*")
    source.discover()
    assert len(rounds(source, 2)) == 300
    calls = Calls(monkeypatch, "pread", "fstat", "open", "read")
    rounds(source, 5)
    # Before: a read of the first line, of the bytes before the position and of a chunk, each file, each round,
    # and an fstat in check() besides.
    assert calls.counts == {"pread": 0, "fstat": 300 * 5, "open": 0, "read": 0}
    assert len(source.files) == 300
    with open(tmp_path / "kong.json.7", "ab") as log:  # a line for one of them: read on the very next round
        log.write(b'{"n":"late"}\n')
    assert [line[1] for line in rounds(source, 1)] == [b'{"n":"late"}']
    source.close()


def test_an_idle_round_with_discovery_looks_at_each_path_once(tmp_path, monkeypatch, settled):
    """Discovery's stat of a path that leads to an open file is the look check() takes for rotation, and what the
    read round right after it compares with the file's stamp: one stat a file, where there were two stats, an
    fstat and three reads."""
    for i in range(300):
        (tmp_path / f"kong.json.{i}").write_bytes(b'{"n":%d}\n' % i)
    source = source_of(tmp_path / "kong.json*")
    source.discover()
    assert len(rounds(source, 2)) == 300
    calls = Calls(monkeypatch, "stat", "fstat", "pread")
    for _ in range(3):
        for handle in source.files.values():
            handle.last_check = 0.0  # every file due for its look
        source.discover()
        rounds(source, 1)
    assert calls.counts == {"stat": 300 * 3, "fstat": 0, "pread": 0}
    source.close()


def test_a_rewrite_to_the_same_size_with_its_old_mtime_put_back_is_read_while_idle(tmp_path, monkeypatch, settled):
    """The ctime in the stamp: a utime that puts the old mtime back cannot put the old ctime back."""
    log = tmp_path / "kong.json"
    log.write_bytes(b"old-1\nold-2\n")
    source = source_of(log)
    source.discover()
    assert [line[1] for line in rounds(source, 2)] == [b"old-1", b"old-2"]
    calls = Calls(monkeypatch, "pread")
    rounds(source, 2)
    assert calls.counts["pread"] == 0  # passed over: quiet
    before = os.stat(log)
    with open(log, "r+b") as handle:  # copytruncate, and the same number of bytes written again
        handle.truncate(0)
        handle.write(b"new-1\nnew-2\n")
    os.utime(log, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(log)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    lines = rounds(source, 3)
    assert [(line[1], line[2]) for line in lines] == [(b"new-1", 0), (b"new-2", 6)]
    source.close()


def test_a_rewrite_to_the_same_size_within_one_tick_of_the_clock_is_read(tmp_path, monkeypatch):
    """Truncated and rewritten to the same size within one tick of the file system's clock, a file keeps its
    stamp (fstat is frozen here to show that). A stamp that recent is not trusted: the file is checked in full on
    every round, and the rewrite is found as it was before the stamps."""
    log = tmp_path / "kong.json"
    log.write_bytes(b"old-1\nold-2\n")
    source = source_of(log)
    source.discover()
    assert [line[1] for line in rounds(source, 2)] == [b"old-1", b"old-2"]
    (handle,) = source.files.values()
    frozen = os.fstat(handle.fd)
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: frozen if fd == handle.fd else real_fstat(fd))
    rounds(source, 2)
    with open(log, "r+b") as rewrite:
        rewrite.truncate(0)
        rewrite.write(b"new-1\nnew-2\n")
    lines = rounds(source, 3)
    assert [(line[1], line[2]) for line in lines] == [(b"new-1", 0), (b"new-2", 6)]
    source.close()


def test_a_file_with_no_first_line_is_not_opened_again_until_it_changes(tmp_path, monkeypatch, settled):
    log = tmp_path / "kong.json"
    log.write_bytes(b"")
    source = source_of(log)
    calls = Calls(monkeypatch, "open")
    for _ in range(5):
        source.discover()
        rounds(source, 1)
    # Before: opened, found empty and closed on every discovery (and each open and close woke inotify's readers).
    assert calls.counts["open"] == 1
    log.write_bytes(b'{"first":1}\n')
    source.discover()
    assert [line[1] for line in rounds(source, 1)] == [b'{"first":1}']
    source.close()


def test_an_idle_batcher_waits_for_work_without_a_timeout():
    """No batch held: nothing to flush, so nothing to wake up for (the queue's put or close wakes it)."""
    delivered: list[list[bytes]] = []

    class Recorder:
        sink = type("S", (), {"name": "rec"})

        def deliver(self, items, part=False):
            delivered.append([item[3] for item in items])

    timeouts: list[float | None] = []
    asked = threading.Condition()

    class Watched(BoundedQueue):
        def get(self, timeout):
            with asked:
                timeouts.append(timeout)
                asked.notify_all()
            return super().get(timeout)

    queue: Watched = Watched(100, 1 << 20)
    batcher = Batcher(queue, Recorder(), max_events=10, max_bytes=1 << 20, envelope_bytes=0, flush_interval=0.01,
                      concurrency=1, on_fatal=lambda why: None)  # fmt: skip
    runner = threading.Thread(target=batcher.run, daemon=True)
    runner.start()
    with asked:
        assert asked.wait_for(lambda: timeouts, timeout=10)
    assert timeouts == [None]  # before: 0.5 s, two wake-ups a second for nothing
    queue.put([("f", 0, 2, b"e")], 1, threading.Event(), count=1)
    with asked:
        assert asked.wait_for(lambda: len(timeouts) >= 3, timeout=10)  # the batch's flush deadline, then idle again
    assert timeouts[1] is not None and timeouts[-1] is None
    queue.close()
    runner.join(10)
    assert batcher.wait_idle(10) and delivered == [[b"e"]]
    batcher.shutdown()


def test_a_line_written_just_before_an_idle_close_is_read_when_discovery_opens_it_again(tmp_path, settled):
    """A file quiet for `idle_close` is let go, and opened again by discovery when its size is not the one it was
    let go at. A line written after the read round that found it quiet and before check() let it go was taken
    for part of what had been read (its size, looked at again when it was let go, was noted as done): discovery
    passed it over until the file grew again, for ever if it never did (a rotated file's straggler line)."""
    log = tmp_path / "kong.json.1"
    log.write_bytes(b'{"n":1}\n')
    source = FileSource([str(tmp_path / "kong.json*")], known=lambda fingerprint: {}, idle_close=0.0)
    source.discover()
    assert [line[1] for line in source.read_round()] == [b'{"n":1}']
    assert not list(source.read_round())  # found nothing: quiet from here
    with open(log, "ab") as handle:  # between that round and the check that lets the file go
        handle.write(b'{"n":2}\n')
    source.check(now=time.monotonic() + 60)
    assert not source.files  # let go as idle
    source.discover()
    assert [line[1] for line in source.read_round()] == [b'{"n":2}']
    source.close()
