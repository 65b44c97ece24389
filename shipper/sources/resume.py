"""Where one sink resumes in the log files, and what it still owes.

The checkpoints of earlier runs are only candidates: `known(fingerprint)` offers the file source every
checkpoint of a fingerprint, and the source keeps the one the file confirms by content (`identity.choose`), or
none, and then reads the file from its start (a rewritten or replaced file). Going the other way, `save` writes
this run's acknowledged positions back with the hash of the bytes before each, which is what lets the next run
confirm them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shipper.sources.checkpoints import CheckpointStore
from shipper.sources.identity import Known, family, tail_hash
from shipper.sources.reading import GZIP_MAGIC, pread_before

if TYPE_CHECKING:
    from shipper.delivery.acks import AckTracker
    from shipper.sources.files import FileSource


@dataclass(frozen=True, slots=True)
class Stopped:
    """Where this run stopped reading a file it let go of (closed, or truncated under it): a copy of it or the
    file opened again resumes here, a position newer than its checkpoint."""

    offset: int
    tail: str | None  # hash of the bytes before `offset`
    key: tuple[int, int] | None  # (dev, ino) of the file; None when its bytes are gone (truncated)

    def tail_at(self, offset: int, path: str | None) -> str | None:
        """Hash of the bytes before `offset` (a checkpoint behind where we stopped), read again from `path`
        if it still holds this file; None when they can no longer be read."""
        if offset == self.offset:
            return self.tail
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if self.key is None or (st.st_dev, st.st_ino) != self.key or os.pread(fd, 2, 0) == GZIP_MAGIC:
                return None  # the path holds another file now
            return tail_hash(pread_before(fd, offset))
        finally:
            os.close(fd)


class Resume:
    """One sink's checkpoints (`store`) and this run's acknowledged positions (`acks`) over a `FileSource`."""

    def __init__(self, state_dir: str, sink_name: str, acks: AckTracker):
        self.store = CheckpointStore(state_dir, sink_name)
        self.acks = acks

    def load(self) -> None:
        """Take the sink's checkpoints for this run (one run at a time: ConfigError otherwise) and read them."""
        self.store.lock()
        try:
            self.store.load()
        except BaseException:
            self.store.unlock()
            raise

    def close(self) -> None:
        self.store.unlock()

    def known(self, fingerprint: str) -> dict[str, Known]:
        """The checkpoints of the identities with this fingerprint (the `known` of `FileSource`)."""
        return {
            file_id: Known(entry.offset, entry.tail, entry.path)
            for file_id, entry in list(self.store.entries.items())
            if family(file_id) == fingerprint
        }

    def save(self, source: FileSource) -> bool:
        """Write what is acknowledged; then forget the files the source has let go (their position is in the
        store now, and a file opened again starts from it). False: the write failed (logged by the store)."""
        saved = self.acks.committed()
        for file_id, offset in saved.items():
            entry = self.store.entries.get(file_id)
            if entry is not None and entry.offset == offset:
                continue
            path = source.path_of(file_id) or (entry.path if entry else "")
            self.store.update(file_id, offset, path, source.tail_hash(file_id, offset))
        saved_now = self.store.save()
        open_ids = source.open_ids()
        for file_id, offset in saved.items():
            if file_id not in open_ids:
                # Only if nothing was acknowledged since `saved`: forgotten later, its last lines' acknowledgements
                # (which come while the store is written) would never reach the store.
                self.acks.forget(file_id, offset)
        return saved_now

    def behind(self, source: FileSource) -> dict[str, int]:
        """Bytes of each known file past its acknowledged position: what this sink still owes, by path."""
        committed = self.acks.committed()  # files opened in this run
        entries = dict(self.store.entries)  # files known from earlier runs
        out: dict[str, int] = {}
        for file_id in committed.keys() | entries.keys():
            entry = entries.get(file_id)
            path = source.path_of(file_id) or (entry.path if entry else "")
            if not path:
                continue
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            if file_id in committed:
                offset = committed[file_id]
            elif entry is not None:
                offset = entry.offset
            else:
                continue
            out[path] = max(0, size - offset)
        return out
