"""Issue 12, the rough edges a new user hit: stopping a backfill with workers (a real SIGINT/SIGTERM to the
process group, as a terminal's Ctrl-C and systemd's KillMode=control-group send them), inputs that match
nothing, offsets that read as line numbers, JSON on stderr, and the smaller nits. Real processes, real files."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import pytest

import gen
from conftest import FAST, ship, ship_env, summary_rows, wait_until
from fakes.segment import FakeSegment

ENV = ship_env(SEGMENT_WRITE_KEY="test-key")


# -- 1. Ctrl-C / SIGTERM on a backfill with workers ---------------------------------------------------------------
def _backfill(fake, tmp_path, log, *more):
    return [
        sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "segment", "--endpoint", fake.url,
        "--state-dir", str(tmp_path / "state"), "--workers", "2", *FAST, *more,
    ]


def _arrived(fake) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in list(fake.messages))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_group_stops_a_backfill_with_workers_at_once_and_the_next_run_resumes(tmp_path, signum):
    total = 12_000
    log = tmp_path / "kong.json"
    gen.write_records(log, range(total))
    with FakeSegment() as fake:
        # --max-rate keeps the run long (about 6 s) so the signal lands in the middle of it.
        proc = subprocess.Popen(
            _backfill(fake, tmp_path, log, "--max-rate", "2000", "--progress"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True,
        )
        try:
            assert wait_until(lambda: fake.message_count >= 1500, timeout=30), "the backfill never got going"
            os.killpg(proc.pid, signum)
            sent = time.monotonic()
            _, err = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        err = err.decode()
        assert proc.returncode == 128 + signum, err
        assert took < 8, f"took {took:.1f} s to stop (the shutdown timeout is 10 s)"
        assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Unpickling" not in err, err
        assert f"interrupted by {signal.Signals(signum).name}" in err and "of 1 file(s) done" in err, err
        bars = [part for part in err.replace("\n", "\r").split("\r") if "ETA" in part]
        assert bars and " 0% " not in bars[-1], bars[-1:]
        first = _arrived(fake)
        assert 0 < len(first) < total
        # The rerun ships the rest: together every record, duplicates only within what was in flight.
        again = subprocess.run(_backfill(fake, tmp_path, log), capture_output=True, env=ENV, timeout=120)
        assert again.returncode == 0, again.stderr.decode()
        both = _arrived(fake)
        assert set(both) == set(range(total))
        assert sum(n - 1 for n in both.values()) <= 1000
