"""Several sinks at once: every record goes to each; a sink that is down delays only itself and catches up
from the file later, with nothing lost."""

from __future__ import annotations

import collections

import gen
from conftest import FAST_FOLLOW, ship_env
from fakes.moesif import FakeMoesif
from fakes.segment import FakeSegment

ENV = ship_env(SEGMENT_WRITE_KEY="test-key", MOESIF_APPLICATION_ID="moesif-app")


def test_one_sink_down_does_not_hold_back_the_other(tmp_path, shippers):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(200))
    with FakeSegment() as segment, FakeMoesif() as moesif:
        moesif.set_down(True)
        proc = shippers(
            "tail", str(log), "--sink", "segment", "--sink", "moesif",
            "--endpoint", f"segment={segment.url}", "--endpoint", f"moesif={moesif.url}",
            "--state-dir", str(tmp_path / "state"), *FAST_FOLLOW, env=ENV,
        )
        segment.wait_for(lambda: len(segment.messages) >= 200, timeout=15)
        gen.write_records(log, range(200, 300))
        segment.wait_for(lambda: len(segment.messages) >= 300, timeout=15)
        assert moesif.events == [] and moesif.request_count > 0  # down, and being retried
        moesif.set_down(False)
        moesif.wait_for(lambda: len(moesif.events) >= 300, timeout=30)
        code, _, err = proc.stop()
        assert code == 0, err
    for seqs in (
        collections.Counter(gen.seq_of_segment_message(m) for m in segment.messages),
        collections.Counter(gen.seq_of_url(e["request"]["uri"]) for e in moesif.events),
    ):
        assert set(seqs) == set(range(300)) and max(seqs.values()) == 1
    assert (tmp_path / "state" / "checkpoints-segment.json").exists()
    assert (tmp_path / "state" / "checkpoints-moesif.json").exists()
