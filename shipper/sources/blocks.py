"""Backfill in blocks (issue 16): a file is cut into blocks of whole lines (about BLOCK_BYTES each, cut just
past a newline) that worker processes split and transform themselves (`transform.transform_block`), so the
reader does no per-line work for the common line and nothing is pickled per line.

Only for a file read once to its end (backfill) whose first line is not a container runtime's (Docker's
json-file or CRI: those join split lines across any cut, so they keep the line path). The line path
(`FileSource.read_file_to_end`) still takes what blocks cannot:
- a line longer than a block: the line path's chunks read it (kept whole up to --max-line-bytes, else an
  `Oversize`), then blocks go on from the first line start after it;
- the end of the file: the bytes after the last newline (an unterminated last line) are the line path's, which
  leaves them unconsumed and reported (a plain file's) or ships them (a compressed file is final), as ever.
The reader's position (`base`, `read_pos`, `before`) is moved past each block as the line path would have moved
it past the block's lines, so checkpoints, rotation hand-over and the progress bar see no difference.

A gzip file is decompressed here, in order (it is one stream), into one buffer reused for every block (igzip's
readinto, see reading.py: a fresh 1 MiB object is a mapping of its own, page faults included, allocator.py), and
each block is what was decompressed up to its last newline after the bytes carried from the one before: the
bytes after that newline wait in `handle.buf` as the line path keeps a partial line (`base` at its start,
`read_pos` past it), so the line path can take over at any point (a line longer than a block, which it reads on
to the end of its chunk; the end of the file). Offsets are decompressed bytes as on the line path, so
checkpoints, a resume inside the archive and the progress bar (compressed bytes) are the same. Measured on the
benchmark's Kong log gzipped (100,000 records, 2 workers, loopback Segment): the reader thread's CPU falls from
19.5-22 µs/record (zlib's GzipFile, lines in chunks of 512) to 13.2-13.5; reading alone (FileSource.read_all)
from 11.5-13.3 to 6.6-7.2, of which igzip's decompression is about 2.3.

A block's bytes are kept by the `keep` the reader is given: with worker processes, copied into memory shared with
them (workers.BlockRing), so a job in a worker's queue is a few dozen bytes, not a pickled megabyte.

`KONG_SHIP_BLOCK_BYTES` sets the block size (for tests and measurements).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from shipper.errors import ConfigError
from shipper.sources.container import Framer, Unframed
from shipper.sources.reading import (
    CHUNK, DOCKER_PREFIX, GZIP_ERRORS, PREFIX_BYTES, Line, OpenFile, before, read_failed,
)  # fmt: skip

def _block_bytes(text: str | None) -> int:
    if not text:
        return 1 << 20
    value = int(text) if text.strip().isdecimal() else 0
    if not 1 <= value <= 1 << 30:  # imported by the command that runs: main's one line, exit 2
        raise ConfigError(f"KONG_SHIP_BLOCK_BYTES={text!r}: expected a number of bytes from 1 to 1073741824")
    return value


BLOCK_BYTES = _block_bytes(os.environ.get("KONG_SHIP_BLOCK_BYTES"))


class Shared(NamedTuple):
    """Where a block's bytes lie in memory shared with the worker processes (workers.BlockRing), instead of in
    the job itself."""

    at: int
    size: int


Keep = Callable[[memoryview], "bytes | Shared"]  # the bytes of a block, kept while the block is in flight


@dataclass(slots=True)
class Block:
    """Whole lines of a file: `data` starts at offset `start` (a line start) and ends with a newline. `data` is
    `Shared` when the reader kept it in memory shared with the workers (workers.BlockRing): the worker that takes
    the block reads its lines from there."""

    file_id: str
    data: bytes | Shared
    start: int
    lines: int  # newlines in `data`: each line has its ack sequence number, as on the line path
    limit: int  # --max-line-bytes
    framed: bool  # auto-detected container framing: lines that do not start with `{` go through a Framer


def fits_blocks(handle: OpenFile) -> bool:
    """Can this open file be read in blocks? Not a container runtime's log (see the docstring)."""
    framer = handle.framer
    if framer is None:
        return True
    return framer.mode == "auto" and not handle.head.startswith(DOCKER_PREFIX) and not is_cri(handle.head)


def is_cri(line: bytes) -> bool:
    """Is this a CRI log line (as `--format cri` would take it)?"""
    made = list(Framer("cri", 1 << 30).frame("", line, 0, len(line) + 1))
    return not made or type(made[0][1]) is not Unframed


def read_blocks(
    handle: OpenFile,
    block_bytes: int,
    limit: int,
    read_chunk: Callable[[OpenFile], Iterator[Line]],
    read_to_end: Callable[[OpenFile], Iterator[Line]],
    keep: Keep = bytes,
) -> Generator[Block | Line, None, int]:
    """Blocks of `handle` from its position (a line start), then the line path for what blocks cannot take;
    returns the bytes read as blocks, less those the line path read that blocks read again (the source counts
    them). `keep` keeps a block's bytes, read into a buffer reused for the next block (a copy of them by
    default)."""
    if handle.gz is not None:
        done = yield from gzip_blocks(handle, block_bytes, limit, read_chunk, keep)
    else:
        done = yield from plain_blocks(handle, block_bytes, limit, read_chunk, keep)
    yield from read_to_end(handle)
    return done


def newlines(area: bytearray, end: int) -> int:
    """The newlines in `area[:end]`: each has its sequence number. bytes.count walks a one-byte needle a byte at
    a time (0.74 ms a MiB); a find (memchr) per line of Kong's ~2.7 kB takes 0.20 ms; with lines under ~2 kB
    (32 newlines in the first 64 KiB) count is the cheaper again, and counts the rest."""
    find = area.find
    count, at = 0, -1
    while (at := find(b"\n", at + 1, end)) >= 0:
        count += 1
        if count == 32 and at < 32 * 2048:
            return count + area.count(b"\n", at + 1, end)
    return count


def plain_blocks(
    handle: OpenFile, block_bytes: int, limit: int, read_chunk: Callable[[OpenFile], Iterator[Line]],
    keep: Keep = bytes,
) -> Generator[Block | Line, None, int]:
    """A plain file's blocks, each read at the line start it begins with into one buffer reused for every block
    and copied up to its last newline (one fresh object per block instead of two: 6.7 -> 4.5-4.9 µs/record to
    read and cut the bench log, see gzip_blocks)."""
    file_id = handle.file_id
    assert file_id is not None
    framed = handle.framer is not None
    area = bytearray(block_bytes)
    view = memoryview(area)
    done = 0
    while not handle.finished:
        start = handle.base
        assert handle.read_pos == start and not handle.buf and handle.discard_from is None
        try:
            got = os.preadv(handle.fd, [view], start)
        except OSError:
            break  # the line path reads again and reports the error
        cut = area.rfind(b"\n", 0, got) + 1
        if cut == 0:
            if got < block_bytes:
                break  # the end: nothing, or an unterminated last line
            # A line longer than a block: the line path's chunks until they have passed its newline.
            while handle.base == start and not handle.finished:
                at = handle.read_pos
                yield from read_chunk(handle)
                if handle.read_pos == at:
                    break
            if handle.base == start:
                break
            # Back to the line start the line path stopped at: the partial line it holds (or the line over the limit
            # it was skipping, which starts there) is read again as blocks.
            done -= handle.read_pos - handle.base  # counted by the line path, and read again here
            handle.read_pos, handle.buf, handle.recent = handle.base, b"", handle.before
            handle.discard_from, handle.discard_prefix = None, b""
            continue
        handle.before = before(handle.before, view, cut)
        handle.recent = handle.before
        handle.base = handle.read_pos = start + cut
        handle.last_data = time.monotonic()
        done += cut
        yield Block(file_id, keep(view[:cut]), start, newlines(area, cut), limit, framed)
    return done


def gzip_blocks(
    handle: OpenFile, block_bytes: int, limit: int, read_chunk: Callable[[OpenFile], Iterator[Line]],
    keep: Keep = bytes,
) -> Generator[Block | Line, None, int]:
    """A gzip file's blocks, decompressed in order into one buffer reused for every block (see the docstring)."""
    file_id, gz = handle.file_id, handle.gz
    assert file_id is not None and gz is not None
    framed = handle.framer is not None
    area = bytearray()
    done = 0
    while not handle.finished:
        assert handle.discard_from is None and handle.read_pos == handle.base + len(handle.buf)
        carried, start, prior = handle.buf, handle.base, handle.before  # `prior`: the bytes before `area`
        size = len(carried) + block_bytes
        if len(area) < size:
            area = bytearray(size)  # once (again only after a line longer than a block)
        view = memoryview(area)
        view[: len(carried)] = carried
        end, failure = len(carried), None
        while end < size:  # in CHUNKs, so an error loses no more than the line path would have lost
            try:
                got = gz.readinto(view[end : min(size, end + CHUNK)])
            except GZIP_ERRORS as exc:
                failure = exc
                break
            if not got:
                break
            end += got
        cut = area.rfind(b"\n", 0, end) + 1
        done += end - len(carried)
        handle.read_pos += end - len(carried)
        handle.recent = before(prior, view, end)
        handle.buf = bytes(view[cut:end])
        handle.last_data = time.monotonic()
        if cut:
            handle.before, handle.base = before(prior, view, cut), start + cut
            yield Block(file_id, keep(view[:cut]), start, newlines(area, cut), limit, framed)
        view.release()
        if failure is not None:
            read_failed(handle, failure)  # as on the line path: said, and the rest (with `buf`) skipped
            break
        if cut == 0 or end < size:
            if len(handle.buf) > limit:  # a partial line over the limit: skipped to its end as the line path does
                handle.discard_from, handle.discard_prefix = handle.base, handle.buf[:PREFIX_BYTES]
                handle.buf = b""
            if end < size:
                break  # the end: the line path ships an unterminated last line (a compressed file is final)
            # A line longer than a block: the line path's chunks until they have passed its newline and any line
            # over the limit starting in them; then blocks go on after the partial line it keeps.
            while (handle.base == start or handle.discard_from is not None) and not handle.finished:
                at = handle.read_pos
                yield from read_chunk(handle)
                if handle.read_pos == at:
                    break
    return done

