"""Backfill in blocks (issue 16): a plain file is cut into blocks of whole lines (about BLOCK_BYTES each, cut
just past a newline) that worker processes split and transform themselves (`transform.transform_block`), so
the reader does no per-line work for the common line and nothing is pickled per line.

Only for a plain (not gzip) file read once to its end (backfill) whose first line is not a container runtime's
(Docker's json-file or CRI: those join split lines across any cut, so they keep the line path). The line path
(`FileSource.read_file_to_end`) still takes what blocks cannot:
- a line longer than a block: the line path's chunks read it (kept whole up to --max-line-bytes, else an
  `Oversize`), then blocks go on from the first line start after it;
- the end of the file: the bytes after the last newline (an unterminated last line) are the line path's, which
  leaves them unconsumed and reported, as ever.
The reader's position (`base`, `read_pos`, `before`) is moved past each block as the line path would have moved
it past the block's lines, so checkpoints, rotation hand-over and the progress bar see no difference.

The reader reads each block itself (and counts its newlines: each line gets its ack sequence number when read, in
file order, so a checkpoint can never pass lines in the workers' hands) and sends the bytes. Measured on the
benchmark's Kong log (2.7 kB/record): the parent's CPU for handing 20,000 records to 2 workers and taking their
outcomes back falls from ~10 µs/record (lines in chunks of 512) to ~7.7; reading, cutting, pickling and piping
the bytes costs ~7.5 µs/record for both ends of the pipe together. Workers that pread their own ranges would save
the parent its part, but then the line count (the sequence numbers) is known only when the result comes back,
after lines read later: not done.

`KONG_SHIP_BLOCK_BYTES` sets the block size (for tests and measurements).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from shipper.sources.container import Framer, Unframed
from shipper.sources.reading import DOCKER_PREFIX, Line, OpenFile, before

BLOCK_BYTES = int(os.environ.get("KONG_SHIP_BLOCK_BYTES") or 1 << 20)


@dataclass(slots=True)
class Block:
    """Whole lines of a file: `data` starts at offset `start` (a line start) and ends with a newline."""

    file_id: str
    data: bytes
    start: int
    lines: int  # newlines in `data`: each line has its ack sequence number, as on the line path
    limit: int  # --max-line-bytes
    framed: bool  # auto-detected container framing: lines that do not start with `{` go through a Framer


def fits_blocks(handle: OpenFile) -> bool:
    """Can this open file be read in blocks? Plain, and not a container runtime's log (see the docstring)."""
    if handle.gz is not None:
        return False
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
) -> Generator[Block | Line, None, int]:
    """Blocks of `handle` from its position (a line start), then the line path for what blocks cannot take;
    returns the bytes read as blocks (the source counts them)."""
    file_id = handle.file_id
    assert file_id is not None
    framed = handle.framer is not None
    done = 0
    while not handle.finished:
        start = handle.base
        assert handle.read_pos == start and not handle.buf and handle.discard_from is None
        try:
            data = os.pread(handle.fd, block_bytes, start)
        except OSError:
            break  # the line path reads again and reports the error
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) < block_bytes:
                break  # the end: nothing, or an unterminated last line
            # A line longer than a block: the line path's chunks until they have passed its newline.
            while handle.base == start and not handle.finished:
                at = handle.read_pos
                yield from read_chunk(handle)
                if handle.read_pos == at:
                    break
            if handle.base == start:
                break
            # Back to the line start the line path stopped at: the partial line it holds is read again as blocks.
            handle.read_pos, handle.buf, handle.recent = handle.base, b"", handle.before
            continue
        if cut < len(data):
            data = data[:cut]
        handle.before = before(handle.before, data, cut)
        handle.recent = handle.before
        handle.base = handle.read_pos = start + cut
        handle.last_data = time.monotonic()
        done += cut
        yield Block(file_id, data, start, data.count(b"\n"), limit, framed)
    yield from read_to_end(handle)
    return done
