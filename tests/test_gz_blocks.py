"""Issue 16: gzip files in a backfill go to the worker processes in blocks too (sources/blocks.py: decompressed
in the reader, in order, cut at newlines), as `kong-ship backfill` processes with 2 workers against the fake
Segment. Compared with the line path (--workers 0) on the same files: every record exactly once whatever the
block size (lines straddling block ends, lines longer than a block, lines over --max-line-bytes one after the
other, blank, invalid and CRLF lines, an unterminated last line, a plain + gzip rotation set), the same dead
letters, counts, checkpoints, `kong-ship status` and progress bar; a container runtime's gzip log keeps the line
path; a kill -9 and a restart (resuming inside the archive) lose nothing; a truncated or corrupt archive is
reported and what came before it shipped once."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import zlib

import orjson
import pytest

import gen
from conftest import LogBuilder, ship, summary_rows
from blockrun import MAX_LINE, args, counts, env, kill_9_mid_run_then_restart, positions
from fakes.segment import FakeSegment
from shipper.delivery.acks import AckTracker
from shipper.sources.blocks import Block
from shipper.sources.files import FileSource
from shipper.sources.identity import TAIL_BYTES, tail_hash
from shipper.sources.reading import CHUNK
from shipper.sources.resume import Resume



def record(seq: int, pad: int = 0) -> bytes:
    rec = gen.kong_record(seq)
    if pad:
        # A Kong record over --max-line-bytes: shipped if it ever escaped the limit.
        rec["pad"] = ("pad ding " * (pad // 9 + 1))[:pad]
    return gen.kong_line(rec)


def mixed(path, seqs: range, arrive: set[int], dead: set[tuple[str, int, str]]) -> LogBuilder:
    """Records with blank, whitespace-only, invalid and CRLF lines between them, and runs of lines over the limit
    (5-9 kB: longer than the smaller blocks, and so many that the line path's chunks often end inside one), a
    few of them longer than a 70 kB block."""
    log = LogBuilder()
    add = log.add
    for seq in seqs:
        add(record(seq))
        arrive.add(seq)
        if seq % 17 == 3:
            add(b"\n")
            add(b" \t \n")
        if seq % 23 == 5:
            dead.add((str(path), add(b"this is no json {\n"), "not_json"))
        if seq % 3 == 1:
            dead.add((str(path), add(record(100_000 + seq, pad=4000 + seq % 5 * 1000)), "too_long"))
        if seq % 97 == 7:
            dead.add((str(path), add(record(200_000 + seq, pad=90_000)), "too_long"))
        if seq % 13 == 1:
            add(record(10_000 + seq).replace(b"\n", b"\r\n"))
            arrive.add(10_000 + seq)
    return log


def write_rotation_set(tmp_path) -> tuple[list[str], set[int], set[tuple[str, int, str]]]:
    """kong.json.2.gz, kong.json.1 (plain), other.json.gz ending in an unterminated line over the limit and
    last.json.gz ending in an unterminated record (shipped: a compressed file is final); oldest first."""
    arrive: set[int] = set()
    dead: set[tuple[str, int, str]] = set()
    oldest = tmp_path / "kong.json.2.gz"
    oldest.write_bytes(gzip.compress(mixed(oldest, range(0, 300), arrive, dead).data()))
    plain = tmp_path / "kong.json.1"
    plain.write_bytes(mixed(plain, range(1000, 1300), arrive, dead).data())
    other = tmp_path / "other.json.gz"
    log = mixed(other, range(2000, 2300), arrive, dead)
    dead.add((str(other), log.add(record(2300, pad=3 * MAX_LINE).rstrip(b"\n")), "too_long"))
    other.write_bytes(gzip.compress(log.data()))
    last = tmp_path / "last.json.gz"
    log = mixed(last, range(3000, 3010), arrive, dead)
    log.add(record(3010).rstrip(b"\n"))
    arrive.add(3010)
    last.write_bytes(gzip.compress(log.data()))
    paths = [oldest, plain, other, last]
    for age, path in enumerate(paths):
        os.utime(path, (1_700_000_000 + age, 1_700_000_000 + age))
    return [str(p) for p in paths], arrive, dead


def content(path: str) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


def dead_letters(state) -> set[tuple[str, int, str]]:
    entries = [json.loads(line) for line in (state / "dead-letter.jsonl").read_text().splitlines()]
    return {(e["file"], e["offset"], e["reason"]) for e in entries}


def status(state) -> dict:
    """`kong-ship status --json` less the state directory and the times the checkpoints were written."""
    result = ship("status", "--state-dir", str(state), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(re.sub(rb'"updated": [\d.]+', b'"updated": 0', result.stdout.replace(bytes(state), b"S")))


def final_bar(stderr: bytes) -> str:
    """The last progress bar's `done/total MB` (on-disk bytes: compressed ones for a gzip file)."""
    bars = re.findall(rb"([\d.,]+/[\d.,]+ MB)", stderr)
    assert bars, stderr
    return bars[-1].decode()


def line_path_and_blocks(tmp_path, paths: list[str], block: int, *more: str, code: int = 0):
    """(the --workers 0 run, the --workers 2 run, what the second delivered) on the same files, each ending with
    exit code `code`."""
    with FakeSegment() as fake:
        lines = ship("backfill", *paths, *args(fake, tmp_path, "s0", "--workers", "0", *more), env=env(block))
        assert lines.returncode == code, lines.stderr
        fake.messages.clear()
        blocks = ship("backfill", *paths, *args(fake, tmp_path, "s2", "--workers", "2", *more), env=env(block))
        assert blocks.returncode == code, blocks.stderr
        return lines, blocks, counts(fake)


@pytest.mark.parametrize("block", [300, 5000, 70_000, 1 << 20])
def test_a_rotation_set_with_gzip_files_every_record_exactly_once_whatever_the_block_size(tmp_path, block):
    paths, arrive, dead = write_rotation_set(tmp_path)
    more = ("--max-line-bytes", str(MAX_LINE), "--progress")
    lines, blocks, got = line_path_and_blocks(tmp_path, paths, block, *more)
    assert set(got) == arrive and max(got.values()) == 1
    assert dead_letters(tmp_path / "s0") == dead  # the oracle
    assert dead_letters(tmp_path / "s2") == dead
    assert summary_rows(blocks.stderr) == summary_rows(lines.stderr)
    # The same checkpoints (each file's offset, decompressed for a gzip file, and the hash of the bytes before
    # it), the same status, the same progress bar (compressed bytes: 1.6/1.6 MB for 4.7 MB of lines).
    assert positions(tmp_path / "s2") == positions(tmp_path / "s0")
    sizes = {path: len(content(path)) for path in paths}
    sizes[paths[3]] += 1  # its unterminated last record: the line path's offsets count a newline after each line
    assert {path: offset for path, (offset, _) in positions(tmp_path / "s2").items()} == sizes
    assert status(tmp_path / "s2") == status(tmp_path / "s0")
    assert final_bar(blocks.stderr) == final_bar(lines.stderr)
    on_disk = sum(os.path.getsize(path) for path in paths)
    assert final_bar(blocks.stderr).endswith(f"/{on_disk / 1e6:,.1f} MB")


@pytest.mark.parametrize("name", ["kong.json.1.gz", "kong.json.1"])
def test_a_file_comes_in_blocks_of_whole_lines(tmp_path, name):
    """In the reader: blocks that start at a line start and end with a newline, in order, with every byte (but
    the unterminated last line of a plain file, which may still get its newline)."""
    path = tmp_path / name
    log = LogBuilder()
    for seq in range(200):
        log.add(record(seq) if seq % 7 else record(seq).replace(b"\n", b"\r\n"))
        if seq % 11 == 3:
            log.add(b"\n" if seq % 2 else b"this is no json {\n")
        if seq == 190:
            log.add(record(100_000, pad=3 * MAX_LINE))  # longer than a block: the line path's
    log.add(record(200).rstrip(b"\n"))
    data = log.data()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    source = FileSource([str(path)], known=lambda fingerprint: {}, follow=False, max_line_bytes=MAX_LINE)
    items = list(source.read_all(blocks=5000))
    source.close()
    blocks = [item for item in items if isinstance(item, Block)]
    longest = max(len(line) for line in data.splitlines(keepends=True) if len(line) < MAX_LINE)
    assert len(blocks) > 60 and all(b.data.endswith(b"\n") for b in blocks)
    sizes = sorted(len(b.data) for b in blocks)  # about a block, cut at a newline (shorter before a long line)
    assert 5000 - longest < sizes[len(sizes) // 2] and sizes[-1] < 5000 + longest
    assert all(data[b.start : b.start + len(b.data)] == b.data for b in blocks)
    assert all(b.lines == b.data.count(b"\n") for b in blocks)
    # With the lines the line path took (over a block, the end), every line once, in file order.
    starts = [item.start if isinstance(item, Block) else item[2] for item in items]
    ends = [item.start + len(item.data) if isinstance(item, Block) else item[3] for item in items]
    assert starts == sorted(starts) and starts[0] == 0 and all(end == start for end, start in zip(ends, starts[1:]))
    last = len(record(200)) - 1
    if name.endswith(".gz"):
        assert ends[-1] == len(data) + 1  # shipped, the line path's offsets count a newline after it
    else:
        assert ends[-1] == len(data) - last and source.unterminated == [(str(path), last)]
    assert source.bytes_read == len(data)  # what the summary's MB/s counts


class AcksArrivingDuringSave(AckTracker):
    """The last line's acknowledgement arrives while the checkpoints are being saved (after the snapshot)."""

    late: tuple[str, int, int] | None = None

    def committed(self) -> dict[str, int]:
        snapshot = super().committed()
        if self.late is not None:
            self.ack(*self.late)
            self.late = None
        return snapshot


def test_a_file_let_go_is_forgotten_only_once_its_last_acknowledgement_is_saved(tmp_path):
    """A backfill lets go of a file read to its end while its last lines are delivered: the save that sees it
    let go must not forget it under an acknowledgement that came after its snapshot."""
    acks = AcksArrivingDuringSave()
    acks.start("f", 0)
    first, second = acks.issue("f"), acks.issue("f")
    acks.ack("f", first, 100)
    acks.late = ("f", second, 200)
    resume = Resume(str(tmp_path), "segment", acks)
    source = FileSource([], known=resume.known, follow=False)  # it has let go of every file
    resume.save(source)
    assert resume.store.entries["f"].offset == 100
    resume.save(source)
    assert resume.store.entries["f"].offset == 200 and acks.committed() == {}


def docker(content: bytes, piece: int = 0) -> bytes:
    """Docker json-file entries for one line: 16 KiB splits carry no trailing newline, the last one has it."""
    text = content.decode()
    parts = [text[i : i + piece] for i in range(0, len(text), piece)] if piece else [text]
    return b"".join(orjson.dumps({"log": p, "stream": "stdout", "time": "2026-01-01T00:00:00Z"}) + b"\n" for p in parts)


def test_a_container_runtimes_gzip_log_keeps_the_line_path(tmp_path):
    """Split lines (Docker's pieces) are joined across any cut: such a file is never cut into blocks."""
    path = tmp_path / "abc-json.log.1.gz"
    path.write_bytes(gzip.compress(b"".join(docker(record(seq), piece=700 if seq % 2 else 0) for seq in range(150))))
    source = FileSource([str(path)], known=lambda fingerprint: {}, follow=False)
    items = list(source.read_all(blocks=5000))
    source.close()
    assert len(items) == 150 and not any(isinstance(item, Block) for item in items)
    _, _, got = line_path_and_blocks(tmp_path, [str(path)], 5000)
    assert set(got) == set(range(150)) and max(got.values()) == 1


def test_kill_9_mid_gzip_file_then_a_restart_resumes_inside_it_and_loses_nothing(tmp_path):
    seqs = range(4000)
    data = b"".join(record(seq) for seq in seqs)
    path = tmp_path / "kong.json.1.gz"
    path.write_bytes(gzip.compress(data))
    line_ends = list(itertools.accumulate(len(line) for line in data.splitlines(keepends=True)))
    first, got, saved = kill_9_mid_run_then_restart(tmp_path, path, len(seqs))
    assert saved in line_ends  # a checkpoint is a line end, in decompressed bytes
    assert set(got) == set(seqs)
    doubled = {s for s, n in got.items() if n > 1}
    # The restart goes on inside the archive: only what the first run delivered past its checkpoint comes again.
    past_checkpoint = {seq for seq, end in zip(seqs, line_ends) if end > saved}
    assert doubled <= set(first) & past_checkpoint
    assert max(got.values()) <= 2
    assert positions(tmp_path / "state") == {str(path): (len(data), tail_hash(data[-TAIL_BYTES:]))}


def damaged(tmp_path, how: str) -> tuple[str, list[int], int]:
    """(path, line ends, decompressed bytes readable) of a gzip file of 3,000 records: cut half-way (truncated),
    or in two members the second of which has an invalid deflate block (corrupt: isal's error, not zlib's) or an
    unknown compression method (bad header)."""
    data = b"".join(record(seq) for seq in range(3000))
    half = data.index(record(1500))
    if how == "truncated":
        packed = gzip.compress(data)
        packed = packed[: len(packed) // 2]
        readable = len(zlib.decompressobj(31).decompress(packed))
    else:
        second = bytearray(gzip.compress(data[half:]))
        if how == "corrupt":
            second[10] = 0b111  # the first deflate block: final, of the reserved type 3
        else:
            second[2] = 9  # the compression method: 8 is deflate
        packed = gzip.compress(data[:half]) + bytes(second)
        readable = half
    path = tmp_path / "kong.json.1.gz"
    path.write_bytes(packed)
    line_ends = list(itertools.accumulate(len(line) for line in data.splitlines(keepends=True)))
    return str(path), line_ends, readable


@pytest.mark.parametrize("how", ["truncated", "corrupt", "bad header"])
def test_a_damaged_gzip_file_is_reported_and_what_came_before_shipped_once(tmp_path, how):
    """... and the run ends with exit 1, as for any input that could not be read (it ended 0)."""
    path, line_ends, readable = damaged(tmp_path, how)
    lines, blocks, got = line_path_and_blocks(tmp_path, [path], 70_000, code=1)
    for run in (lines, blocks):
        assert re.search(rb"ERROR: error reading " + re.escape(path.encode()) + rb" at \d+: .+ \(the rest of it is "
                         rb"skipped\)", run.stderr), run.stderr  # fmt: skip
        assert run.stderr.rstrip().endswith(b"1 input(s) could not be read, whole or in part (said above)"), run.stderr
    parsed = ship("parse", path)
    whole = sum(end <= readable - CHUNK for end in line_ends)  # read before the failure, as above
    assert parsed.returncode == 1 and whole <= parsed.stdout.count(b"\n") <= sum(end <= readable for end in line_ends)
    # Whole lines up to where decompression failed, less at most one read (CHUNK) of them, each once.
    assert max(got.values()) == 1 and set(got) == set(range(len(got)))
    assert {seq for seq, end in enumerate(line_ends) if end <= readable - CHUNK} <= set(got)
    assert summary_rows(blocks.stderr)["segment"]["shipped"] == len(got)
    assert positions(tmp_path / "s2") == {path: (line_ends[len(got) - 1], positions(tmp_path / "s2")[path][1])}
