"""`kong-ship status` tells, per route lane, the records no route matched (`unrouted`) over every run: saved with
the checkpoints beside the filtered totals (`filtered-<sink>.json`, key `unrouted`), added to run after run, and a
file from before the key still reads (its reasons kept, its unrouted 0)."""

from __future__ import annotations

import collections

import orjson
import pytest
from conftest import FAST, ship, ship_env, summary_rows
from fakes.segment import FakeSegment
from test_routing import config, seqs_at, write_teams

LANES = ("segment@team-a", "segment@team-b")


def backfill(log, path: str, state, workers: str) -> dict[str, dict[str, int]]:
    done = ship("backfill", str(log), "--config", path, "--state-dir", str(state), "--workers", workers, *FAST,
                env=ship_env())
    assert done.returncode == 0, done.stderr.decode()
    return summary_rows(done.stderr)


def status(state) -> tuple[str, dict]:
    human = ship("status", "--state-dir", str(state))
    assert human.returncode == 0, human.stderr.decode()
    said = ship("status", "--state-dir", str(state), "--json")
    assert said.returncode == 0, said.stderr.decode()
    return human.stdout.decode(), orjson.loads(said.stdout)


@pytest.mark.parametrize("workers", ["0", "2"])  # counted by the reader from the workers' outcomes too
def test_status_shows_the_unrouted_total_over_every_run(tmp_path, workers):
    log, state = tmp_path / "kong.json", tmp_path / "state"
    write_teams(log, range(30))  # seq % 3 == 2: team-c, which no route matches (and no default lane)
    with FakeSegment("key-a") as a, FakeSegment("key-b") as b:
        path = config(tmp_path, a.url, b.url)
        rows = backfill(log, path, state, workers)
        assert all(rows[lane]["unrouted"] == 10 for lane in LANES), rows
        human, said = status(state)
        for lane in LANES:
            assert f"{lane}: 10 unrouted (no route matched)" in human, human
        assert said["unrouted"] == {"segment@team-a": 10, "segment@team-b": 10}
        assert said["filtered"] == {}  # not a filter's drop: no `unrouted` reason, no filtered line
        assert "filtered (" not in human
        for lane in LANES:
            assert (state / f"filtered-{lane}.json").stat().st_mode & 0o777 == 0o600

        # a second run over 15 new lines (5 of team-c) adds its own to the earlier runs'
        write_teams(log, range(30, 45))
        rows = backfill(log, path, state, workers)
        assert all(rows[lane]["read"] == 15 and rows[lane]["unrouted"] == 5 for lane in LANES), rows
        human, said = status(state)
        assert said["unrouted"] == {"segment@team-a": 15, "segment@team-b": 15}
        assert "segment@team-a: 15 unrouted (no route matched)" in human, human
    assert seqs_at(a) == collections.Counter(range(0, 45, 3))  # and the routed records shipped, each once
    assert seqs_at(b) == collections.Counter(range(1, 45, 3))


def test_a_filtered_file_from_before_the_unrouted_key_still_reads_and_keeps_its_reasons(tmp_path):
    log, state = tmp_path / "kong.json", tmp_path / "state"
    state.mkdir(mode=0o700)
    # as an earlier kong-ship wrote it: reasons only
    (state / "filtered-segment@team-a.json").write_bytes(orjson.dumps({"filter:exclude-path": 4}))
    human, said = status(state)
    assert said["unrouted"] == {}
    assert said["filtered"] == {"segment@team-a": {"filter:exclude-path": 4}}
    assert "unrouted" not in human
    assert "segment@team-a: 4 filtered (filter:exclude-path 4)" in human, human

    write_teams(log, range(12))
    with FakeSegment("key-a") as a, FakeSegment("key-b") as b:
        backfill(log, config(tmp_path, a.url, b.url), state, "0")
    human, said = status(state)
    assert said["unrouted"] == {"segment@team-a": 4, "segment@team-b": 4}
    assert said["filtered"] == {"segment@team-a": {"filter:exclude-path": 4}}  # the old reasons kept, as they were
    assert orjson.loads((state / "filtered-segment@team-a.json").read_bytes()) == {
        "filter:exclude-path": 4, "unrouted": 4,
    }
