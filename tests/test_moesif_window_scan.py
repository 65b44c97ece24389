"""Issue 16: a Moesif backfill counts the records older than Moesif's 30-day window in a thread beside the run
(started once the workers have forked), not in a wait before it with the second core idle. The warning is still
said before the summary, and a scan that dies ends the run with exit 1 and one line, never 0.

The scan is replaced, in the real `kong-ship backfill` process, by one that waits for a file the test writes
only once the fake Moesif has received events: it returns only if the shipping runs beside it."""

from __future__ import annotations

import subprocess
import sys

import gen
from conftest import FAST, ship_env, wait_until
from fakes.moesif import FakeMoesif

ENV = ship_env(MOESIF_APPLICATION_ID="moesif-app")

WAITING_SCAN = """
import os, sys, time
import shipper.sinks.moesif as moesif
def waiting(paths, now=None):
    deadline = time.monotonic() + 20
    while not os.path.exists({marker!r}):
        if time.monotonic() > deadline:
            return "moesif: the scan waited alone: nothing was shipped beside it"
        time.sleep(0.01)
    return "moesif: 1 of 2 records started before then (the scan ran beside the shipping)"
moesif.count_outside_window = waiting
from shipper.cli import main
sys.argv = ["kong-ship"] + sys.argv[1:]
main()
"""

DYING_SCAN = """
import sys
import shipper.sinks.moesif as moesif
def dying(paths, now=None):
    raise RuntimeError("the scan broke")
moesif.count_outside_window = dying
from shipper.cli import main
sys.argv = ["kong-ship"] + sys.argv[1:]
main()
"""


def backfill(code: str, log, state, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, "backfill", str(log), "--sink", "moesif", "--endpoint", url, "--state-dir",
         str(state), *FAST, *extra],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_the_window_scan_runs_beside_the_shipping_and_is_said_before_the_summary(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(300))
    marker = tmp_path / "shipping-seen"
    with FakeMoesif() as fake:
        for workers in ("0", "2"):
            marker.unlink(missing_ok=True)
            before = len(fake.events)  # the first run's are there already
            proc = backfill(WAITING_SCAN.format(marker=str(marker)), log, tmp_path / f"state-{workers}", fake.url,
                            "--workers", workers)  # fmt: skip
            shipped_while_scanning = wait_until(lambda: len(fake.events) > before, timeout=10)
            marker.touch()
            out, err = proc.communicate(timeout=60)
            text = err.decode()
            assert shipped_while_scanning, text
            assert proc.returncode == 0, text
            said = text.index("the scan ran beside the shipping")  # not "waited alone"
            assert said < text.index("sink ")  # before the summary table
        seqs = [gen.seq_of_url(event["request"]["uri"]) for event in fake.events]
        assert sorted(seqs) == sorted(list(range(300)) * 2)  # every record once in each run


def test_a_scan_that_dies_ends_the_backfill_with_exit_1(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(50))
    with FakeMoesif() as fake:
        proc = backfill(DYING_SCAN, log, tmp_path / "state", fake.url)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err.decode()
    assert "the scan broke" in err.decode()
