"""A durable local journal for records that do not come from a log file (Kong audit entries polled from the
Admin API, event-hook deliveries received over HTTP).

Such records are first appended here, fsynced, and only then acknowledged upstream (the audit cursor advances,
the HTTP request is answered 200). The ordinary file pipeline then tails the spool with its checkpoints, so
these records get the same batching, retries, dead-letter and at-least-once guarantee as log lines, and a crash
between "received" and "shipped" loses nothing.

Every line is an envelope `{"spool": KIND, "seq": N, "received_at": ISO, "record": {...}}`: the sequence number
makes each segment's first line unique, which the file source relies on to tell files apart.
Segments are `spool-<seq>.jsonl`; a segment that is no longer written and fully acknowledged by every sink is
deleted by `prune`.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from shipper.errors import ConfigError
from shipper.sources.checkpoints import FILE_MODE, fsync_dir, make_dirs, open_private, write_all

SEGMENT_BYTES = 8 << 20
_NAME = re.compile(r"spool-(\d{20})\.jsonl$")


def lock(directory: str, command: str) -> int:
    """One writer per spool: two would interleave sequence numbers and fight over the cursor and checkpoints.
    Returns the descriptor holding the lock (released when closed, or when the process dies)."""
    fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"another kong-ship {command} uses {directory}: give this one its own --state-dir") from None
    return fd


class Spool:
    def __init__(self, directory: str, *, segment_bytes: int = SEGMENT_BYTES):
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        make_dirs(directory)
        segments = self.segments()
        if segments:
            _drop_torn_tail(segments[-1])
        self._seq = self._last_seq(segments[-1]) if segments else 0
        self._path = segments[-1] if segments else self._segment_path(self._seq + 1)
        self._fd = self._open(self._path)

    def _open(self, path: str) -> int:
        """Open a segment for appending; a new one's directory entry is fsynced too, or a crash could lose the
        whole file although its records were fsynced and acknowledged."""
        new = not os.path.exists(path)
        fd = open_private(path, os.O_WRONLY | os.O_APPEND)
        if new:
            fsync_dir(self.directory)
        return fd

    @property
    def pattern(self) -> str:
        """The glob to give the file pipeline."""
        return os.path.join(self.directory, "spool-*.jsonl")

    def segments(self) -> list[str]:
        return sorted(p for p in glob.glob(self.pattern) if _NAME.search(p))

    def append(self, kind: str, records: Iterable[dict[str, Any]]) -> int:
        """Write the records and fsync them; returns how many. When this returns, they survive a crash.

        All or nothing: on a failure (disk full, an I/O error) what was written of them is cut off again and
        the error raised, so that records refused upstream are never shipped later (the sender's retry would
        make a second copy under another id). orjson.JSONEncodeError: a record cannot be stored (too deep)."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._lock:
            lines = []
            for seq, record in enumerate(records, self._seq + 1):
                lines.append(orjson.dumps({"spool": kind, "seq": seq, "received_at": now, "record": record}))
            if not lines:
                return 0
            if self._fd < 0:
                raise ValueError("the spool is closed")
            self._reopen_if_deleted()
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                write_all(self._fd, b"\n".join(lines) + b"\n")
                os.fsync(self._fd)
            except OSError:
                try:
                    os.ftruncate(self._fd, start)
                except OSError:  # then the torn tail is cut at the next start (_drop_torn_tail)
                    pass
                raise
            self._seq += len(lines)
            if os.lseek(self._fd, 0, os.SEEK_END) >= self.segment_bytes:
                os.close(self._fd)
                self._path = self._segment_path(self._seq + 1)
                self._fd = self._open(self._path)
            return len(lines)

    def _reopen_if_deleted(self) -> None:
        """Records appended to a segment deleted under us (the state directory removed by hand) would be
        acknowledged and never shipped: start a new segment, creating the directory again."""
        if os.fstat(self._fd).st_nlink == 0:
            os.close(self._fd)
            self._path = self._segment_path(self._seq + 1)
            self._fd = self._open(self._path)

    def prune(self, behind: Callable[[], dict[str, int]]) -> list[str]:
        """Delete segments other than the one being written that every sink has acknowledged to the end.
        `behind` maps path → bytes not yet acknowledged (a path it does not know is not deleted)."""
        owed = behind()
        removed = []
        with self._lock:
            current = self._path
        for path in self.segments():
            if path != current and owed.get(path) == 0:
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:
                    pass
        return removed

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _segment_path(self, first_seq: int) -> str:
        return os.path.join(self.directory, f"spool-{first_seq:020d}.jsonl")

    @staticmethod
    def _last_seq(path: str) -> int:
        """The sequence number of the segment's last complete line (a torn tail from a crash is ignored)."""
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
        for line in reversed(tail.split(b"\n")):
            try:
                return int(orjson.loads(line)["seq"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        match = _NAME.search(path)
        return int(match.group(1)) - 1 if match else 0


def _drop_torn_tail(path: str) -> None:
    """A crash mid-append can leave half a line, never fsynced and so never acknowledged upstream: cut it, or
    the next append would glue a good record to it."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        start = max(0, size - (1 << 20))
        f.seek(start)
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        f.truncate(start + cut + 1 if cut >= 0 else start)
