"""A durable local journal for records that do not come from a log file (Kong audit entries polled from the
Admin API, event-hook deliveries received over HTTP).

Such records are first appended here, fsynced, and only then acknowledged upstream (the audit cursor advances,
the HTTP request is answered 200). The ordinary file pipeline then tails the spool with its checkpoints, so
these records get the same batching, retries, dead-letter and at-least-once guarantee as log lines, and a crash
between "received" and "shipped" loses nothing.

Every line is an envelope `{"spool": KIND, "seq": N, "received_at": ISO, "record": {...}}`: the sequence number
makes each segment's first line unique, which the file source relies on to tell files apart. A kind may add
members after the record (`with_envelope_members`: `identity` for `kong_log`, see `shipper.formats.spooled`).
Segments are `spool-<seq>.jsonl`; a segment that is no longer written and fully acknowledged by every sink is
deleted by `prune`.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from shipper.errors import ConfigError
from shipper.sources.checkpoints import FILE_MODE, fsync_dir, make_dirs, open_private, write_all
from shipper.threads import start_thread

log = logging.getLogger("kong-ship")

SEGMENT_BYTES = 8 << 20
COMMIT_INTERVAL = 0.1  # seconds a record from a listener may wait for its fsync (issue 15: at most 100 ms)
COMMIT_RECORDS = 1000  # ... or until this many wait, whichever comes first
COMMIT_BYTES = 8 << 20  # bytes that may wait at once; past it a TCP reader waits and a UDP datagram is dropped
ENVELOPE_BYTES = 96  # what the envelope adds around a record, roughly (for the backlog's count)
# What a waiting record weighs beside its bytes: the bytes object (33), its place in the list (8), and its envelope
# line and the joined write (~2 x 100) once written. Counted against COMMIT_BYTES, or 8 MiB of 2-byte `{}` lines
# (4 million records while the spool could not be written) weighed over 600 MiB.
PENDING_RECORD_BYTES = 256
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
        now = _now()
        with self._lock:
            lines = [
                orjson.dumps({"spool": kind, "seq": seq, "received_at": now, "record": record})
                for seq, record in enumerate(records, self._seq + 1)
            ]
            return self._write(lines)

    def append_encoded(self, kind: str, records: list[bytes]) -> int:
        """`append` for records already encoded as JSON objects (orjson.dumps of a dict): the listeners encode
        each record once, when they check it can be stored, and the envelope is put around the bytes (a record
        may carry more members of its envelope after it: `with_envelope_members`)."""
        head = b'{"spool":' + orjson.dumps(kind) + b',"seq":'
        tail = b',"received_at":' + orjson.dumps(_now()) + b',"record":'
        with self._lock:
            lines = [b"%s%d%s%s}" % (head, seq, tail, record) for seq, record in enumerate(records, self._seq + 1)]
            return self._write(lines)

    def _write(self, lines: list[bytes]) -> int:
        """Under the lock: append the lines (numbered from self._seq + 1), fsync, roll the segment when full."""
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


def with_envelope_members(record: bytes, members: dict[str, Any]) -> bytes:
    """An encoded record for `append_encoded` followed by more members of its envelope (written after
    `"record":`, so the record's bytes are neither decoded nor copied into a dict again)."""
    return record + b"".join(b"," + orjson.dumps(name) + b":" + orjson.dumps(value) for name, value in members.items())


class GroupCommit:
    """Appends records that no one waits for (Kong's tcp-log and udp-log send and never hear back) to the spool
    in groups: one write and one fsync for all the records added in the last `interval` seconds, or as soon as
    `max_records` wait, whichever comes first; `sync` forces one now and waits for it.

    Records wait in memory, not in the file: a line is written and fsynced in one go (as `Spool.append` does),
    so the pipeline never reads, ships and checkpoints a line that a crash of the machine could still take
    back (the next records would then reuse its sequence number, and its event id). The price, and exactly
    what a crash can lose (kill -9, OOM, power loss alike): the records added and not yet fsynced — those of the
    last `interval` seconds, at most `max_records` of them, and more only while an fsync is slow (the group
    being written and what arrives meanwhile). When the spool cannot be written (disk full) the group is kept
    and retried; meanwhile `add` holds TCP readers (back-pressure) and refuses UDP datagrams once `max_bytes`
    wait. Only `close` gives up on a group, after its timeout, and counts it in `lost`."""

    def __init__(
        self,
        spool: Spool,
        kind: str,
        *,
        on_write: Callable[[int, int], None],
        interval: float = COMMIT_INTERVAL,
        max_records: int = COMMIT_RECORDS,
        max_bytes: int = COMMIT_BYTES,
    ):
        self.spool = spool
        self.kind = kind
        self.interval = interval
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.on_write = on_write  # (records, bytes) once they are durable
        self.lost = 0
        self._cond = threading.Condition()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._first_at = 0.0
        self._added = 0  # records ever added
        self._done = 0  # records ever written and fsynced (or given up on at close)
        self._urgent = False
        self._closing = False
        self._give_up = threading.Event()
        self._failing: str | None = None
        self._thread: threading.Thread | None = None

    def start(self, on_death: Callable[[str], None]) -> None:
        self._thread = start_thread(self._run, "spool-commit", on_death)

    def add(self, record: bytes, *, wait: bool) -> bool:
        """Queue one encoded record (a JSON object). Past `max_bytes` waiting: with `wait`, block until the
        group is written; without, refuse (False). False too once closing."""
        with self._cond:
            weight = len(record) + PENDING_RECORD_BYTES
            while self._pending and self._pending_bytes + weight > self.max_bytes and not self._closing:
                if not wait:
                    return False
                self._cond.notify_all()
                self._cond.wait(0.1)
            if self._closing:
                return False
            first = not self._pending
            if first:
                self._first_at = time.monotonic()
            self._pending.append(record)
            self._pending_bytes += weight
            self._added += 1
            # The writer sleeps while nothing waits: the first record starts its clock, a full group its write.
            if first or len(self._pending) >= self.max_records or self._pending_bytes >= self.max_bytes // 2:
                self._cond.notify_all()
            return True

    def sync(self, timeout: float | None = None) -> bool:
        """Write and fsync what was added so far now; True once it is durable."""
        with self._cond:
            target = self._added
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target or self._thread is None, timeout)

    def _due(self) -> bool:
        return bool(self._pending) and (
            self._urgent or self._closing or len(self._pending) >= self.max_records
            or self._pending_bytes >= self.max_bytes // 2 or time.monotonic() - self._first_at >= self.interval
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    if self._closing:
                        return
                    wait = self.interval - (time.monotonic() - self._first_at) if self._pending else None
                    self._cond.wait(wait)
                batch, self._pending, self._pending_bytes, self._urgent = self._pending, [], 0, False
            self._write(batch)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def _write(self, batch: list[bytes]) -> None:
        delay = 0.1
        while True:
            try:
                self.spool.append_encoded(self.kind, batch)
                break
            except (OSError, ValueError) as exc:  # ValueError: the spool was closed
                message = f"cannot write the spool ({getattr(exc, 'strerror', None) or exc})"
                if message != self._failing:
                    log.error("%s: %d received records wait in memory, and the listeners read no more", message,
                              len(batch))
                    self._failing = message
                if isinstance(exc, ValueError) or self._give_up.wait(delay):
                    log.error("gave up %d received records at shutdown: %s", len(batch), message)
                    self.lost += len(batch)
                    return
                delay = min(delay * 2, 5.0)
        if self._failing:
            log.info("the spool is written again")
            self._failing = None
        self.on_write(len(batch), sum(map(len, batch)) + ENVELOPE_BYTES * len(batch))

    def close(self, timeout: float = 5.0) -> None:
        """Write what waits and stop. If the spool still cannot be written after `timeout`, give that up."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            self._give_up.set()
            thread.join(timeout)
        with self._cond:
            self._thread = None
            self._cond.notify_all()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
