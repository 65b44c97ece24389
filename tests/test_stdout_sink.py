"""`--sink stdout` with several senders: every batch reaches the pipe whole, never cut by another thread's, with
standard output buffered or raw (PYTHONUNBUFFERED=1, common in container images, makes it the raw file)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest

import gen
from conftest import FAST, ship, ship_env

from shipper.sinks.stdout import StdoutSink

SENDERS, BATCHES, EVENTS = 3, 20, 84  # ~80 kB a batch: more than a pipe holds, so the writes block part-way


@pytest.mark.parametrize("buffering", [-1, 0], ids=["buffered", "unbuffered"])
def test_concurrent_senders_write_whole_batches_to_a_pipe(buffering):
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "wb", buffering=buffering)
    sink = StdoutSink(stream=stream)
    received = bytearray()

    def drain() -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            for _ in range(SENDERS * 4):  # a slow reader: the senders block on a full pipe, part-way into a batch
                received.extend(pipe.read(65536))
                time.sleep(0.01)
            while chunk := pipe.read(65536):
                received.extend(chunk)

    def send(sender: int) -> None:
        # Each sender its own client, all on the sink's transports, as the delivery's sender threads do.
        with httpx.Client(transport=sink.transport()) as client:
            for batch in range(BATCHES):
                events = [b'{"n":"%d-%d-%d","pad":"%s"}' % (sender, batch, i, b"x" * 900) for i in range(EVENTS)]
                assert client.send(sink.request(events)).status_code == 200

    reader = threading.Thread(target=drain)
    reader.start()
    senders = [threading.Thread(target=send, args=(s,)) for s in range(SENDERS)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    stream.close()
    reader.join()
    lines = bytes(received).splitlines()
    expected = {b'{"n":"%d-%d-%d","pad":"%s"}' % (s, b, i, b"x" * 900)
                for s in range(SENDERS) for b in range(BATCHES) for i in range(EVENTS)}  # fmt: skip
    assert len(lines) == len(expected) and set(lines) == expected


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_a_backfill_to_stdout_prints_every_event_once_and_whole(tmp_path, unbuffered):
    """A real backfill with workers and concurrent senders into a pipe: every line an event, every record once."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(6000))
    result = ship("backfill", str(log), "--sink", "stdout", "--workers", "2", "--concurrency", "4",
                  "--state-dir", str(tmp_path / "state"), *FAST, env=ship_env(PYTHONUNBUFFERED=unbuffered))  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    seqs = [gen.seq_of_segment_message(orjson.loads(line)) for line in result.stdout.splitlines()]
    assert sorted(seqs) == list(range(6000))


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_a_reader_that_goes_away_stops_the_run_with_one_line(tmp_path, unbuffered):
    """`kong-ship backfill ... --sink stdout | head -1`: exit 1 with one line on stderr, no traceback and no
    "Exception ignored" from a buffer flushed at exit into the closed pipe."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3000))  # megabytes: far more than a pipe holds
    process = subprocess.Popen(
        [sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "s")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ship_env(PYTHONUNBUFFERED=unbuffered),
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    assert orjson.loads(process.stdout.readline())["type"] == "track"
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert stderr.strip().splitlines() == ["kong-ship: fatal: standard output was closed"], stderr


@pytest.mark.parametrize("command", [["parse"], ["backfill", "--sink", "stdout", "--state-dir", "{state}"]],
                         ids=["parse", "backfill"])
def test_a_closed_standard_output_is_one_line_and_exit_2(tmp_path, command):
    """`kong-ship parse access.log >&-`: nothing can be written, so nothing is read (no checkpoint moves)."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3))
    result = subprocess.run(
        [sys.executable, "-m", "shipper", command[0], str(log), *(a.format(state=tmp_path / "s") for a in command[1:])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ship_env(), preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        "kong-ship: error: standard output is closed: this command writes its output there (redirect it to a file "
        "or to /dev/null)"
    ]
    assert not list((tmp_path / "s").glob("checkpoints-*"))
