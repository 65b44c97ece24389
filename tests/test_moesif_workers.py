"""Issue 16: the Moesif lane transforms in worker processes. The sampling configuration is fetched in the parent
(`/v1/config`, refreshed on a new config ETag) and handed to the workers (MoesifSink.worker_state /
adopt_worker_state); a real `kong-ship backfill --workers 2` against the fake Moesif on loopback samples the same
events, with the same weights, as one process does, the workers do the transforming, and a configuration change
mid-run reaches them."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

import gen
from conftest import reaped, summary_rows, wait_until
from fakes.moesif import FakeMoesif
from test_block_workers import children
from test_moesif import ENV, RECENT, args, seq_of

BLOCK_ENV = {**ENV, "KONG_SHIP_BLOCK_BYTES": "16384"}  # ~6 records a block: many jobs, many hand-overs
# Sampled at 50 % (weight 2); vip users at 100 % (1), slow users at 20 % (5); company acme at 10 % (10), unless
# the user's rate is lower. Several rates, so a worker that samples by anything else is seen.
RATES = {"sample_rate": 50, "user_sample_rate": {"cust-vip": 100, "cust-slow": 20}, "company_sample_rate": {"acme": 10}}
# The summary's columns that each line read is counted in exactly one of (commands/running.py).
EVERY_LINE_ONCE = ("shipped", "filtered", "dead-lettered", "rejected", "skipped", "blank")
SLOW = ["--moesif-event-queue-size", "300", "--batch-size", "100", "--concurrency", "1"]


def write_mixed_users(path, seqs, user=lambda seq: ("vip", "slow", None)[seq % 3]) -> None:
    """Recent records (Moesif keeps 30 days), the user from `user(seq)`, every fourth one of company acme."""
    with open(path, "ab") as out:
        for seq in seqs:
            record = gen.kong_record(seq, started_at=RECENT + seq, consumer=user(seq))
            if seq % 4 == 0:
                record["request"]["headers"]["x-company"] = "acme"
            out.write(gen.kong_line(record))


def backfill(fake, tmp_path, log, state: str, workers: str, *more: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "shipper", "backfill", str(log), *args(fake, tmp_path / state),
            "--moesif-company-id-header", "x-company", "--workers", workers, *more]  # fmt: skip
    return subprocess.run(argv, capture_output=True, env=BLOCK_ENV, timeout=60)


def weights(fake: FakeMoesif) -> dict[int, int]:
    got = collections.Counter(seq_of(e) for e in fake.events)
    assert max(got.values(), default=1) == 1, "an event arrived twice"
    return {seq_of(e): e["weight"] for e in fake.events}


def test_two_workers_sample_the_same_events_with_the_same_weights_as_one_process(tmp_path):
    log = tmp_path / "kong.json"
    write_mixed_users(log, range(1200))
    with FakeMoesif(config=RATES) as fake:
        # The first fetch answered late: the first events wait for it, in the workers too (not sampled at 100 %).
        fake.script(["slow:0.5"])
        one = backfill(fake, tmp_path, log, "s0", "0")
        assert one.returncode == 0, one.stderr
        alone = weights(fake)
        fake.events.clear()
        fake.script(["slow:0.5"])
        two = backfill(fake, tmp_path, log, "s2", "2")
        assert two.returncode == 0, two.stderr
        pooled = weights(fake)
    assert pooled == alone  # the same set of events, each with the same weight
    assert set(pooled.values()) == {1, 2, 5, 10}  # every rate of the configuration was applied
    assert 200 < len(pooled) < 900
    row = summary_rows(two.stderr)["moesif"]
    assert row == summary_rows(one.stderr)["moesif"]
    assert row["read"] == 1200 and row["shipped"] == len(pooled)
    assert row["read"] == sum(row.get(column, 0) for column in EVERY_LINE_ONCE)
    assert row["skipped"] == 1200 - len(pooled)


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of a process, in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def test_the_worker_processes_do_the_transforming(tmp_path):
    log = tmp_path / "kong.json"
    write_mixed_users(log, range(3000))
    with FakeMoesif(config=RATES) as fake:
        fake.script(["slow:0.02"] * 200)  # the run lasts long enough to be watched
        argv = [sys.executable, "-m", "shipper", "backfill", str(log), *args(fake, tmp_path),
                "--moesif-company-id-header", "x-company", "--workers", "2", *SLOW]  # fmt: skip
        seen: dict[int, int] = {}  # worker pid -> the most CPU ticks seen
        with reaped(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=BLOCK_ENV,
                                     start_new_session=True)) as proc:  # fmt: skip
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    for pid in children(proc.pid):
                        seen[pid] = max(seen.get(pid, 0), cpu_ticks(pid))
                except OSError:
                    pass  # the run ended between the poll and the look
                time.sleep(0.02)
            assert proc.poll() == 0, proc.stderr.read() if proc.poll() is not None and proc.stderr else b"still running"
        assert len(fake.events) > 300
    # Both workers transformed: 3,000 Moesif events are a second or so of CPU; each worker had a good share.
    tick = os.sysconf("SC_CLK_TCK")
    assert len(seen) == 2, seen
    assert all(ticks >= 0.05 * tick for ticks in seen.values()), seen


def test_a_configuration_change_mid_run_reaches_the_workers(tmp_path):
    """vip users are kept at 100 % until the fake is told to answer with a new config ETag; then the parent
    fetches the new configuration (vip at 0 %) and hands it to the workers with the jobs that follow."""
    log = tmp_path / "kong.json"
    total = 4000
    write_mixed_users(log, range(total), user=lambda seq: ("vip", "other")[seq % 2])
    vip = [seq for seq in range(total) if seq % 2 == 0]
    before = {"sample_rate": 100, "user_sample_rate": {"cust-vip": 100}, "company_sample_rate": {}}
    after = {"sample_rate": 100, "user_sample_rate": {"cust-vip": 0}, "company_sample_rate": {}}
    with FakeMoesif(config=before, etag="v1") as fake:
        fake.script(["slow:0.02"] * 200)  # the reader is held back by the queue (SLOW), not at the end of the file
        argv = [sys.executable, "-m", "shipper", "backfill", str(log), *args(fake, tmp_path), "--workers", "2", *SLOW]
        with reaped(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=BLOCK_ENV,
                                     start_new_session=True)) as proc:  # fmt: skip
            wait_until(lambda: len(fake.events) >= 200, timeout=60)
            fake.set_config(after, etag="v2")  # from the next batch's answer on, it carries config ETag v2
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        got = weights(fake)
        config_requests = fake.config_requests
    assert config_requests >= 2
    assert {seq for seq in got if seq % 2} == set(range(1, total, 2))  # the others: every one, at 100 %
    kept = [seq for seq in vip if seq in got]
    assert kept == vip[: len(kept)]  # vip events kept up to the change, then none
    # The change came early: the reader is at most the queue (300), two batches and the jobs in the workers'
    # hands (about 600 records) ahead of the 200 delivered then; a worker still sampling by the old rules keeps all.
    assert 100 <= len(kept) < len(vip) // 2
    assert set(got.values()) == {1}
