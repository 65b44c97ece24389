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


def test_records_waiting_for_a_full_disk_are_weighed_with_what_each_costs_beside_its_bytes(tiny_fs):
    """While the spool cannot be written, the group commit keeps what the listeners read, up to `max_bytes`.
    Counted by their bytes alone, 2-byte `{}` lines (tcp-log, udp-log) made 8 MiB four million records, each ~150
    bytes of Python objects and envelope: over 600 MiB. Each now weighs its bytes plus what it costs beside them,
    and every record taken is still written once the disk has room."""
    from conftest import fill, wait_until

    from shipper.sources.spool import GroupCommit

    spool = Spool(str(tiny_fs / "spool"))
    spool.append("kong_log", [{"n": 0}])  # the segment exists: only appends fail now
    fill(tiny_fs)
    written = []
    commit = GroupCommit(spool, "kong_log", on_write=lambda records, nbytes: written.append(records),
                         max_bytes=256 << 10)
    commit.start(lambda reason: None)
    try:
        taken = 0
        while commit.add(b'{"n":%d}' % (taken + 1), wait=False):  # refused once max_bytes wait
            taken += 1
            assert taken <= 256 << 10, "never refused"
        # 256 KiB at ~250 bytes a record, counting the group being retried and the records waiting behind it.
        assert taken <= 2 * (256 << 10) // 200, f"{taken:,} records held while the spool could not be written"
        os.unlink(tiny_fs / "filler")
        assert wait_until(lambda: sum(written) == taken, timeout=20), (sum(written), taken)
    finally:
        commit.close()
        spool.close()
    (segment,) = spool.segments()
    assert [e["record"]["n"] for e in _lines(segment)] == list(range(taken + 1))
