"""Log files as a source of lines with positions: glob discovery, plain and gzip files, rotation.

A file is known by its content, not its inode: its identity (`file_id`) is a hash of its first line (at most
`HEAD_BYTES`), so a renamed file, a file compressed by logrotate and a file behind a re-pointed symlink are all
recognized, and a reused inode is not mistaken for the file that had it. Offsets in gzip files count
decompressed bytes, so positions survive compression.

Rotation:
- rename-and-create: the old file stays open and is read to its end; it is let go once it has been quiet for
  `rotate_wait` seconds (late writes from a writer that has not reopened yet still arrive);
- copytruncate: a size below our position, or a different first line at the same inode, means the file was
  truncated: it is read again from its start under its new identity;
- deleted while open: read to the end, then closed.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import logging
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger("kong-ship")

HEAD_BYTES = 4096  # the identity covers the first line, or this many bytes if the first line is longer
CHUNK = 256 * 1024
TAIL_BYTES = 64  # bytes before a checkpoint's offset whose hash is kept with it
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(slots=True)
class Oversize:
    """Stands in for a line longer than `max_line_bytes`: its first bytes and its full length."""

    prefix: bytes
    length: int


@dataclass(slots=True)
class _Open:
    path: str
    key: tuple[int, int]  # (st_dev, st_ino)
    fd: int
    gz: gzip.GzipFile | None
    file_id: str | None = None
    head: bytes = b""
    base: int = 0  # file offset of buf[0]; when not discarding, the start of the next line
    buf: bytes = b""
    read_pos: int = 0  # plain files: next byte to read
    discard_from: int | None = None  # start offset of an oversize line being skipped
    discard_prefix: bytes = b""
    last_data: float = field(default_factory=time.monotonic)
    last_check: float = 0.0
    moved: bool = False  # the path no longer leads to this file (rotated, deleted, re-pointed)
    finished: bool = False  # a static file (gzip, backfill) read to its end


def identity(head: bytes) -> str:
    return "f" + hashlib.blake2b(head, digest_size=8).hexdigest()


def tail_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def expand(patterns: list[str]) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths.extend(sorted(glob.glob(pattern)))
        elif os.path.exists(pattern):
            paths.append(pattern)
    return paths


# resume(file_id, path, size, read_before) -> the checkpointed offset to start at, or None for no checkpoint.
# `size` is None for gzip files (their compressed size says nothing about offsets); `read_before(offset)`
# returns the bytes just before an offset, to compare with the checkpoint's tail hash.
ResumeFn = Callable[[str, str, "int | None", "Callable[[int], bytes] | None"], "int | None"]


class FileSource:
    """Yields `(file_id, data, offset, end)` for each complete line; `data` is bytes, or `Oversize`.

    `resume` gives the checkpointed offset of a newly opened file; it is asked once per identity per run.
    Without a checkpoint a file is read from its start, except with `start_at_end` for files already there
    when the source starts. `follow=False` reads each file once to its end, oldest first (backfill).
    """

    def __init__(
        self,
        patterns: list[str],
        *,
        resume: ResumeFn,
        follow: bool = True,
        start_at_end: bool = False,
        max_line_bytes: int = 1 << 20,
        rotate_wait: float = 5.0,
        idle_close: float = 300.0,
        on_opened: Callable[[str, int], None] | None = None,
    ):
        self.patterns = [os.path.abspath(p) for p in patterns]
        self.follow = follow
        self.max_line_bytes = max_line_bytes
        self.rotate_wait = rotate_wait
        self.idle_close = idle_close  # a file read to its end and quiet this long is closed until it grows
        self._resume = resume
        self._on_opened = on_opened or (lambda file_id, offset: None)
        self.files: dict[tuple[int, int], _Open] = {}
        # The reader thread owns the files; the lock covers adding and closing them so that the checkpoint
        # writer (another thread) can look up a path or hash bytes without racing a close.
        self._lock = threading.RLock()
        self._read_to: dict[str, int] = {}  # identity -> where this run stopped reading it (after closing)
        # (dev, ino, size) of files read to the end and closed (gzip files, idle files): not opened again
        # unless their size changes.
        self._done: set[tuple[int, int, int]] = set()
        self._warned: set[str] = set()
        self._paths: dict[str, str] = {}  # identity -> the last path it was seen at, for closed files too
        self._start_at_end = start_at_end  # applies to the first discovery only
        self.bytes_read = 0
        self.unterminated: list[tuple[str, int]] = []  # (path, bytes) of last lines with no newline, backfill

    # -- discovery --------------------------------------------------------------------------------------------
    def discover(self) -> int:
        """Open files that match the patterns and are not open yet; returns how many were opened."""
        paths = expand(self.patterns)
        if not self.follow:
            paths.sort(key=lambda p: _mtime(p))
        opened = 0
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not _is_regular(st.st_mode):
                continue
            key = (st.st_dev, st.st_ino)
            current = self.files.get(key)
            if current is not None:
                if current.path != path and current.moved:
                    current.path, current.moved = path, False  # a rotated file matched under its new name
                continue
            if (st.st_dev, st.st_ino, st.st_size) in self._done:
                continue
            if self._open(path, st):
                opened += 1
        self._start_at_end = False
        return opened

    def _open(self, path: str, st: os.stat_result) -> bool:
        key = (st.st_dev, st.st_ino)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if path not in self._warned:
                self._warned.add(path)
                log.error("cannot open %s: %s (skipped until it becomes readable)", path, exc.strerror)
            return False
        self._warned.discard(path)
        gz = None
        try:
            if os.pread(fd, 2, 0) == GZIP_MAGIC:
                gz = gzip.GzipFile(fileobj=os.fdopen(os.dup(fd), "rb"), mode="rb")
            handle = _Open(path, key, fd, gz)
            if not self._identify(handle):
                self._close(handle)  # no complete first line yet: looked at again on the next discovery
                return False
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            log.error("cannot read %s: %s (skipped)", path, exc)
            os.close(fd)
            if gz is not None:
                self._done.add((st.st_dev, st.st_ino, st.st_size))
            return False
        file_id = handle.file_id
        assert file_id is not None
        if any(f.file_id == file_id for f in self.files.values()):
            # Same content under another inode (e.g. `x.1` and its `x.1.gz` while both exist): one reader.
            self._close(handle)
            return False
        offset = self._read_to.pop(file_id, None)
        if offset is None:
            offset = self._resume(file_id, path, None if gz else st.st_size, None if gz else self._reader(fd))
        if offset is None:
            offset = _end_of_last_line(fd, st.st_size) if self._start_at_end and gz is None else 0
        self._seek(handle, offset)
        self._on_opened(file_id, offset)
        self._paths[file_id] = path
        with self._lock:
            self.files[key] = handle
        return True

    def _identify(self, handle: _Open) -> bool:
        if handle.gz is not None:
            head = handle.gz.read(HEAD_BYTES)
            handle.gz.seek(0)
        else:
            head = os.pread(handle.fd, HEAD_BYTES, 0)
        newline = head.find(b"\n")
        if newline >= 0:
            head = head[: newline + 1]
        elif len(head) < HEAD_BYTES:
            if handle.gz is None:
                return False  # no complete first line yet: nothing to ship, identify it later
            if not head:
                return False
        handle.head = head
        handle.file_id = identity(head)
        return True

    def _seek(self, handle: _Open, offset: int) -> None:
        handle.base = handle.read_pos = offset
        handle.buf = b""
        if handle.gz is not None:
            handle.gz.seek(offset)

    # -- reading -----------------------------------------------------------------------------------------------
    def read_round(self) -> Iterator[tuple[str, bytes | Oversize, int, int]]:
        """One chunk from every open file in turn (fair between a busy and a quiet file)."""
        for handle in list(self.files.values()):
            if handle.finished:
                continue
            yield from self._read_chunk(handle)

    def read_file_to_end(self, handle: _Open) -> Iterator[tuple[str, bytes | Oversize, int, int]]:
        while not handle.finished:
            got = False
            for item in self._read_chunk(handle):
                got = True
                yield item
            if not got and not handle.finished:
                break

    def _read_chunk(self, handle: _Open) -> Iterator[tuple[str, bytes | Oversize, int, int]]:
        if handle.file_id is None and not self._reidentify(handle):
            return
        if handle.gz is None and self.follow and not self._head_matches(handle):
            # Truncated (copytruncate), perhaps already rewritten past our position: checking the first line
            # before every read keeps us from reading the new content from the old offset.
            self._truncated(handle, os.fstat(handle.fd).st_size)
            return
        try:
            if handle.gz is not None:
                data = handle.gz.read(CHUNK)
            else:
                data = os.pread(handle.fd, CHUNK, handle.read_pos)
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            log.error("error reading %s at %d: %s (the rest of it is skipped)", handle.path, handle.read_pos, exc)
            handle.finished = True
            return
        if not data:
            if handle.gz is not None or not self.follow:
                if handle.gz is not None and handle.buf and handle.discard_from is None:
                    # A compressed file is final: its last line needs no newline to be complete.
                    line, start = handle.buf, handle.base
                    handle.buf, handle.base = b"", start + len(line)
                    yield from self._emit(handle.file_id, [line], start)
                elif handle.buf:
                    self.unterminated.append((handle.path, len(handle.buf)))
                handle.finished = True
            return
        handle.read_pos += len(data)
        handle.last_data = time.monotonic()
        self.bytes_read += len(data)
        file_id = handle.file_id
        assert file_id is not None
        if handle.discard_from is not None:
            newline = data.find(b"\n")
            if newline < 0:
                return
            end = handle.read_pos - len(data) + newline + 1
            yield file_id, Oversize(handle.discard_prefix, end - handle.discard_from), handle.discard_from, end
            handle.discard_from, handle.discard_prefix = None, b""
            handle.base, handle.buf = end, b""
            data = data[newline + 1 :]
        buf = handle.buf + data if handle.buf else data
        lines = buf.split(b"\n")
        rest = lines.pop()
        start = handle.base
        handle.base = handle.read_pos - len(rest)
        if len(rest) > self.max_line_bytes:
            handle.discard_from, handle.discard_prefix = handle.base, rest[: 4096]
            handle.buf = b""
        else:
            handle.buf = rest
        yield from self._emit(file_id, lines, start)

    def _emit(self, file_id: str, lines: list[bytes], start: int) -> Iterator[tuple[str, bytes | Oversize, int, int]]:
        limit = self.max_line_bytes
        for line in lines:
            end = start + len(line) + 1
            if len(line) > limit:
                yield file_id, Oversize(line[:4096], len(line)), start, end
            else:
                yield file_id, line, start, end
            start = end

    def _reidentify(self, handle: _Open) -> bool:
        if not self._identify(handle):
            return False
        assert handle.file_id is not None
        size = os.fstat(handle.fd).st_size
        offset = self._resume(handle.file_id, handle.path, size, self._reader(handle.fd)) or 0
        self._seek(handle, offset)
        self._on_opened(handle.file_id, offset)
        return True

    # -- rotation and housekeeping -------------------------------------------------------------------------
    def check(self, now: float | None = None) -> None:
        """Notice rotation, truncation and deletion; close files that are done. Called between rounds."""
        now = time.monotonic() if now is None else now
        for key, handle in list(self.files.items()):
            if handle.finished:
                self._retire(key, handle, static=True)
                continue
            if handle.gz is not None or handle.file_id is None:
                continue
            if now - handle.last_check < 0.2:
                continue
            handle.last_check = now
            try:
                st = os.stat(handle.path)
                same = (st.st_dev, st.st_ino) == key
            except OSError:
                same = False
            if not same:
                if not handle.moved:
                    handle.moved = True
                    log.info("rotation: %s was moved or deleted; reading the old file to its end", handle.path)
                if now - handle.last_data >= self.rotate_wait and self._at_end(handle):
                    log.info("rotation: done with the old %s", handle.path)
                    self._retire(key, handle, static=False)
                continue
            size = os.fstat(handle.fd).st_size
            if size < handle.read_pos:
                self._truncated(handle, size)
            elif size == handle.read_pos and not handle.buf and now - handle.last_data >= self.idle_close:
                # Hundreds of quiet files (old rotations matched by a glob) should not hold hundreds of
                # descriptors: close it; discovery opens it again when its size changes.
                self._retire(key, handle, static=True)

    def _at_end(self, handle: _Open) -> bool:
        try:
            return os.fstat(handle.fd).st_size <= handle.read_pos
        except OSError:
            return True

    def _head_matches(self, handle: _Open) -> bool:
        try:
            return os.pread(handle.fd, len(handle.head), 0) == handle.head
        except OSError:
            return True

    def _truncated(self, handle: _Open, size: int) -> None:
        log.warning(
            "%s was truncated (size %d, we had read %d): reading it again from the start (copytruncate rotation)",
            handle.path,
            size,
            handle.read_pos,
        )
        handle.file_id, handle.head = None, b""
        handle.discard_from, handle.discard_prefix = None, b""
        handle.base = handle.read_pos = 0
        handle.buf = b""  # the new content gets a new identity, found when its first line is complete

    def _retire(self, key: tuple[int, int], handle: _Open, static: bool) -> None:
        if handle.file_id is not None:
            self._read_to[handle.file_id] = handle.base
        if static:
            try:
                st = os.fstat(handle.fd)
                self._done.add((st.st_dev, st.st_ino, st.st_size))
            except OSError:
                pass
        with self._lock:
            self._close(handle)
            del self.files[key]

    def _close(self, handle: _Open) -> None:
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

    def reopen(self) -> None:
        """SIGHUP: look at every path again now."""
        for handle in self.files.values():
            handle.last_check = 0.0
        self.discover()

    def close(self) -> None:
        with self._lock:
            for handle in self.files.values():
                self._close(handle)
            self.files.clear()

    # -- facts for checkpoints and status --------------------------------------------------------------------
    @staticmethod
    def _reader(fd: int) -> Callable[[int], bytes]:
        return lambda offset: _pread_before(fd, offset)

    def tail_hash(self, file_id: str, offset: int) -> str | None:
        """Hash of the bytes before `offset` in the file `file_id`, read from the open file, or from its last
        path if that still holds the same file; None for gzip files and files that are gone."""
        with self._lock:
            for handle in self.files.values():
                if handle.file_id == file_id:
                    if handle.gz is not None:
                        return None
                    data = _pread_before(handle.fd, offset)
                    return tail_hash(data) if data else None
        path = self._paths.get(file_id)
        if path is None or offset == 0:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            head = os.pread(fd, HEAD_BYTES, 0)
            newline = head.find(b"\n")
            if head[:2] == GZIP_MAGIC or identity(head[: newline + 1] if newline >= 0 else head) != file_id:
                return None
            data = _pread_before(fd, offset)
            return tail_hash(data) if data else None
        finally:
            os.close(fd)

    def disk_progress(self) -> int:
        """On-disk bytes consumed so far (compressed bytes for gzip files), for the backfill progress bar:
        files read to their end and let go count whole, open files up to their read position."""
        with self._lock:
            done = sum(size for _, _, size in self._done)
            handles = list(self.files.values())
        for handle in handles:
            if handle.gz is not None:
                try:
                    done += handle.gz.fileobj.tell()  # type: ignore[union-attr]
                except (AttributeError, OSError, ValueError):
                    pass
            else:
                done += handle.read_pos
        return done

    def path_of(self, file_id: str) -> str | None:
        with self._lock:
            for handle in self.files.values():
                if handle.file_id == file_id:
                    return handle.path
        return self._paths.get(file_id)

    def open_ids(self) -> set[str]:
        with self._lock:
            return {h.file_id for h in self.files.values() if h.file_id}

    def partial_lines(self) -> list[tuple[str, int]]:
        """Files with an unterminated last line (waiting for its newline): (path, bytes)."""
        return [(h.path, len(h.buf)) for h in self.files.values() if h.buf]

    def all_finished(self) -> bool:
        return all(h.finished for h in self.files.values())


def _end_of_last_line(fd: int, size: int) -> int:
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


def _pread_before(fd: int, offset: int) -> bytes:
    start = max(0, offset - TAIL_BYTES)
    try:
        return os.pread(fd, offset - start, start)
    except OSError:
        return b""


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)
