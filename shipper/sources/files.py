"""Log files as a source of lines with positions: glob discovery, plain and gzip files, rotation.

Which file is which is decided by content (see `identity.py`): a fingerprint of the first line, confirmed by a
hash of the bytes before the position we resume at. Offsets in gzip files count decompressed bytes (positions
survive compression). An idle file costs one look a round (quiet.py).

Rotation:
- rename-and-create: the old file stays open and is read to its end; it is let go once it has been quiet for
  `rotate_wait` seconds (late writes from a writer that has not reopened yet still arrive);
- copytruncate: a size below our position, or a different first line at the same inode, means the file was
  truncated: it is read again from its start under a new identity, and a copy of the old content found under
  the patterns continues the old identity from where the truncated file had been read;
- deleted while open: read to the end, then closed.
A file with the fingerprint of an open file and the same bytes so far (a copy being made, a `.gz` written beside its
source) waits until the open file is let go, then goes on from where that one stopped.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import overload

from shipper.sources.blocks import Block, Keep, fits_blocks, read_blocks
from shipper.sources.container import Framer
from shipper.sources.identity import HEAD_BYTES, Known, choose, family, identity, new_id, tail_hash
from shipper.sources.ignore_older import older_than
from shipper.sources.inputs import expand, input_problems, mtime, open_files_cap
from shipper.sources.quiet import Stamp, settled_stamp, stamp
from shipper.sources.resume import Stopped
from shipper.sources.reading import (
    CHUNK, GZIP_ERRORS, GZIP_MAGIC, Line, OpenFile, Oversize, at_eof, caught_up, close_file, copy_so_far,
    end_of_last_line, head_matches, lines_in, open_gzip, pread_before, progress_of, read_failed, read_head, reader,
    restart, resume_point, seek, still_same,
)  # fmt: skip

log = logging.getLogger("kong-ship")

# What other modules take from here (the reading and input details live in reading.py and inputs.py).
__all__ = [
    "CHUNK", "GZIP_MAGIC", "HEAD_BYTES", "FileSource", "Oversize", "expand", "identity", "input_problems", "tail_hash",
]  # fmt: skip


# known(fingerprint) -> the checkpointed positions of the identities with that fingerprint.
KnownFn = Callable[[str], "dict[str, Known]"]


class FileSource:
    """Yields `(file_id, data, offset, end)` for each complete line; `data` is bytes, or `Oversize`.

    `known(fingerprint)` gives the checkpointed positions of the identities with that fingerprint; a newly
    opened file resumes at the one it confirms (see `identity.choose`). Without one a file is read from its
    start, except with `start_at_end` for files already there when the source starts, and with `ignore_older`
    for a file last modified before that (ignore_older.py). `follow=False` is for one-shot commands: `read_all()`
    reads each file once to its end, oldest first. `framing` (None, `auto`, `cri`, `docker`): container runtime
    lines are unwrapped, `data` is then what `container.py` makes of them.
    """

    def __init__(
        self,
        patterns: list[str],
        *,
        known: KnownFn,
        follow: bool = True,
        start_at_end: bool = False,
        ignore_older: float | None = None,
        max_line_bytes: int = 1 << 20,
        rotate_wait: float = 5.0,
        idle_close: float = 300.0,
        on_opened: Callable[[str, int], None] | None = None,
        framing: str | None = "auto",
    ):
        self.patterns = [os.path.abspath(p) for p in patterns]
        self.framing = framing
        self.follow = follow
        self.max_line_bytes = max_line_bytes
        self.rotate_wait = rotate_wait
        self.idle_close = idle_close  # a file read to its end and quiet this long is closed until it grows
        self._known = known
        self._on_opened = on_opened or (lambda file_id, offset: None)
        self.files: dict[tuple[int, int], OpenFile] = {}
        # The reader thread owns the files; the lock covers adding and closing them so that the checkpoint
        # writer (another thread) can look up a path or hash bytes without racing a close.
        self._lock = threading.RLock()
        # identity -> where this run stopped reading a file it let go of: a copy or a reopened file continues there.
        self._read_to: dict[str, Stopped] = {}
        # (dev, ino, size) of files read to the end and closed (gzip files, idle files): not opened again
        # unless their size changes.
        self._done: set[tuple[int, int, int]] = set()
        self._headless: dict[str, Stamp | None] = {}  # path -> the settled stamp of a file with no first line yet
        self._closed_progress = 0  # disk_progress of the files close() let go
        self._warned: set[str] = set()
        self._paths: dict[str, str] = {}  # identity -> the last path it was seen at, for closed files too
        self._start_at_end = start_at_end  # applies to the first discovery only
        self.ignore_older = ignore_older  # seconds: older files with no checkpoint hold history (ignore_older.py)
        self._bytes_read = 0  # of the files read as blocks to their end, and of every chunk of the line path
        # The file being read as blocks: it, and its read position and _bytes_read when its blocks began.
        self._in_blocks: tuple[OpenFile, int, int] | None = None
        self.unterminated: list[tuple[str, int]] = []  # (path, bytes) of last lines with no newline, backfill
        self.unread: list[str] = []  # one-shot commands: files whose rest could not be read (read_failed said why)
        # Files held open at most: half the descriptor limit, the rest left to sockets, checkpoints, dead letters
        # (80 matching files under a limit of 64 took every descriptor: nothing could be sent or saved).
        self.max_open = open_files_cap()

    # -- discovery --------------------------------------------------------------------------------------------
    def discover(self) -> int:
        """Open files that match the patterns and are not open yet; returns how many were opened."""
        opened = 0
        for path in self._candidates():
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                self._warn_once(path, "%s is a directory, not a log file: not read (use a glob such as %s/*.json)",
                                path, path.rstrip("/"))
                continue
            if not stat.S_ISREG(st.st_mode):
                self._warn_once(path, "%s is not a regular file: not read", path)
                continue
            key = (st.st_dev, st.st_ino)
            current = self.files.get(key)
            if current is not None:
                if current.path != path and current.moved:
                    current.path, current.moved = path, False  # a rotated file matched under its new name
                if current.path == path:  # what check() and the next read round see of it (one stat, not three)
                    current.path_seen, current.seen = time.monotonic(), st
                continue
            if (st.st_dev, st.st_ino, st.st_size) in self._done or self._headless.get(path) == stamp(st):
                continue
            if len(self.files) >= self.max_open and not self._make_room():
                self._warn_once("max-open", "%d files open, half the descriptor limit: the others wait for one to be "
                                "read to its end (LimitNOFILE reads more at once)", len(self.files))  # fmt: skip
                break
            if self._open(path, st):
                opened += 1
        self._start_at_end = False
        return opened

    def _make_room(self) -> bool:
        """Close the quietest file read to its end (opened again when it grows); False if none is."""
        done = [(handle.last_data, key) for key, handle in self.files.items() if handle.gz is None and handle.file_id
                and not handle.buf and caught_up(handle) and os.fstat(handle.fd).st_size == handle.read_pos]  # fmt: skip
        if done:
            key = min(done)[1]
            self._retire(key, self.files[key], static=True)
        return bool(done)

    def _candidates(self) -> list[str]:
        paths = []
        for pattern in self.patterns:
            matched = expand([pattern])
            if not matched and self.follow:
                # Said once: the file may well appear later (first start before Kong wrote anything).
                self._warn_once(pattern, "%s: %s yet; watching for it", pattern,
                                "no file matches" if glob.has_magic(pattern) else "no such file")
            paths.extend(matched)
        if not self.follow:
            paths.sort(key=mtime)
        return list(dict.fromkeys(paths))

    def _warn_once(self, what: str, message: str, *args: object) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, *args)

    def _open(self, path: str, st: os.stat_result) -> bool:
        key = (st.st_dev, st.st_ino)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # out of descriptors: this file's turn comes later
                self._warn_once("no-descriptors", "cannot open %s: %s (it waits for a descriptor)", path, exc.strerror)
                return False
            # One-shot commands checked their inputs up front (`input_problems`) and report them there.
            if self.follow and path not in self._warned:
                self._warned.add(path)
                log.error("cannot open %s: %s (skipped until it becomes readable)", path, exc.strerror)
            return False
        self._warned.discard(path)
        gz = None
        try:
            if os.pread(fd, 2, 0) == GZIP_MAGIC:
                gz = open_gzip(fd)
            framer = Framer(self.framing, self.max_line_bytes) if self.framing else None
            handle = OpenFile(path, key, fd, gz, framer=framer)
            if not read_head(handle) or not self._assign(handle, None if gz else st.st_size):
                # No first line yet (not opened again until its stamp changes), or a copy of an open file: for later.
                self._headless[path] = None if handle.head else settled_stamp(st)
                if not self.follow and gz is None and handle.file_id is None and st.st_size:
                    self.unterminated.append((path, st.st_size))
                close_file(handle)
                return False
        except GZIP_ERRORS as exc:
            log.error("cannot read %s: %s (skipped)", path, exc)
            os.close(fd)
            if gz is not None:
                self._done.add((st.st_dev, st.st_ino, st.st_size))
            if not self.follow:  # a one-shot command exits 1 for an input it could not read (said above)
                self.unread.append(path)
            return False
        with self._lock:
            self.files[key] = handle
        return True

    def _assign(self, handle: OpenFile, size: int | None) -> bool:
        """Give an identified file its identity and position; False to leave it for later (a copy of an open
        file, see the module's docstring)."""
        fingerprint = identity(handle.head)
        for other in list(self.files.values()):
            if other is handle or other.file_id is None or family(other.file_id) != fingerprint:
                continue
            if other.gz is None and not still_same(other):
                self._truncated(other)  # its old identity is free now: this file may be the copy
            elif copy_so_far(handle, other, size):
                return False
        held = {h.file_id for h in self.files.values() if h.file_id}
        known = dict(self._known(fingerprint))
        for file_id, stopped in self._read_to.items():  # newer than the checkpoints
            if family(file_id) == fingerprint:
                known[file_id] = Known(stopped.offset, stopped.tail, self._paths.get(file_id, ""))
        found = choose(fingerprint, known, held, handle.path, size, reader(handle))
        if found is not None:
            file_id, offset = found
            was = known[file_id].path
            if was and was != handle.path and offset:
                log.info("%s holds what was read from %s (renamed, copied or compressed): going on at offset %d",
                         handle.path, was, offset)  # fmt: skip
        else:
            taken = held | known.keys() | self._read_to.keys()
            file_id = new_id(fingerprint, handle.key, taken.__contains__)
            offset = 0
            # History (--start-at end, --ignore-older): started at its end, saved there; a .gz's whole text is final.
            if self._start_at_end or older_than(handle, self.ignore_older):
                gz = handle.gz
                offset = end_of_last_line(handle.fd, size or 0) if gz is None else gz.seek(0, os.SEEK_END)
        self._read_to.pop(file_id, None)
        handle.file_id = file_id
        seek(handle, offset)
        self._on_opened(file_id, offset)
        self._paths[file_id] = handle.path
        return True

    # -- reading -----------------------------------------------------------------------------------------------
    def read_round(self) -> Iterator[Line]:
        """One chunk from every open file in turn (fair between a busy and a quiet file)."""
        for handle in [handle for handle in self.files.values() if not handle.finished]:
            yield from self._read_chunk(handle)

    @overload
    def read_all(self) -> Iterator[Line]: ...
    @overload
    def read_all(self, blocks: int, keep: Keep = bytes) -> Iterator[Line | Block]: ...
    def read_all(self, blocks: int = 0, keep: Keep = bytes) -> Iterator[Line | Block]:
        """One-shot commands: every matching file, oldest first, each opened, read to its end and let go before
        the next (so a copy of it that comes later continues from its end instead of starting over). With
        `blocks` (bytes), files (plain or gzip) come as blocks of whole lines where they can (see blocks.py),
        their bytes kept by `keep`."""
        for path in self._candidates():
            try:
                st = os.stat(path)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if not stat.S_ISREG(st.st_mode) or key in self.files or not self._open(path, st):
                continue
            handle = self.files[key]
            if blocks and fits_blocks(handle):
                self._in_blocks = (handle, handle.read_pos, self._bytes_read)
                # Added after: `self._bytes_read += yield from ...` would lose what the line path counts meanwhile.
                done = yield from read_blocks(
                    handle, blocks, self.max_line_bytes, self._read_chunk, self.read_file_to_end, keep
                )
                self._in_blocks = None
                self._bytes_read += done
            else:
                yield from self.read_file_to_end(handle)
            self._retire(key, handle, static=True)
            if handle.read_error:
                self.unread.append(handle.path)

    @property
    def bytes_read(self) -> int:
        """Bytes read so far (uncompressed, for gzip files), the summary's MB/s: a file being read as blocks counts
        up to its read position, so a run stopped part-way through one big file does not say 0.0 MB/s."""
        reading = self._in_blocks
        if reading is None:
            return self._bytes_read
        handle, start, counted = reading
        # What the line path read of it meanwhile is in _bytes_read already (some of it read again as blocks).
        return max(self._bytes_read, counted + handle.read_pos - start)

    def read_file_to_end(self, handle: OpenFile) -> Iterator[Line]:
        # Loop on bytes read, not lines yielded: a chunk inside a long line yields nothing and is not the end.
        while not handle.finished:
            before = handle.read_pos
            yield from self._read_chunk(handle)
            if handle.read_pos == before and not handle.finished:
                break

    def _read_chunk(self, handle: OpenFile) -> Iterator[Line]:
        seen, handle.seen = handle.seen, None  # discovery's stat of it: for the round right after it only
        if handle.file_id is None and not (read_head(handle) and self._assign(handle, os.fstat(handle.fd).st_size)):
            return
        st = (seen or os.fstat(handle.fd)) if handle.gz is None and self.follow else None
        if st is not None and st.st_size == handle.read_pos and stamp(st) == handle.quiet:
            return  # not written, truncated or rewritten since a round that found nothing (quiet.py)
        handle.quiet = None
        if st is not None and (
            not head_matches(handle) or (handle.recent and pread_before(handle.fd, handle.read_pos) != handle.recent)
        ):
            # Truncated (copytruncate), perhaps already rewritten past our position: checking the first line and
            # the bytes just before our position before every read keeps us from reading the new content from
            # the old offset (a rewrite that begins like the old content, longer than what we had read).
            self._truncated(handle)
            return
        try:
            if handle.gz is not None:
                data = handle.gz.read(CHUNK)
            else:
                data = os.pread(handle.fd, CHUNK, handle.read_pos)
        except GZIP_ERRORS as exc:
            read_failed(handle, exc)
            return
        if not data:
            if st is None:
                yield from at_eof(handle, self.unterminated)
            elif st.st_size == handle.read_pos:
                handle.quiet = settled_stamp(st)  # the checks above held for this stamp: it stands for them
            return
        self._bytes_read += len(data)
        yield from lines_in(handle, data, self.max_line_bytes)

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
            try:  # discovery's look at the path (under 0.2 s ago) is as good as one of our own: one stat, not two
                st = None if 0 <= now - handle.path_seen < 0.2 else os.stat(handle.path)
                same = st is None or (st.st_dev, st.st_ino) == key
            except OSError:
                same = False
            if not same:
                if not handle.moved:
                    handle.moved = True
                    log.info("rotation: %s was moved or deleted; reading the old file to its end", handle.path)
                if now - handle.last_data >= self.rotate_wait and caught_up(handle):
                    log.info("rotation: done with the old %s", handle.path)
                    self._retire(key, handle, static=False)
                continue
            # Quiet: the read round just before found it as long as what was read, with the stamp it had then.
            size = handle.read_pos if handle.quiet else os.fstat(handle.fd).st_size
            if size < handle.read_pos:
                self._truncated(handle)
            elif size == handle.read_pos and not handle.buf and now - handle.last_data >= self.idle_close:
                # Hundreds of quiet files (old rotations matched by a glob) should not hold hundreds of
                # descriptors: close it; discovery opens it again when its size changes.
                self._retire(key, handle, static=True)

    def _truncated(self, handle: OpenFile) -> None:
        log.warning("%s was truncated (we had read %d bytes): reading it again from the start (copytruncate "
                    "rotation)", handle.path, handle.read_pos)
        if handle.file_id is not None:
            # The old content's identity is released where we stopped: a copy of it (the rotated file) goes on
            # from there. (No inode: the bytes before that position are gone from this one.)
            self._read_to[handle.file_id] = Stopped(handle.base, tail_hash(handle.before), None)
        restart(handle)

    def _retire(self, key: tuple[int, int], handle: OpenFile, static: bool) -> None:
        if handle.file_id is not None:
            offset, before = resume_point(handle)
            self._read_to[handle.file_id] = Stopped(offset, tail_hash(before), key)
        if static:  # a followed file is done as far as it was read: a line written since the last look reopens it
            try:
                st = os.fstat(handle.fd)
                self._done.add((st.st_dev, st.st_ino, st.st_size if handle.finished else handle.read_pos))
            except OSError:
                pass
        with self._lock:
            close_file(handle)
            del self.files[key]

    def reopen(self) -> None:
        """SIGHUP: look at every path again now."""
        for handle in self.files.values():
            handle.last_check = 0.0
        self.discover()

    def close(self) -> None:
        with self._lock:
            # Still counted once closed: the last line of a stopped backfill's bar says how far it got.
            self._closed_progress += progress_of(list(self.files.values()))
            for handle in self.files.values():
                close_file(handle)
            self.files.clear()

    # -- facts for checkpoints and status --------------------------------------------------------------------
    def tail_hash(self, file_id: str, offset: int) -> str | None:
        """Hash of the bytes before `offset` in the file `file_id` (from the open file, or what was noted when it
        was let go), to store with its checkpoint; None when they can no longer be read."""
        with self._lock:
            for handle in self.files.values():
                if handle.file_id == file_id:
                    if handle.gz is None:
                        return tail_hash(pread_before(handle.fd, offset))
                    return tail_hash(handle.before) if offset == handle.base else None
            stopped = self._read_to.get(file_id)
        return None if stopped is None else stopped.tail_at(offset, self._paths.get(file_id))

    def disk_progress(self) -> int:
        """On-disk bytes consumed (gzip: compressed), for backfill's bar: open files up to their read position."""
        with self._lock:
            done = sum(size for _, _, size in self._done) + self._closed_progress
            handles = list(self.files.values())
        return done + progress_of(handles)

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

