"""One open log file and the lines in it: reads in chunks, lines longer than a chunk, lines over the limit, and
the bytes just before a position (what confirms a checkpoint, see identity.py); and what the file says of itself
through its descriptor (its first line, whether it still starts with it, is read up, or copies another file).

Offsets in gzip files count decompressed bytes, so positions survive compression. Gzip files are read with
ISA-L's igzip (a drop-in `GzipFile`): it decompresses the benchmark's Kong log in half zlib's time (0.31 s
against 0.68 s for 270 MB, 3.1 against 6.8 µs/record).
"""

from __future__ import annotations

import gzip
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from isal import igzip, isal_zlib

from shipper.sources.identity import HEAD_BYTES, TAIL_BYTES, head_of

if TYPE_CHECKING:  # container.py builds on this module
    from shipper.sources.container import Framer

CHUNK = 256 * 1024
GZIP_MAGIC = b"\x1f\x8b"
PREFIX_BYTES = 4096  # kept of an oversize line, for the dead-letter file
SUFFIX_BYTES = 256  # ... and its last bytes, for a container framing to tell what it was (container.py)
# Docker's json-file writer puts `log` first, always (container.py).
DOCKER_PREFIX = b'{"log":'
# What reading a gzip file may raise: truncated (EOFError), corrupt (isal's or zlib's error), a bad header
# (gzip.BadGzipFile, an OSError). (isal's stubs call its error an instance; it is a class.)
GZIP_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error, cast("type[Exception]", isal_zlib.error))

log = logging.getLogger("kong-ship")


@dataclass(slots=True)
class Oversize:
    """Stands in for a line longer than `max_line_bytes`: its first bytes and its full length, and its last bytes
    where the reader had them (b"": unknown)."""

    prefix: bytes
    length: int
    suffix: bytes = b""


@dataclass(slots=True)
class OpenFile:
    """A file being read, and where: the file source's unit of work."""

    path: str
    key: tuple[int, int]  # (st_dev, st_ino)
    fd: int
    gz: gzip.GzipFile | None
    file_id: str | None = None
    head: bytes = b""
    base: int = 0  # file offset of buf[0]; when not discarding, the start of the next line
    buf: bytes = b""
    read_pos: int = 0  # next byte to read (decompressed, for gzip files)
    before: bytes = b""  # the TAIL_BYTES before `base`: its tail hash once the file is let go or truncated
    recent: bytes = b""  # the TAIL_BYTES before `read_pos`
    discard_from: int | None = None  # start offset of an oversize line being skipped
    discard_prefix: bytes = b""
    last_data: float = field(default_factory=time.monotonic)
    last_check: float = 0.0
    path_seen: float = 0.0  # when discovery last found `path` leading to this file (check() takes its word)
    seen: os.stat_result | None = None  # what that stat said of the file, for the read round after it
    moved: bool = False  # the path no longer leads to this file (rotated, deleted, re-pointed)
    finished: bool = False  # a static file (gzip, backfill) read to its end
    read_error: str = ""  # why the rest of it could not be read (read_failed), if it could not
    framer: Framer | None = None  # container log framing (container.py); None: plain lines only
    # quiet.py: the file's settled stamp on the last round that found nothing to read; passed over while it holds.
    quiet: tuple[int, int, int, int, int] | None = None


# (file_id, line or Oversize, offset of its first byte, offset just past its newline); with a framer, the line
# may also be what container.py makes of it (its `Item`).
Line = tuple[str, "bytes | Oversize | Any", int, int]


def lines_in(handle: OpenFile, data: bytes, max_line_bytes: int) -> Iterator[Line]:
    """Take in `data`, just read at `handle.read_pos`, and yield the lines it completes."""
    file_id = handle.file_id
    assert file_id is not None
    previous = handle.recent
    handle.read_pos += len(data)
    handle.recent = (previous + data[-TAIL_BYTES:])[-TAIL_BYTES:]
    handle.last_data = time.monotonic()
    if handle.discard_from is not None:
        newline = data.find(b"\n")
        if newline < 0:
            return
        end = handle.read_pos - len(data) + newline + 1
        last = data[max(0, newline - SUFFIX_BYTES) : newline]
        suffix = last if len(last) == SUFFIX_BYTES else (previous + last)[-SUFFIX_BYTES:]
        oversize = Oversize(handle.discard_prefix, end - handle.discard_from, suffix)
        yield from framed(handle, oversize, handle.discard_from, end)
        handle.discard_from, handle.discard_prefix = None, b""
        handle.base, handle.buf = end, b""
        handle.before = before(previous, data, newline + 1)
        previous, data = handle.before, data[newline + 1 :]
    buf = handle.buf + data if handle.buf else data
    lines = buf.split(b"\n")
    rest = lines.pop()
    start = handle.base
    if len(rest) < len(buf):
        handle.before = before(previous, data, len(data) - len(rest))
    handle.base = handle.read_pos - len(rest)
    if len(rest) > max_line_bytes:
        handle.discard_from, handle.discard_prefix = handle.base, rest[:PREFIX_BYTES]
        handle.buf = b""
    else:
        handle.buf = rest
    yield from emit(file_id, lines, start, max_line_bytes, handle.framer)


def at_eof(handle: OpenFile, unterminated: list[tuple[str, int]]) -> Iterator[Line]:
    """The end of a file that will not grow (gzip, one-shot commands)."""
    assert handle.file_id is not None
    framer = handle.framer
    if handle.gz is not None and handle.discard_from is not None:
        # A compressed file is final: its oversize last line is complete without a newline.
        start, end = handle.discard_from, handle.read_pos
        oversize = Oversize(handle.discard_prefix, end - start, handle.recent[-SUFFIX_BYTES:])
        handle.discard_from, handle.discard_prefix, handle.base, handle.before = None, b"", end, handle.recent
        yield from framed(handle, oversize, start, end)
    elif handle.gz is not None and handle.buf:
        line, start = handle.buf, handle.base
        handle.buf, handle.base, handle.before = b"", start + len(line), handle.recent
        yield from emit(handle.file_id, [line], start, None, framer)
    elif handle.gz is None and (handle.buf or handle.discard_from is not None or pending(handle)):
        # A plain file's last line (or the pieces of a container line) may still get its newline (its last
        # piece): not shipped now, a later run (or tail) will.
        since = handle.base if framer is None or framer.pending_from is None else framer.pending_from
        unterminated.append((handle.path, handle.read_pos - since))
    if handle.gz is not None and framer is not None and framer.pending_from is not None:
        # A compressed file is final: a split container line whose last piece never came ends with it.
        yield framer.finish(handle.file_id, handle.read_pos)
    handle.finished = True


def restart(handle: OpenFile) -> None:
    """Truncated (copytruncate): new content, read from its start under a new identity once its first line is
    complete."""
    handle.file_id, handle.head = None, b""
    handle.discard_from, handle.discard_prefix = None, b""
    if handle.framer is not None:
        handle.framer.reset()  # the pieces of a split container line in the old content went with it
    handle.base = handle.read_pos = 0
    handle.buf = handle.before = handle.recent = b""
    handle.quiet = None


def resume_point(handle: OpenFile) -> tuple[int, bytes]:
    """Where a copy of a file let go of (the rotated file, compressed) or the file opened again goes on, and the
    bytes before it: past the last line handed on, or at the first piece of a split container line that still
    waits for its last piece (read again whole, never in half)."""
    framer = handle.framer
    offset = framer.pending_from if framer is not None else None  # pending(handle), spelled so mypy narrows
    if offset is not None and handle.gz is None:
        return offset, pread_before(handle.fd, offset)
    return handle.base, handle.before


def pending(handle: OpenFile) -> bool:
    """Is a split container line waiting for its last piece in this file?"""
    return handle.framer is not None and handle.framer.pending_from is not None


def emit(file_id: str, lines: list[bytes], start: int, limit: int | None, framer: Framer | None = None) -> Iterator[Line]:
    """The lines, with their offsets; those over `limit` as `Oversize`; through the framer, if any, those that
    may be container log lines (see container.py)."""
    plain = framer is None
    direct = framer is not None and framer.direct  # changes only in framer.frame
    for line in lines:
        end = start + len(line) + 1
        if limit is not None and len(line) > limit:
            if framer is None:
                yield file_id, Oversize(line[:PREFIX_BYTES], len(line)), start, end
            else:
                oversize = Oversize(line[:PREFIX_BYTES], len(line), line[-SUFFIX_BYTES:])
                yield from framer.frame(file_id, oversize, start, end)
                direct = framer.direct
        elif plain or (direct and line[:1] == b"{"):
            yield file_id, line, start, end  # the hot path: a plain line, a JSON line with a framer
        else:
            yield from framer.frame(file_id, line, start, end)  # type: ignore[union-attr]
            direct = framer.direct  # type: ignore[union-attr]
        start = end


def framed(handle: OpenFile, item: Oversize, start: int, end: int) -> Iterator[Line]:
    assert handle.file_id is not None
    if handle.framer is None:
        yield handle.file_id, item, start, end
    else:
        yield from handle.framer.frame(handle.file_id, item, start, end)


def seek(handle: OpenFile, offset: int) -> None:
    """Position a file at `offset` (a line start): nothing buffered, the bytes before it noted."""
    handle.base = handle.read_pos = offset
    handle.buf = b""
    if handle.framer is not None:
        handle.framer.start(handle.head)
    handle.before = handle.recent = reader(handle)(offset) if offset else b""
    if handle.gz is not None:
        handle.gz.seek(offset)


def reader(handle: OpenFile) -> Callable[[int], bytes]:
    """The bytes just before an offset (decompressed, for gzip files: this moves the stream)."""
    if handle.gz is None:
        return lambda offset: pread_before(handle.fd, offset)
    gz = handle.gz

    def read_before(offset: int) -> bytes:
        start = max(0, offset - TAIL_BYTES)
        gz.seek(start)
        return gz.read(offset - start)

    return read_before


class GzipReader(igzip.IGzipFile):
    """igzip's GzipFile, whose `readinto` decompresses into the caller's buffer (GzipFile's reads into a new bytes
    object and copies it: a mapping of its own for a big read, see allocator.py)."""

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self._check_not_closed()  # type: ignore[attr-defined]
        return self._buffer.readinto(buffer)  # type: ignore[attr-defined,no-any-return]


def open_gzip(fd: int) -> gzip.GzipFile:
    """A decompressing reader of the gzip file open at `fd` (on a descriptor of its own: closed by close_file)."""
    return GzipReader(fileobj=os.fdopen(os.dup(fd), "rb"), mode="rb")


def read_failed(handle: OpenFile, exc: Exception) -> None:
    """A read error (a corrupt or truncated gzip file, an I/O error): said once, the rest of the file skipped."""
    log.error("error reading %s at %d: %s (the rest of it is skipped)", handle.path, handle.read_pos, exc)
    handle.finished = True
    handle.read_error = str(exc) or type(exc).__name__


def close_file(handle: OpenFile) -> None:
    if handle.gz is not None:
        try:
            handle.gz.close()
            handle.gz.fileobj and handle.gz.fileobj.close()  # type: ignore[union-attr]
        except OSError:
            pass
    try:
        os.close(handle.fd)
    except OSError:
        pass


def before(previous: bytes, data: bytes | memoryview, cut: int) -> bytes:
    """The TAIL_BYTES before position `cut` of `data` (bytes, or a view of a reused buffer), given the bytes that
    preceded `data`."""
    if cut >= TAIL_BYTES:
        return bytes(data[cut - TAIL_BYTES : cut])  # bytes of bytes is the same object: no copy
    return (previous + data[:cut])[-TAIL_BYTES:]


def end_of_last_line(fd: int, size: int) -> int:
    """The offset just past the last newline before `size` (where `--start-at end` begins)."""
    pos = size
    while pos > 0:
        start = max(0, pos - CHUNK)
        block = os.pread(fd, pos - start, start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        pos = start
    return 0


def pread_before(fd: int, offset: int) -> bytes:
    start = max(0, offset - TAIL_BYTES)
    try:
        return os.pread(fd, offset - start, start)
    except OSError:
        return b""


# -- what an open file says of itself ---------------------------------------------------------------------------
def read_head(handle: OpenFile) -> bool:
    """Set `handle.head` to the file's first line; False while it has no complete first line."""
    if handle.gz is not None:
        data = handle.gz.read(HEAD_BYTES)
        handle.gz.seek(0)
        # A compressed file is final: its only line needs no newline.
        head = head_of(data) or data or None
    else:
        head = head_of(os.pread(handle.fd, HEAD_BYTES, 0))
    if head is None:
        return False  # no complete first line yet: nothing to ship, identify it later
    handle.head = head
    return True


def copy_so_far(handle: OpenFile, other: OpenFile, size: int | None) -> bool:
    """Is `handle` (same fingerprint as the open `other`) a copy of it so far: no byte it does not have?"""
    if handle.gz is not None or other.gz is not None:
        return True  # a .gz next to its source (or being written): one reader, the other follows it
    try:
        other_size = os.fstat(other.fd).st_size
    except OSError:
        return False
    if size is None or size > other_size:
        return False
    return pread_before(handle.fd, size) == pread_before(other.fd, size)


def still_same(handle: OpenFile) -> bool:
    """Not truncated: as long as what was read, and still starting with its first line (True if unknowable)."""
    try:
        return os.fstat(handle.fd).st_size >= handle.read_pos and head_matches(handle)
    except OSError:
        return True


def caught_up(handle: OpenFile) -> bool:
    """Nothing on disk past what was read (True if unknowable)."""
    try:
        return os.fstat(handle.fd).st_size <= handle.read_pos
    except OSError:
        return True


def head_matches(handle: OpenFile) -> bool:
    try:
        return os.pread(handle.fd, len(handle.head), 0) == handle.head
    except OSError:
        return True


def progress_of(handles: list[OpenFile]) -> int:
    """On-disk bytes consumed of open files: the read position, or the compressed position of a gzip file."""
    done = 0
    for handle in handles:
        if handle.gz is not None:
            try:
                # fileobj is typed optional: None once closed, and the AttributeError below says so.
                done += handle.gz.fileobj.tell()  # type: ignore[union-attr]
            except (AttributeError, OSError, ValueError):
                pass
        else:
            done += handle.read_pos
    return done
