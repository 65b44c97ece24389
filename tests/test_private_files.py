"""The files kong-ship appends to or replaces (dead letters, spool, checkpoints: `checkpoints.open_private`) are
never waited on when a FIFO stands at their path: a blocking open() waited in the kernel for a reader, where
no signal reached the run (a dead-letter path made a FIFO after the start check hung a backfill until kill -9)."""

from __future__ import annotations

import os
import threading

import pytest

from shipper.deadletter import DeadLetter, Unwritten
from shipper.sources.checkpoints import open_private


def write_in_thread(dead: DeadLetter) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            dead.write("unknown_format", "not a Kong record", line=b"{}")
        except BaseException as exc:  # noqa: BLE001  # what the write ended with, for the test to look at
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def test_a_dead_letter_fifo_with_no_reader_is_a_failing_write_that_a_stop_ends(tmp_path, caplog):
    fifo = tmp_path / "dead-letter.jsonl"
    os.mkfifo(fifo, 0o600)
    abort = threading.Event()
    thread, raised = write_in_thread(DeadLetter(str(fifo), abort=abort))
    try:
        thread.join(1.0)
        abort.set()  # shutdown gives up waiting: the write ends, unacknowledged
        thread.join(10)
        assert not thread.is_alive(), "blocked in open() on the FIFO"
    finally:
        if thread.is_alive():  # let the blocked open() go, so the test process can end
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    assert len(raised) == 1 and isinstance(raised[0], Unwritten), raised
    assert "a FIFO or a socket, not a file" in str(raised[0])
    assert any("a FIFO or a socket, not a file" in r.getMessage() for r in caplog.records)


def test_a_fifo_someone_reads_is_refused_not_written_to(tmp_path):
    fifo = tmp_path / "checkpoints-segment.json.tmp1"
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(OSError, match="a FIFO, not a file"):
            open_private(str(fifo), os.O_WRONLY | os.O_APPEND)
        with pytest.raises(OSError, match="a FIFO, not a file"):
            open_private(str(fifo), os.O_RDONLY)
        assert os.read(reader, 10) == b""  # nothing was written to it (and no writer holds it)
    finally:
        os.close(reader)


def test_regular_files_and_dev_null_are_written_as_before(tmp_path):
    path = tmp_path / "dead-letter.jsonl"
    DeadLetter(str(path)).write("unknown_format", "not a Kong record", line=b"{}")
    assert b'"reason":"unknown_format"' in path.read_bytes()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    dead = DeadLetter(os.devnull)
    dead.write("unknown_format", "not a Kong record", line=b"{}")
    assert dead.counts["unknown_format"] == 1
