"""Faults on the block-worker path of `kong-ship backfill` (--workers 2, small blocks: sources/blocks.py,
transform.transform_block, batches closed in the workers and acknowledged as spans, delivery/closed.py, acks.py),
as real processes against the fake Segment on loopback, every record with a seq of its own and the set that
arrived checked: refusals halved down to the one bad event, odd Retry-After values, 5xx storms, a fatal answer
mid-run (credentials, a redirect) and a re-run after the vendor is fixed, SIGTERM to the process group, a state
directory that is read-only or a checkpoint file that is garbage, the input changed under the run, and the
summary's accounting with a --since/--until window and poison lines."""

from __future__ import annotations

import collections
import contextlib
import email.utils
import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import gen
import poison
from blockrun import args, checkpointed, counts, env, positions
from conftest import LogBuilder, reaped, ship, summary_rows, wait_until
from fakes.segment import FakeSegment

BLOCK = 20_000  # about 10 records (~2 kB each) a block: batches of 4 are closed in the workers, 4 + 4 + the rest
WORKERS = ["--workers", "2"]


def backfill(fake, tmp_path, paths, *more: str, state: str = "state", block: int = BLOCK, timeout: float = 60):
    paths = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    return ship("backfill", *paths, *args(fake, tmp_path, state, *WORKERS, *more), env=env(block), timeout=timeout)


def start(fake, tmp_path, path, *more: str, block: int = BLOCK) -> subprocess.Popen:
    """A backfill as its own process group (systemd's stop signals the whole group), stderr captured."""
    argv = [sys.executable, "-m", "shipper", "backfill", str(path), *args(fake, tmp_path, "state", *WORKERS, *more)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env(block),
                            start_new_session=True)  # fmt: skip


def line_ends(path) -> list[int]:
    return list(itertools.accumulate(len(line) for line in path.read_bytes().splitlines(keepends=True)))


def exactly_once(got: collections.Counter, seqs) -> None:
    missing = sorted(set(seqs) - set(got))
    doubled = sorted(s for s, n in got.items() if n > 1)
    extra = sorted(set(got) - set(seqs))
    assert not missing and not doubled and not extra, (missing[:10], doubled[:10], extra[:10])


def no_traceback(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text[-3000:]
    return text


def accounted(row: dict[str, int]) -> int:
    return sum(row[c] for c in ("shipped", "filtered", "dead-lettered", "rejected", "skipped", "blank"))


def below_checkpoint(path, seqs, offset: int) -> set[int]:
    """The seqs (one line each, in file order) of the lines that end at or before `offset`."""
    return {seq for seq, end in zip(seqs, line_ends(path)) if end <= offset}


# -- refusals: 413 / 400 halving a closed batch -----------------------------------------------------------------
def test_scripted_413_and_400_halve_a_closed_batch_and_lose_nothing(tmp_path):
    """A closed batch of 8 refused (413), its first half refused (400), that half's first half refused (413):
    halves of halves, never a single good event left alone to be dead-lettered; every record once, exit 0, and the
    checkpoint at the file's end."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(200))
    with FakeSegment() as fake:
        fake.script([413, 400, 413])
        out = backfill(fake, tmp_path, log, "--batch-size", "8", "--concurrency", "1")
        got = counts(fake)
        sizes = [len(r.body) for r in fake.requests[:4]]
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    exactly_once(got, range(200))
    assert not (tmp_path / "state" / "dead-letter.jsonl").exists()
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3]  # 8, 4, 2, 1: each refusal sent its first half next
    row = summary_rows(out.stderr)["segment"]
    assert (row["read"], row["shipped"], row["rejected"]) == (200, 200, 0)
    assert [offset for offset, _ in positions(tmp_path / "state").values()] == [log.stat().st_size]


def test_a_vendor_body_limit_halves_every_closed_batch_and_dead_letters_only_the_one_too_big(tmp_path):
    """The fake's body limit (413, 3,000 bytes) fits two events, not four: every closed batch is halved; one
    record padded past the limit alone is refused alone and dead-lettered; a record the vendor refuses by id (400)
    too. The rest arrive once; exit 1 (rejected events); the checkpoint is at the file's end, so a second run
    sends nothing."""
    log = tmp_path / "kong.json"
    builder = LogBuilder()
    big, bad = 77, 131
    for seq in range(200):
        record = gen.kong_record(seq)
        if seq == big:
            record["request"]["querystring"]["pad"] = "p" * 4000  # queryObject: 4 kB more, over the limit alone
        builder.add(gen.kong_line(record))
        if seq % 7 == 3:  # lines that are no event inside the closed batches' spans: settled apart, before them
            builder.add(b"\n")
            builder.add(b"no json {\n")
    log.write_bytes(builder.data())
    bad_id = gen.kong_record(bad)["request"]["id"]
    with FakeSegment(max_body_bytes=3_000, reject_message_ids=[bad_id]) as fake:
        out = backfill(fake, tmp_path, log, "--batch-size", "4", "--dead-letter", str(tmp_path / "dead.jsonl"))
        got = counts(fake)
        refusals = collections.Counter(status for status, _ in fake.rejections)
        again = backfill(fake, tmp_path, log, "--batch-size", "4", "--dead-letter", str(tmp_path / "dead.jsonl"))
        assert counts(fake) == got  # nothing sent again
    text = no_traceback(out.stderr)
    assert out.returncode == 1, text[-2000:]
    exactly_once(got, set(range(200)) - {big, bad})
    assert refusals[413] >= 40 and refusals[400] >= 1
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    rejected = [d for d in dead if d["reason"] == "rejected"]
    assert sorted(gen.seq_of_segment_message(json.loads(d["event"])) for d in rejected) == [big, bad]
    assert len(dead) == len(rejected) + 29 and {d["reason"] for d in dead} == {"rejected", "not_json"}
    row = summary_rows(out.stderr)["segment"]
    assert (row["read"], row["shipped"], row["rejected"], row["blank"]) == (258, 198, 2, 29) and accounted(row) == 258
    assert [offset for offset, _ in positions(tmp_path / "state").values()] == [log.stat().st_size]
    assert again.returncode == 0 and summary_rows(again.stderr)["segment"]["read"] == 0


# -- retries: 429 with odd Retry-After values, 5xx then success --------------------------------------------------
def http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


class TimedSegment(FakeSegment):
    """The fake Segment, remembering the wall-clock time each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def _next(self, req):
        with self._lock:
            self.times.append(time.time())
        return super()._next(req)


@pytest.mark.parametrize("value", ["0", "-1", "garbage", "date"])
def test_429_with_an_odd_retry_after_then_success_every_record_once(tmp_path, value):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(120))
    until = int(time.time()) + 3  # a whole second: what an HTTP date can say
    header = http_date(until) if value == "date" else value  # a date already past: no usable wait, as these
    with TimedSegment() as fake:
        fake.script([(429, {"Retry-After": header})] * 3)
        out = backfill(fake, tmp_path, log, "--batch-size", "4")
        got = counts(fake)
        times = fake.times
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    exactly_once(got, range(120))
    assert summary_rows(out.stderr)["segment"]["retries"] >= 3
    if value == "date":
        # The date honoured: nothing sent after the first 429 until it (the slots' requests already out aside).
        assert times[0] < until - 0.5, "the run started too late for the date to mean a wait"
        assert times[3] >= until - 0.05, (times[:4], until)
    else:
        # A value with no usable wait falls back to the exponential backoff (--retry-max-delay 0.2 s).
        assert times[3] - times[0] < 3, times[:4]


def test_5xx_storm_then_success_every_record_once(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(150))
    with FakeSegment() as fake:
        fake.script([500, 502, 503, 504, "reset", 500, 503] * 2)
        out = backfill(fake, tmp_path, log, "--batch-size", "4")
        got = counts(fake)
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    exactly_once(got, range(150))
    row = summary_rows(out.stderr)["segment"]
    assert row["retries"] >= 14 and row["shipped"] == 150 and row["rejected"] == 0
    assert [offset for offset, _ in positions(tmp_path / "state").values()] == [log.stat().st_size]


# -- a vendor that stops accepting mid-run, then is fixed ----------------------------------------------------------
@dataclass
class StoppedThenRerun:
    out: subprocess.CompletedProcess  # the run the vendor stopped
    took: float  # its seconds
    first: collections.Counter  # what arrived in it
    below: set[int]  # the seqs below its checkpoint
    again: subprocess.CompletedProcess  # the re-run, the vendor fixed
    got: collections.Counter  # what arrived in both
    state: pathlib.Path


def six_batches_then(tmp_path, then, *more: str) -> StoppedThenRerun:
    """200 records; six batches accepted, then every request answered `then` (a scripted action) until the backfill
    stops; then the vendor fixed and the backfill run again."""
    log = tmp_path / "kong.json"
    seqs = range(200)
    gen.write_records(log, seqs)
    state = tmp_path / "state"
    with FakeSegment() as fake:
        fake.script(["slow:0"] * 6 + [then] * 100000)
        started = time.monotonic()
        out = backfill(fake, tmp_path, log, "--batch-size", "4", *more)
        took = time.monotonic() - started
        first = counts(fake)
        saved = checkpointed(state)
        fake.clear_script()
        again = backfill(fake, tmp_path, log, "--batch-size", "4")
        got = counts(fake)
    run = StoppedThenRerun(out, took, first, below_checkpoint(log, seqs, saved), again, got, state)
    text = no_traceback(out.stderr)
    assert out.returncode == 1, text[-2000:]
    assert 0 < len(first) < len(seqs)
    assert run.below <= set(first)  # never past what was acknowledged
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert set(got) == set(seqs)
    # Only what was in flight past the checkpoint comes twice.
    assert max(got.values()) <= 2 and {s for s, n in got.items() if n > 1} <= set(first) - run.below
    return run


@pytest.mark.parametrize("down", ["503", "reset"])
def test_give_up_after_ends_a_backfill_whose_vendor_stays_down_and_a_rerun_loses_nothing(tmp_path, down):
    """Six batches accepted, then the vendor down for good (503 to every request, or every connection reset): with
    --give-up-after 1 the backfill stops within a few seconds (not the retries' 0.2 s steps for ever) with one
    fatal line and exit 1, the checkpoint covering only records that arrived; the re-run ships the rest."""
    run = six_batches_then(tmp_path, 503 if down == "503" else "reset", "--give-up-after", "1")
    text = run.out.stderr.decode()
    fatal = [line for line in text.splitlines() if "fatal" in line]
    assert len(fatal) == 1 and "nothing delivered for 1 s of retries" in fatal[0], text[-2000:]
    assert run.took < 20, run.took


FATAL = [
    (401, {}), (403, {}),
    (301, {"Location": "https://events.eu1.example/v1/batch"}),
    (307, {"Location": "https://events.eu1.example/v1/batch"}),
]


@pytest.mark.parametrize("status,headers", FATAL, ids=[str(s) for s, _ in FATAL])
def test_a_fatal_answer_mid_run_stops_with_one_line_and_a_rerun_loses_nothing(tmp_path, status, headers):
    """Six batches accepted, then every request answered `status`: exit 1, one line on stderr, no dead letter;
    the checkpoint covers only records that arrived; the re-run (the vendor fixed) ships the rest, and only what
    was in flight past the checkpoint comes twice."""
    run = six_batches_then(tmp_path, (status, headers))
    lines = run.out.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "fatal" in lines[0] and f"HTTP {status}" in lines[0], lines
    assert not (run.state / "dead-letter.jsonl").exists()
    # Those sent twice are batches accepted past a gap: closed batches go out while the few events left over from
    # their blocks wait in the batcher to be merged, so they may be several blocks ahead of the checkpoint.
    doubled = {s for s, n in run.got.items() if n > 1}
    print(f"HTTP {status}: {len(run.first)} delivered before the stop ({sorted(run.first)}), "
          f"{len(run.below)} below the checkpoint, {len(doubled)} sent twice")


def test_a_fatal_answer_to_the_half_of_a_refused_closed_batch(tmp_path):
    """A closed batch refused (400), its first half delivered, its second half answered 401: exit 1, nothing
    dead-lettered, the checkpoint never past a record that arrived; the re-run ships the rest."""
    log = tmp_path / "kong.json"
    seqs = range(200)
    gen.write_records(log, seqs)
    state = tmp_path / "state"
    with FakeSegment() as fake:
        fake.script(["slow:0", "slow:0", 400, "slow:0", 401])
        out = backfill(fake, tmp_path, log, "--batch-size", "8", "--concurrency", "1")
        first = counts(fake)
        saved = checkpointed(state)
        again = backfill(fake, tmp_path, log, "--batch-size", "8", "--concurrency", "1")
        got = counts(fake)
    text = no_traceback(out.stderr)
    assert out.returncode == 1 and "HTTP 401" in text, text[-2000:]
    # Two batches of 8, then the delivered half of the refused one (which one the batcher's flush of a block's
    # remainder decides): 17 to 20 records.
    assert 16 < len(first) <= 20 and max(first.values()) == 1, sorted(first)
    assert below_checkpoint(log, seqs, saved) <= set(first)
    assert not (state / "dead-letter.jsonl").exists()
    assert again.returncode == 0 and set(got) == set(seqs)
    assert {s for s, n in got.items() if n > 1} <= set(first) - below_checkpoint(log, seqs, saved)

# -- SIGTERM to the process group -----------------------------------------------------------------------------
SLOW_ARGS = ["--queue-size", "300", "--batch-size", "20", "--concurrency", "1", "--shutdown-timeout", "1"]


def sigterm_the_group(proc: subprocess.Popen) -> tuple[bytes, float]:
    """systemd's stop: SIGTERM to the process group; (stderr, seconds from the signal to the exit)."""
    os.killpg(proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=30)
    return err, time.monotonic() - sent


def test_sigterm_to_the_process_group_mid_run_stops_promptly_and_a_restart_loses_nothing(tmp_path):
    log = tmp_path / "kong.json"
    seqs = range(600)
    gen.write_records(log, seqs)
    state = tmp_path / "state"
    with FakeSegment() as fake:
        fake.script(["slow:0.05"] * 1000)
        with reaped(start(fake, tmp_path, log, *SLOW_ARGS)) as proc:
            fake.wait_for(lambda: len(fake.messages) >= 100, timeout=30)
            err, took = sigterm_the_group(proc)
        # A request the stop gave up on (its answer not awaited) is still taken by the fake, 50 ms later: it
        # belongs to the first run (in flight, so sent again), and must be counted in it, not after it.
        fake.wait_for(lambda: fake.open_connections == 0, timeout=10)
        first = counts(fake)
        saved = checkpointed(state)
        fake.clear_script()
        again = backfill(fake, tmp_path, log, *SLOW_ARGS)
        got = counts(fake)
    text = no_traceback(err)
    assert proc.returncode == 128 + signal.SIGTERM, text[-2000:]
    assert took < 5, took  # the shutdown timeout (1 s) and the exit, not the rest of the file
    assert "interrupted by SIGTERM" in text
    assert max(first.values()) == 1 and 100 <= len(first) < len(seqs)
    # Stopping delivers what is in flight: the checkpoint is where the delivered prefix ends.
    assert below_checkpoint(log, seqs, saved) <= set(first)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert set(got) == set(seqs)
    doubled = {s for s, n in got.items() if n > 1}
    assert doubled <= set(first) - below_checkpoint(log, seqs, saved)
    print(f"SIGTERM: {len(first)} delivered, stopped in {took:.2f} s, {len(doubled)} sent twice after the restart")


def test_sigterm_during_a_huge_retry_after_stops_within_the_shutdown_timeout(tmp_path):
    """The vendor asks for a pause of days (capped at an hour): SIGTERM still ends the run at the shutdown
    timeout, nothing unacknowledged is checkpointed, and the restart ships everything."""
    log = tmp_path / "kong.json"
    seqs = range(300)
    gen.write_records(log, seqs)
    state = tmp_path / "state"
    with FakeSegment() as fake:
        fake.script(["slow:0"] * 3 + [(429, {"Retry-After": "999999"})])
        with reaped(start(fake, tmp_path, log, *SLOW_ARGS)) as proc:
            fake.wait_for(lambda: fake.request_count >= 4, timeout=30)
            time.sleep(0.3)
            assert proc.poll() is None and fake.request_count == 4  # paused
            err, took = sigterm_the_group(proc)
        first = counts(fake)
        saved = checkpointed(state)
        again = backfill(fake, tmp_path, log, *SLOW_ARGS)
        got = counts(fake)
    text = no_traceback(err)
    assert proc.returncode == 128 + signal.SIGTERM, text[-2000:]
    assert took < 5, took  # the shutdown timeout (1 s), not the hour asked for
    assert len(first) >= 30 and max(first.values()) == 1 and below_checkpoint(log, seqs, saved) <= set(first)
    assert again.returncode == 0 and set(got) == set(seqs) and max(got.values()) == 1


# -- the state directory --------------------------------------------------------------------------------------------
GARBAGE = {
    "truncated": b'{"version": 1, "files": {"f0123456789abcdef": {"offs',
    "garbage": b"garbage\n",
    "empty": b"",
    "files a list": b'{"version": 1, "files": []}',
    "entry a number": b'{"version": 1, "files": {"f0123456789abcdef": 5}}',
    "updated a string": b'{"version": 1, "files": {"f0123456789abcdef": {"offset": 5, "updated": "yesterday"}}}',
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_a_garbage_checkpoint_without_a_previous_copy_is_one_line_and_exit_2(tmp_path, name):
    """Nothing is sent (every file from its start would be a resend of everything, unannounced), one line says
    which file and what to do."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(30))
    (tmp_path / "state").mkdir(mode=0o700)
    checkpoint = tmp_path / "state" / "checkpoints-segment.json"
    checkpoint.write_bytes(GARBAGE[name])
    with FakeSegment() as fake:
        out = backfill(fake, tmp_path, log)
        assert fake.request_count == 0
    text = no_traceback(out.stderr)
    assert out.returncode == 2, text
    (line,) = text.strip().splitlines()
    assert str(checkpoint) in line and "move it aside" in line
    assert checkpoint.read_bytes() == GARBAGE[name]  # left as it was, for the operator to look at


def test_a_garbage_checkpoint_with_a_good_previous_copy_resumes_there(tmp_path):
    """Two runs leave a checkpoint and its previous copy; the checkpoint truncated mid-write: the third run
    resumes from the previous copy, says so, and resends only what came after it."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(100))
    with FakeSegment() as fake:
        assert backfill(fake, tmp_path, log).returncode == 0
        gen.write_records(log, range(100, 200))
        assert backfill(fake, tmp_path, log).returncode == 0
        checkpoint = tmp_path / "state" / "checkpoints-segment.json"
        checkpoint.write_bytes(checkpoint.read_bytes()[:40])
        gen.write_records(log, range(200, 250))
        out = backfill(fake, tmp_path, log)
        got = counts(fake)
    text = no_traceback(out.stderr)
    assert out.returncode == 0, text[-2000:]
    assert "recovered the previous good copy" in text
    assert set(got) == set(range(250)) and {s for s, n in got.items() if n > 1} == set(range(100, 200))
    assert max(got.values()) == 2
    assert [offset for offset, _ in positions(tmp_path / "state").values()] == [log.stat().st_size]


def test_a_state_directory_made_read_only_mid_run(tmp_path, tiny_fs):
    """The state directory's file system remounted read-only mid-run: delivery goes on, one error line says the
    checkpoint cannot be saved, no traceback; the last good checkpoint stays, so the next run (writable again)
    resends only what came after it and loses nothing."""
    log = tmp_path / "kong.json"
    seqs = range(800)
    gen.write_records(log, seqs)
    state = tiny_fs / "state"
    state.mkdir()
    with FakeSegment() as fake:
        fake.script(["slow:0.05"] * 1000)
        argv = [sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "segment", "--endpoint", fake.url,
                "--state-dir", str(state), "--flush-interval", "0.05", *WORKERS, *SLOW_ARGS]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env(BLOCK),
                                start_new_session=True)  # fmt: skip
        with reaped(proc):
            fake.wait_for(lambda: len(fake.messages) >= 200, timeout=30)
            saved = wait_until(lambda: checkpointed(state), timeout=10)  # saved every second
            subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
            fake.clear_script()
            _, err = proc.communicate(timeout=60)
        first = counts(fake)
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)
        after = checkpointed(state)
        again = ship("backfill", str(log), *argv[5:], env=env(BLOCK))
        got = counts(fake)
    text = no_traceback(err)
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot save checkpoint" in errors[0] and "Read-only file system" in errors[0]
    # Every record was delivered, and the run says its end could not be saved: exit 1, one line, after the
    # summary (a script reading exit 0 as "done" would not know its next run resends); the checkpoint on disk is
    # the last one saved.
    assert proc.returncode == 1, text[-2000:]
    assert "could not be saved at the end" in text.splitlines()[-1]
    exactly_once(first, seqs)
    assert saved <= after < log.stat().st_size
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    doubled = {s for s, n in got.items() if n > 1}
    assert doubled == set(seqs) - below_checkpoint(log, seqs, after)
    print(f"read-only mid-run: exit 0 with {len(doubled)} of 800 records sent again by the next run")


# -- the input changed under the run -------------------------------------------------------------------------------
@contextlib.contextmanager
def mid_run(tmp_path, log) -> Iterator[tuple[FakeSegment, subprocess.Popen]]:
    """A backfill of `log` to a slow fake, once 100 records arrived (the reader is a few hundred ahead)."""
    with FakeSegment() as fake:
        fake.script(["slow:0.05"] * 1000)
        with reaped(start(fake, tmp_path, log, *SLOW_ARGS)) as proc:
            fake.wait_for(lambda: len(fake.messages) >= 100, timeout=30)
            yield fake, proc


def test_a_dead_letter_never_written_is_not_reported_as_written(tmp_path, tiny_fs):
    """--dead-letter on a read-only file system and one event the vendor refuses: the write is retried and the
    line not acknowledged (one error line); stopped, the run must not say "dead letters: 1 rejected → file" of a
    file that does not exist (it counted before writing)."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(100))
    (tiny_fs / "dl").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    dead = tiny_fs / "dl" / "dead.jsonl"
    with FakeSegment(reject_message_ids=[gen.kong_record(37)["request"]["id"]]) as fake:
        argv = [sys.executable, "-m", "shipper", "backfill", str(log), *args(fake, tmp_path, "state", "--workers", "2",
                "--batch-size", "4", "--dead-letter", str(dead), "--shutdown-timeout", "1")]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env(20_000),
                                start_new_session=True)  # fmt: skip
        with reaped(proc):
            fake.wait_for(lambda: len(fake.messages) >= 99, timeout=30)
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    text = err.decode()
    assert proc.returncode == 143 and "cannot write the dead-letter file" in text and not dead.exists()
    assert checkpointed(tmp_path / "state") < log.stat().st_size  # the refused event is read again next time
    assert "dead letters: 1 rejected" not in text and "dead letters in the last" not in text, text[-1500:]


@pytest.mark.parametrize("how", ["truncated to a line end", "appended to", "deleted", "emptied then rewritten"])
def test_the_input_changed_under_the_run(tmp_path, how):
    log = tmp_path / "kong.json"
    seqs = range(800)
    gen.write_records(log, seqs)
    ends = line_ends(log)
    with mid_run(tmp_path, log) as (fake, proc):
        if how == "truncated to a line end":
            os.truncate(log, ends[599])
            expected = set(range(600))  # what the file still holds; what was read past the cut may be shipped too
        elif how == "appended to":
            gen.write_records(log, range(800, 900))
            expected = set(range(900))  # this run or the next
        elif how == "deleted":
            os.unlink(log)
            expected = set(seqs)  # the open file is read to its end
        else:
            os.truncate(log, 0)
            expected = set()
        fake.clear_script()
        _, err = proc.communicate(timeout=60)
        first = counts(fake)
        if how == "emptied then rewritten":
            gen.write_records(log, range(5000, 5100))
            expected = set(range(5000, 5100))
        if how != "deleted":
            again = backfill(fake, tmp_path, log, *SLOW_ARGS)
            assert again.returncode == 0, again.stderr.decode()[-2000:]
        got = counts(fake)
    text = no_traceback(err)
    assert proc.returncode == 0, text[-2000:]
    assert max(got.values()) == 1, sorted(s for s, n in got.items() if n > 1)[:10]
    assert expected <= set(got) <= expected | set(first)
    row = summary_rows(err)["segment"]
    assert row["read"] == row["shipped"] == len(first)


# -- the accounting: lines read = shipped + filtered + dead-lettered + rejected + skipped + blank ----------------
SECOND = 1000


def write_windowed_log(path) -> tuple[int, set[int]]:
    """300 good records a second apart (half a second past each whole second, so no record is on a bound); each
    poison kind twice, once inside the window (seconds 100-199) and once before it; blank lines. Returns the
    lines and the seqs to arrive with --since second 100 --until second 200."""
    log = LogBuilder()
    arrive: set[int] = set()
    kinds = sorted(poison.KINDS.items())
    for seq in range(300):
        log.add(gen.kong_line(gen.kong_record(seq, started_at=gen.BASE_STARTED_AT + seq * SECOND + 500)))
        if 100 <= seq < 200:
            arrive.add(seq)
        if seq % 10 == 5 and seq // 10 < len(kinds):
            name, (make, expected) = kinds[seq // 10]
            inside = 150 * SECOND + seq  # started_at = BASE_STARTED_AT + this (ms): in the window
            log.add(make(inside))
            log.add(make(1000 + seq))  # 1 s past BASE_STARTED_AT: before the window
            if expected["segment"] is None:
                arrive.add(inside)
        if seq % 37 == 0:
            log.add(b"\n")
    path.write_bytes(log.data())
    return len(log.lines), arrive


def test_the_summary_accounts_for_every_line_with_a_window_and_poison_lines(tmp_path):
    log = tmp_path / "kong.json"
    lines, arrive = write_windowed_log(log)
    since, until = str(gen.BASE_STARTED_AT // 1000 + 100), str(gen.BASE_STARTED_AT // 1000 + 200)
    reasons = [expected["segment"] for _, expected in poison.KINDS.values()]
    shipped_kinds, encoding_kinds = reasons.count(None), reasons.count("too_deep")
    rows = {}
    with FakeSegment() as fake:
        for workers, block in (("0", 1 << 20), ("2", 3000)):
            fake.messages.clear()
            state = f"s{workers}-{block}"
            out = ship("backfill", str(log), *args(fake, tmp_path, state, "--workers", workers, "--since", since,
                                                   "--until", until, "--batch-size", "4"), env=env(block))  # fmt: skip
            text = no_traceback(out.stderr)
            assert out.returncode == 0, text[-2000:]
            got = counts(fake)
            exactly_once(got, arrive)
            rows[state] = row = summary_rows(out.stderr)["segment"]
            dead = (tmp_path / state / "dead-letter.jsonl").read_text().splitlines()
            assert row["read"] == lines and accounted(row) == lines, row
            assert row["shipped"] == len(arrive) and row["dead-lettered"] == len(dead) and row["blank"] == 9
            # Filtered: the 200 good records outside the window, and before it the poison lines that parse (those
            # shipped inside it, and those only their encoding refuses: the window is applied first).
            assert row["filtered"] == 200 + shipped_kinds + encoding_kinds, row
            assert row["dead-lettered"] == 2 * (len(poison.KINDS) - shipped_kinds) - encoding_kinds, row
            assert "window" in text  # the filtered line says why
            assert [o for o, _ in positions(tmp_path / state).values()] == [log.stat().st_size]
    # The block path (blocks of one or two records) counts as the line path does.
    assert rows["s2-3000"] == rows["s0-1048576"], rows


@pytest.mark.parametrize("value", ["abc", "0", "-5", "99999999999"])
def test_a_block_size_out_of_range_is_one_line_and_exit_2(tmp_path, value):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3))
    result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "s"),
                  env={**env(1), "KONG_SHIP_BLOCK_BYTES": value})  # fmt: skip
    (line,) = result.stderr.decode().splitlines()
    assert result.returncode == 2 and "KONG_SHIP_BLOCK_BYTES" in line and not result.stdout
