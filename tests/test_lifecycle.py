"""The process lifecycle under real signals and real processes (a real `kong-ship` against the fake Segment on
loopback, every record with a seq of its own and the set that arrived checked): SIGINT/SIGTERM mid-run and a
second one during shutdown, SIGHUP to a backfill, kill -9 of the main process or of one worker, a process frozen
(SIGSTOP) while the vendor drops its keep-alive connections, stderr a closed pipe; and in one process, what a run
leaves behind: the checkpoints' lock, its worker processes, its signal handlers."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import gen
from blockrun import args, checkpointed, counts, env
from conftest import reaped, ship, wait_until
from fakes.segment import FakeSegment
from tailrun import arrived, exactly_once, tail_starter

from shipper.errors import ConfigError, FatalError
from shipper.pipeline import Pipeline
from shipper.settings import Settings
from shipper.sinks import sink_class

BLOCK = 20_000  # about 10 records a block
SLOW = ["--queue-size", "300", "--batch-size", "20", "--concurrency", "1", "--shutdown-timeout", "3"]
SEQS = range(600)


@pytest.fixture
def tails():
    yield from tail_starter()


def start_backfill(fake, tmp_path, log, *more: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    argv = [sys.executable, "-m", "shipper", "backfill", str(log), *args(fake, tmp_path, "state", *more)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env(BLOCK), start_new_session=True)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def running(pids) -> list[int]:
    """The pids that are still processes (not gone, not zombies)."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    return alive


def rerun_ships_the_rest(fake, tmp_path, log, first: collections.Counter) -> collections.Counter:
    """The backfill run again to its end: every record arrived, only those the first run had out twice."""
    saved = checkpointed(tmp_path / "state")
    fake.clear_script()
    again = ship("backfill", str(log), *args(fake, tmp_path, "state", *SLOW), env=env(BLOCK))
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    got = counts(fake)
    assert set(got) == set(SEQS) and max(first.values()) == 1
    doubled = {s for s, n in got.items() if n > 1}
    assert doubled <= set(first) and saved < log.stat().st_size
    return got


def no_traceback(err: bytes) -> str:
    text = err.decode()
    assert "Traceback" not in text, text[-3000:]
    return text


# -- SIGINT/SIGTERM mid-run and a second one during shutdown, with and without workers --------------------------
@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("signals", [("SIGINT",), ("SIGTERM", "SIGTERM")], ids=["sigint", "forced"])
def test_a_signal_to_the_group_mid_backfill(tmp_path, workers, signals):
    """Ctrl-C (SIGINT to the process group): 130 and how far it got; a second SIGTERM during shutdown: 143 at
    once. No process of the group is left; the re-run ships the rest, only what was out comes twice."""
    log = tmp_path / "kong.json"
    gen.write_records(log, SEQS)
    with FakeSegment() as fake:
        fake.script(["slow:0.05"] * 1000)
        with reaped(start_backfill(fake, tmp_path, log, *SLOW, "--workers", workers)) as proc:
            fake.wait_for(lambda: len(fake.messages) >= 100, timeout=30)
            workers_seen = children(proc.pid)
            os.killpg(proc.pid, getattr(signal, signals[0]))
            err = b""
            if len(signals) > 1:
                # the second once the first was taken (its line said), while what is in flight is delivered
                while b"stopping" not in err:
                    chunk = os.read(proc.stderr.fileno(), 65536)  # type: ignore[union-attr]
                    assert chunk, err
                    err += chunk
                os.killpg(proc.pid, getattr(signal, signals[1]))
            _, rest = proc.communicate(timeout=30)
            err += rest
        fake.wait_for(lambda: fake.open_connections == 0, timeout=10)
        assert not running(workers_seen), workers_seen
        assert len(workers_seen) == (2 if workers == "2" else 0)
        first = counts(fake)
        rerun_ships_the_rest(fake, tmp_path, log, first)
    text = no_traceback(err)
    code = 128 + getattr(signal, signals[-1])
    assert proc.returncode == code, text[-2000:]
    if len(signals) == 1:
        assert "interrupted by SIGINT" in text
    assert 100 <= len(first) < len(SEQS)


def test_sighup_to_a_backfill_is_taken_and_the_run_goes_to_its_end(tmp_path):
    """A terminal's hang-up (SIGHUP to the group, workers included): the backfill goes on, exit 0, every record
    once; the workers ignore it (they are ended by kong-ship at the end, none left)."""
    log = tmp_path / "kong.json"
    gen.write_records(log, SEQS)
    with FakeSegment() as fake:
        fake.script(["slow:0.02"] * 40)
        with reaped(start_backfill(fake, tmp_path, log, *SLOW, "--workers", "2")) as proc:
            fake.wait_for(lambda: len(fake.messages) >= 100, timeout=30)
            workers_seen = children(proc.pid)
            os.killpg(proc.pid, signal.SIGHUP)
            _, err = proc.communicate(timeout=60)
        text = no_traceback(err)
        assert proc.returncode == 0, text[-2000:]
        assert len(workers_seen) == 2 and not running(workers_seen)
        exactly_once(fake, SEQS)


# -- kill -9 ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def backfill_under_way(tmp_path) -> Iterator[tuple[FakeSegment, subprocess.Popen, list[int], pathlib.Path]]:
    """A backfill with two workers to a slow fake, once 100 records have arrived: the fake, the process, its
    workers and the log. Afterwards (the test has ended the process its way), the re-run ships the rest once."""
    log = tmp_path / "kong.json"
    gen.write_records(log, SEQS)
    with FakeSegment() as fake:
        fake.script(["slow:0.05"] * 1000)
        with reaped(start_backfill(fake, tmp_path, log, *SLOW, "--workers", "2")) as proc:
            fake.wait_for(lambda: len(fake.messages) >= 100, timeout=30)
            workers = children(proc.pid)
            yield fake, proc, workers, log
        fake.wait_for(lambda: fake.open_connections == 0, timeout=10)
        assert len(workers) == 2 and wait_until(lambda: not running(workers), timeout=10), running(workers)
        rerun_ships_the_rest(fake, tmp_path, log, counts(fake))  # a new run takes the checkpoints: lock freed


def test_kill_9_of_the_main_process_leaves_no_worker_and_frees_the_checkpoints(tmp_path):
    with backfill_under_way(tmp_path) as (_, proc, _, _):
        os.kill(proc.pid, signal.SIGKILL)  # the main process only: the workers must not outlive it
        proc.wait(10)


def test_kill_9_of_one_worker_is_exit_1_one_line_and_the_rerun_ships_the_rest(tmp_path):
    with backfill_under_way(tmp_path) as (_, proc, workers, _):
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    text = no_traceback(err)
    assert proc.returncode == 1, text[-2000:]
    (line,) = text.strip().splitlines()
    assert "fatal" in line and "worker process died" in line


# -- a frozen shipper, its vendor's connections closed meanwhile ------------------------------------------------
def test_a_tail_frozen_while_the_vendor_drops_its_connections_resumes_and_delivers_once(tmp_path, tails):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(100))
    with FakeSegment() as fake:
        tail = tails(tmp_path, fake, log, "--timeout", "2")
        # acknowledged, not only arrived: a reply cut off with its connection would be a resend (at-least-once)
        assert wait_until(lambda: checkpointed(tmp_path / "state") == log.stat().st_size, timeout=15)
        tail.freeze()  # a VM pause: the vendor times its keep-alive connections out meanwhile
        fake.drop_connections()
        gen.write_records(log, range(100, 200))
        fake.wait_for(lambda: fake.open_connections == 0, timeout=10)
        tail.thaw()
        arrived(fake, 200)
        tail.stop()
        exactly_once(fake, range(200))


# -- stderr that cannot be written --------------------------------------------------------------------------------
def closed_pipe() -> int:
    """The writing end of a pipe whose reader is gone (`2>&1 | head -1` once head has exited)."""
    read, write = os.pipe()
    os.close(read)
    return write


def test_a_tail_whose_stderr_reader_is_gone_stops_with_exit_0_and_everything_shipped(tmp_path):
    """Its log lines and summary lost, the run is not: SIGTERM still means exit 0 (it was 1: the summary's
    BrokenPipeError, then the fatal line's), every record once, the checkpoint at the end."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(200))
    stderr = closed_pipe()
    with FakeSegment() as fake:
        argv = [sys.executable, "-m", "shipper", "tail", str(log), "--sink", "segment", "--endpoint", fake.url,
                "--state-dir", str(tmp_path / "state"), "--poll-interval", "0.05", "--flush-interval", "0.05"]
        environ = {k: v for k, v in env(BLOCK).items() if k != "PYTHONUNBUFFERED"}  # as systemd runs it
        with reaped(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=environ,
                                     start_new_session=True)) as proc:
            os.close(stderr)
            fake.wait_for(lambda: len(fake.messages) >= 200, timeout=30)
            os.kill(proc.pid, signal.SIGHUP)  # a log line more, to a pipe nobody reads
            assert wait_until(lambda: checkpointed(tmp_path / "state") == log.stat().st_size, timeout=15)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        exactly_once(fake, range(200))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_backfill_whose_stderr_reader_is_gone_exits_as_its_run_did(tmp_path, workers):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(200))
    stderr = closed_pipe()
    with FakeSegment() as fake:
        with reaped(start_backfill(fake, tmp_path, log, "--workers", workers, stderr=stderr)) as proc:
            os.close(stderr)
            assert proc.wait(60) == 0
        exactly_once(fake, range(200))
    assert checkpointed(tmp_path / "state") == log.stat().st_size


# -- in one process: what a run leaves behind ----------------------------------------------------------------------
@pytest.fixture
def write_key(monkeypatch):
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "test-key")


def pipeline(tmp_path, fake, workers: int = 0) -> Pipeline:
    log = tmp_path / "kong.json"
    if not log.exists():
        gen.write_records(log, range(50))
    (tmp_path / "state").mkdir(exist_ok=True, mode=0o700)
    settings = Settings(paths=[str(log)], sinks=["segment"], state_dir=str(tmp_path / "state"), flush_interval=0.01,
                        workers=workers, shutdown_timeout=1)
    sink = sink_class("segment").from_options({}, fake.url)
    return Pipeline(settings, [sink], follow=False)


def test_after_a_fatal_answer_a_next_run_in_the_same_process_takes_the_checkpoints(tmp_path, write_key):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with FakeSegment() as fake:
        fake.script([401])
        with pytest.raises(FatalError):
            pipeline(tmp_path, fake).run()
        # the handlers from before the run are back: a Ctrl-C after it is not swallowed by a run that is over
        assert {s: signal.getsignal(s) for s in handlers} == handlers
        pipeline(tmp_path, fake).run()
        exactly_once(fake, range(50))
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_a_run_that_cannot_take_the_checkpoints_ends_its_worker_processes(tmp_path, write_key):
    """Another process holds the sink's checkpoints: ConfigError, and the workers forked for the run are ended
    (they were left running until the process exited)."""
    with FakeSegment() as fake:
        run = pipeline(tmp_path, fake, workers=2)
        held = os.open(tmp_path / "state" / "checkpoints-segment.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(held, fcntl.LOCK_EX)
            pool = run.lanes[0].pool
            assert pool is not None
            processes = [w.process for w in pool._workers]
            assert all(p.is_alive() for p in processes)
            with pytest.raises(ConfigError):
                run.run()
            assert not any(p.is_alive() for p in processes)
        finally:
            os.close(held)
        assert fake.request_count == 0
        pipeline(tmp_path, fake).run()  # the lock let go once its holder is gone
        exactly_once(fake, range(50))


def test_a_signal_while_the_checkpoints_are_taken_stops_the_run_and_lets_them_go(tmp_path, monkeypatch, write_key):
    """SIGINT while the checkpoints are read (a big state file): no KeyboardInterrupt out of the run with the
    lock taken; the run stops (stopped_by SIGINT) and a next run takes the checkpoints."""
    with FakeSegment() as fake:
        run = pipeline(tmp_path, fake)
        resume = run.lanes[0].resume
        load = resume.store.load

        def load_then_signal() -> None:
            load()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, between two bytecodes

        monkeypatch.setattr(resume.store, "load", load_then_signal)
        run.run()
        assert run.stopped_by == signal.SIGINT
        pipeline(tmp_path, fake).run()
        assert set(counts(fake)) == set(range(50))
