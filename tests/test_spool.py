"""The spool: durable appends, a torn tail cut on reopen, sequence numbers carried across restarts, pruning of
acknowledged segments only."""

import os

import orjson

from shipper.sources.spool import Spool


def _lines(path):
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f.read().splitlines()]


def test_append_reopen_continues_the_sequence(tmp_path):
    spool = Spool(str(tmp_path))
    assert spool.append("event_hook", [{"n": 1}, {"n": 2}]) == 2
    spool.close()
    spool = Spool(str(tmp_path))
    spool.append("event_hook", [{"n": 3}])
    spool.close()
    (segment,) = spool.segments()
    got = _lines(segment)
    assert [e["seq"] for e in got] == [1, 2, 3]
    assert [e["record"]["n"] for e in got] == [1, 2, 3]
    assert all(e["spool"] == "event_hook" and e["received_at"].endswith("Z") for e in got)


def test_torn_tail_is_cut_on_reopen(tmp_path):
    spool = Spool(str(tmp_path))
    spool.append("event_hook", [{"n": 1}])
    spool.close()
    (segment,) = spool.segments()
    with open(segment, "ab") as f:
        f.write(b'{"spool":"event_hook","seq":2,"rec')  # a crash mid-write
    spool = Spool(str(tmp_path))
    spool.append("event_hook", [{"n": 2}])
    spool.close()
    assert [(e["seq"], e["record"]["n"]) for e in _lines(segment)] == [(1, 1), (2, 2)]


def test_segments_roll_and_only_acknowledged_old_ones_are_pruned(tmp_path):
    spool = Spool(str(tmp_path), segment_bytes=200)
    for n in range(6):
        spool.append("event_hook", [{"n": n, "pad": "x" * 100}])
    segments = spool.segments()
    assert len(segments) >= 3
    current = segments[-1]
    owed = {path: 0 for path in segments}
    owed[segments[1]] = 10  # one sink still owes bytes of this one
    removed = spool.prune(lambda: owed)
    assert segments[1] not in removed and current not in removed and segments[0] in removed
    assert os.path.exists(segments[1]) and os.path.exists(current) and not os.path.exists(segments[0])
    # Unknown to the pipeline: kept.
    assert spool.prune(dict) == []
    spool.close()
