"""The file source alone, on real files: identity, partial and oversize lines, gzip, every kind of rotation."""

from __future__ import annotations

import gzip
import os
import time

import pytest

from shipper.sources.files import FileSource, Oversize
from shipper.sources.identity import Known, family, identity, tail_hash


class Reader:
    """Drives a FileSource the way a lane does and collects what it yields."""

    def __init__(self, patterns, checkpoints=None, **kw):
        self.checkpoints = checkpoints or {}  # file_id -> offset, or Known
        self.source = FileSource([str(p) for p in patterns], known=self.known, **kw)
        self.lines: list[tuple[str, bytes, int, int]] = []
        self.clock = time.monotonic()  # checks see a clock that moves 1 s per round: no waiting in tests

    def known(self, fingerprint):
        return {
            fid: entry if isinstance(entry, Known) else Known(entry, None)
            for fid, entry in self.checkpoints.items()
            if family(fid) == fingerprint
        }

    def step(self, rounds=3):
        for _ in range(rounds):
            self.source.discover()
            self.lines.extend(
                (fid, data if isinstance(data, bytes) else data, off, end) for fid, data, off, end in self.source.read_round()
            )
            self.clock = max(self.clock + 1.0, time.monotonic())
            self.source.check(now=self.clock)

    def payloads(self):
        return [data for _, data, _, _ in self.lines if isinstance(data, bytes)]


def append(path, *lines, end=b"\n"):
    with open(path, "ab") as handle:
        for line in lines:
            handle.write(line + end)


def test_lines_offsets_and_a_half_line_that_completes_later(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"one", b"two")
    with open(log, "ab") as handle:
        handle.write(b"thr")
    reader = Reader([log])
    reader.step()
    assert [(d, o, e) for _, d, o, e in reader.lines] == [(b"one", 0, 4), (b"two", 4, 8)]
    append(log, b"ee")
    reader.step()
    assert reader.lines[-1][1:] == (b"three", 8, 14)


def test_identity_is_the_first_line_and_survives_rename(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"first line", b"second")
    reader = Reader([tmp_path / "kong.json*"])
    reader.step()
    file_id = reader.lines[0][0]
    os.rename(log, tmp_path / "kong.json.1")
    append(tmp_path / "kong.json.1", b"late write")
    append(log, b"new file")
    reader.step()
    assert reader.payloads() == [b"first line", b"second", b"late write", b"new file"]
    by_payload = {d: fid for fid, d, _, _ in reader.lines}
    assert by_payload[b"late write"] == file_id and by_payload[b"new file"] != file_id


def test_file_shorter_than_a_line_waits_to_be_identified(tmp_path):
    log = tmp_path / "kong.json"
    log.write_bytes(b"no newline yet")
    reader = Reader([log])
    reader.step()
    assert reader.lines == []
    append(log, b"")
    reader.step()
    assert reader.payloads() == [b"no newline yet"]


def test_rename_and_create_reads_the_old_file_to_its_end_then_lets_go(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"a1", b"a2")
    reader = Reader([log], rotate_wait=0.0)
    reader.step()
    os.rename(log, tmp_path / "rotated")
    append(tmp_path / "rotated", b"a3-late")  # the writer has not reopened yet
    append(log, b"b1")
    reader.step()
    assert reader.payloads() == [b"a1", b"a2", b"a3-late", b"b1"]
    assert len(reader.source.files) == 1  # the old one was let go once drained and quiet


def test_copytruncate_is_read_again_from_the_start(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"old-1", b"old-2", b"old-3")
    reader = Reader([log])
    reader.step()
    with open(log, "r+b") as handle:
        handle.truncate(0)
    append(log, b"new-1")
    reader.step()
    assert reader.payloads() == [b"old-1", b"old-2", b"old-3", b"new-1"]
    assert reader.lines[-1][2] == 0  # offset 0 again, under a new identity
    assert reader.lines[-1][0] != reader.lines[0][0]


def test_truncate_and_rewrite_past_our_position_is_noticed_by_the_head(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"x1")
    reader = Reader([log])
    reader.step()
    with open(log, "r+b") as handle:
        handle.truncate(0)
    append(log, b"a much longer first line than before", b"and more")
    reader.lines.clear()
    reader.step()
    assert reader.payloads() == [b"a much longer first line than before", b"and more"]


def test_deleted_while_being_read_is_finished_from_the_open_handle(tmp_path):
    log = tmp_path / "kong.json"
    append(log, *[b"line-%d" % i for i in range(3)])
    reader = Reader([log], rotate_wait=0.0)
    reader.source.discover()
    handle = next(iter(reader.source.files.values()))
    os.unlink(log)
    reader.lines.extend(reader.source.read_round())
    reader.step()
    assert reader.payloads() == [b"line-0", b"line-1", b"line-2"]
    assert reader.source.files == {}
    with pytest.raises(OSError):
        os.fstat(handle.fd)  # closed


def test_symlink_repointed(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    append(first, b"from-a")
    append(second, b"from-b")
    link = tmp_path / "current.json"
    link.symlink_to(first)
    reader = Reader([link], rotate_wait=0.0)
    reader.step()
    tmp = tmp_path / "tmp-link"
    tmp.symlink_to(second)
    os.replace(tmp, link)
    reader.step()
    assert reader.payloads() == [b"from-a", b"from-b"]


def test_inode_reuse_is_not_mistaken_for_the_old_file(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"original content line")
    reader = Reader([log], rotate_wait=0.0)
    reader.step()
    old_id = reader.lines[0][0]
    os.unlink(log)
    reader.step()  # let go of the deleted file, freeing its inode
    append(log, b"replacement")
    reader.step()
    assert reader.payloads() == [b"original content line", b"replacement"]
    assert reader.lines[-1][0] != old_id and reader.lines[-1][2] == 0


def test_oversize_line_becomes_one_marker_and_the_file_goes_on(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"before", b"x" * 5000, b"after")
    append(log, b"y" * 3000)
    reader = Reader([log], max_line_bytes=2048)
    reader.step()
    kinds = [(type(d).__name__, o, e) for _, d, o, e in reader.lines]
    assert kinds == [("bytes", 0, 7), ("Oversize", 7, 5008), ("bytes", 5008, 5014), ("Oversize", 5014, 8015)]
    marker = reader.lines[1][1]
    assert isinstance(marker, Oversize) and marker.length == 5000 and marker.prefix == b"x" * 4096


def test_oversize_line_arriving_in_pieces(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"ok")
    reader = Reader([log], max_line_bytes=1024)
    reader.step()
    with open(log, "ab") as handle:
        handle.write(b"z" * 3000)
    reader.step()
    with open(log, "ab") as handle:
        handle.write(b"z" * 3000 + b"\nnext\n")
    reader.step()
    assert [(type(d).__name__, o, e) for _, d, o, e in reader.lines] == [
        ("bytes", 0, 3), ("Oversize", 3, 6004), ("bytes", 6004, 6009)
    ]


def test_gzip_rotation_keeps_identity_and_offsets(tmp_path):
    lines = [b'{"n": %d}' % i for i in range(100)]
    plain = tmp_path / "kong.json.1"
    append(plain, *lines)
    reader = Reader([plain])
    reader.step()
    file_id, _, _, end_of_50 = reader.lines[49]
    packed = tmp_path / "kong.json.1.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    # A later run that had acknowledged only the first 50 lines resumes inside the compressed copy.
    later = Reader([packed], checkpoints={file_id: end_of_50}, follow=False)
    later.step()
    assert later.payloads() == lines[50:]
    assert {fid for fid, *_ in later.lines} == {file_id}


def test_start_at_end_skips_history_of_existing_files_only(tmp_path):
    old = tmp_path / "old.json"
    append(old, b"history-1", b"history-2")
    with gzip.open(tmp_path / "old.json.2.gz", "wb") as packed:  # a compressed rotation's history too
        packed.write(b"history-gz-1\nhistory-gz-2\n")
    reader = Reader([tmp_path / "*.json*"], start_at_end=True)
    reader.step()
    append(old, b"fresh")
    append(tmp_path / "new.json", b"new-file-line")
    reader.step()
    assert sorted(reader.payloads()) == [b"fresh", b"new-file-line"]


def test_backfill_reads_oldest_first_and_reports_unterminated_last_lines(tmp_path):
    newer, older = tmp_path / "b.json", tmp_path / "a-older.json"
    append(newer, b"newer")
    append(older, b"older")
    with open(newer, "ab") as handle:
        handle.write(b"half")
    os.utime(older, (1_000_000, 1_000_000))
    reader = Reader([tmp_path / "*.json"], follow=False)
    source = reader.source
    source.discover()
    got = []
    for handle in list(source.files.values()):
        got.extend(d for _, d, _, _ in source.read_file_to_end(handle))
    assert got == [b"older", b"newer"]
    assert source.unterminated == [(str(newer), 4)]


def test_many_files_are_read_fairly(tmp_path):
    busy = tmp_path / "busy.json"
    append(busy, *[b"b" * 100] * 20000)  # ~2 MB
    quiet = tmp_path / "quiet.json"
    append(quiet, b"quiet-1")
    reader = Reader([tmp_path / "*.json"])
    reader.source.discover()
    first_round = list(reader.source.read_round())
    assert b"quiet-1" in [d for _, d, _, _ in first_round]  # not starved behind the busy file
    assert len(first_round) < 20000


def test_paths_that_are_not_regular_files_are_skipped(tmp_path):
    (tmp_path / "dir.json").mkdir()
    os.mkfifo(tmp_path / "fifo.json")  # opening a FIFO would block the reader forever
    append(tmp_path / "good.json", b"good")
    reader = Reader([tmp_path / "*.json"])
    reader.step()
    assert reader.payloads() == [b"good"]


def test_idle_files_are_closed_and_reopened_when_they_grow(tmp_path):
    log = tmp_path / "quiet.json"
    append(log, b"one")
    reader = Reader([log], idle_close=5.0)
    reader.step(rounds=10)  # the test clock moves 1 s per round: idle long enough
    assert reader.source.files == {}
    reader.step()
    assert reader.source.files == {}  # not reopened while unchanged
    append(log, b"two")
    reader.step()
    assert reader.payloads() == [b"one", b"two"]


# -- identity: files that begin alike, copies, checkpoints confirmed by their tail hash ------------------------
def test_files_that_begin_alike_are_two_files(tmp_path):
    append(tmp_path / "a.json", b"same first line", b"a-2", b"a-3")
    append(tmp_path / "b.json", b"same first line", b"b-2")
    reader = Reader([tmp_path / "*.json"])
    reader.step()
    assert sorted(reader.payloads()) == sorted([b"same first line", b"a-2", b"a-3", b"same first line", b"b-2"])
    ids = {fid for fid, *_ in reader.lines}
    assert len(ids) == 2 and len({family(fid) for fid in ids}) == 1


def test_a_copy_continues_where_the_truncated_original_was_read(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"a-1", b"a-2")
    reader = Reader([tmp_path / "kong.json*"])
    reader.step()
    old_id = reader.lines[0][0]
    append(log, b"a-3")  # written, not read yet
    (tmp_path / "kong.json.1").write_bytes(log.read_bytes())  # copytruncate: the copy...
    reader.step(rounds=1)  # ...is seen while the original is still whole (and a-3 read from it)
    with open(log, "r+b") as handle:
        handle.truncate(0)  # ...then the truncate
    append(log, b"b-1")
    append(tmp_path / "kong.json.1", b"a-4")  # (only to show the copy is followed from where the original was)
    reader.step()
    assert reader.payloads() == [b"a-1", b"a-2", b"a-3", b"b-1", b"a-4"]
    assert [fid for fid, data, *_ in reader.lines if data in (b"a-3", b"a-4")] == [old_id, old_id]


def test_a_copy_made_after_our_position_ships_only_what_we_had_not_read(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"a-1", b"a-2")
    reader = Reader([tmp_path / "kong.json*"])
    reader.step()
    append(log, b"a-3")  # lands in the copy only: the truncate comes before we read it
    (tmp_path / "kong.json.1").write_bytes(log.read_bytes())
    with open(log, "r+b") as handle:
        handle.truncate(0)
    append(log, b"b-1")
    reader.step()
    assert sorted(reader.payloads()) == [b"a-1", b"a-2", b"a-3", b"b-1"]


def test_a_gzip_copy_next_to_its_open_source_is_not_read_twice(tmp_path):
    plain = tmp_path / "kong.json.1"
    append(plain, b"r-1", b"r-2")
    reader = Reader([tmp_path / "kong.json.1*"], rotate_wait=0.0)
    reader.step()
    packed = tmp_path / "kong.json.1.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    reader.step()  # both exist: one reader
    os.unlink(plain)
    reader.step()
    assert reader.payloads() == [b"r-1", b"r-2"]


def test_an_inode_reused_by_a_file_with_the_same_first_line_is_a_new_file(tmp_path):
    log = tmp_path / "kong.json"
    append(log, b"header line", b"old-2", b"old-3")
    reader = Reader([log], rotate_wait=0.0)
    reader.step()
    old_id = reader.lines[0][0]
    os.unlink(log)
    reader.step()
    append(log, b"header line", b"new-2")  # same first line; maybe the same inode; shorter than our position
    reader.step()
    assert reader.payloads() == [b"header line", b"old-2", b"old-3", b"header line", b"new-2"]
    assert reader.lines[-1][0] != old_id


def test_a_checkpoint_is_taken_only_by_the_file_whose_bytes_confirm_it(tmp_path):
    first, second = tmp_path / "b-first.json", tmp_path / "a-other.json"  # the other one is discovered first
    append(first, b"same first line", b"first-2", b"first-3")
    append(second, b"same first line", b"other-2", b"other-3")
    data = first.read_bytes()
    offset = data.index(b"first-3")
    file_id = identity(data[: data.index(b"\n") + 1])
    checkpoint = Known(offset, tail_hash(data[offset - 64 : offset]))
    reader = Reader([tmp_path / "*.json"], checkpoints={file_id: checkpoint})
    reader.step()
    assert sorted(reader.payloads()) == [b"first-3", b"other-2", b"other-3", b"same first line"]
    assert {fid for fid, d, *_ in reader.lines if d == b"first-3"} == {file_id}
