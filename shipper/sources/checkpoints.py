"""Checkpoints: per sink, per file identity, the offset below which every line is acknowledged.

Written atomically (temporary file, fsync, rename, fsync of the directory), with the previous good copy kept
beside it. A corrupt file is never silently replaced by nothing: the previous copy is used and the log says so,
and with no good copy at all kong-ship refuses to start rather than resend every file unannounced.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import stat
import time
from dataclasses import dataclass

import orjson

from shipper.errors import ConfigError, FatalError
from shipper.output import printable

log = logging.getLogger("kong-ship")

# Keys are file identities (sources/identity.py): `f` + 16 hex digits, or that + `.` + 8 hex digits for another
# file with the same first line. Files written before the discriminator existed are the same format: version 1.
FORMAT_VERSION = 1
MAX_ENTRIES = 20_000  # files remembered per sink; the oldest untouched entries go first


@dataclass(slots=True)
class Checkpoint:
    offset: int
    path: str = ""
    tail: str | None = None  # hash of the bytes just before `offset`, to notice a rewritten file
    updated: float = 0.0


def _stored_path(path: str) -> dict[str, str]:
    """A file's path as the checkpoint file holds it. JSON text is UTF-8, and a name need not be (Python holds its
    other bytes as surrogate escapes, which orjson refuses: every save failed, and every run shipped the file
    again): such a name is kept as its bytes in hex, beside a form to show."""
    shown = printable(path)
    return {"path": path} if shown is path else {"path": shown, "path_bytes": os.fsencode(path).hex()}


class CheckpointStore:
    def __init__(self, state_dir: str, sink: str):
        self.path = os.path.join(state_dir, f"checkpoints-{sink}.json")
        self.previous = self.path + ".prev"
        self.state_dir = state_dir
        self.entries: dict[str, Checkpoint] = {}
        self._saved_snapshot: dict[str, int] = {}
        self._last_error: str | None = None
        self._lock_fd: int | None = None

    # -- one run at a time ------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take this sink's checkpoints for the run. Two runs on them at once (a `backfill` by hand beside the
        `tail` service) each shipped every record, and each saved its own positions over the other's, so a
        restart shipped again what the other had acknowledged. The lock goes with the process (or `unlock`)."""
        if self._lock_fd is not None:
            return
        path = self.path[: -len(".json")] + ".lock"
        try:
            # Read-only: flock needs no more, and a descriptor open for writing would keep the state's filesystem
            # from being remounted read-only under a running kong-ship (which the saves then wait out).
            fd = open_private(path, os.O_RDONLY)
        except OSError as exc:
            raise FatalError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(
                f"another kong-ship is shipping with the checkpoints in {self.path}: stop it first, or give this "
                "run its own --state-dir"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- reading ------------------------------------------------------------------------------------------
    def load(self) -> dict[str, Checkpoint]:
        main_error = None
        try:
            self.entries = self._read(self.path)
        except FileNotFoundError:
            main_error = "missing"
        except (IsADirectoryError, PermissionError) as exc:
            # Not a corrupt file: its content is good, and the advice to move it aside would throw every checkpoint
            # away (everything shipped again); nor may the previous copy stand in for it while it is there.
            raise FatalError(
                f"cannot read the checkpoint file {self.path}: {exc.strerror or exc}: kong-ship needs to read and "
                "write its state directory"
            ) from None
        except (ValueError, TypeError, KeyError, OSError) as exc:
            main_error = f"unreadable ({exc})"
        if main_error is None:
            self._saved_snapshot = {k: v.offset for k, v in self.entries.items()}
            return self.entries
        try:
            self.entries = self._read(self.previous)
        except FileNotFoundError:
            if main_error == "missing":
                self.entries = {}
                return self.entries  # a first run
            raise ConfigError(
                f"checkpoint file {self.path} is {main_error} and there is no previous copy: move it aside to "
                "start over (every file will then be shipped again from its start)"
            ) from None
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise ConfigError(
                f"checkpoint file {self.path} is {main_error} and its previous copy is unreadable too ({exc}): "
                "move both aside to start over (every file will then be shipped again from its start)"
            ) from None
        age = time.time() - os.path.getmtime(self.previous)
        log.warning(
            "checkpoint file %s is %s; recovered the previous good copy (%s, %.0f s old): up to that much may be "
            "shipped again, with the same event ids",
            self.path,
            main_error,
            self.previous,
            age,
        )
        self._saved_snapshot = {}
        return self.entries

    @staticmethod
    def _read(path: str) -> dict[str, Checkpoint]:
        with open(path, "rb") as handle:
            data = orjson.loads(handle.read())
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data["files"], dict):
            raise ValueError("not a kong-ship checkpoint file")
        out = {}
        for file_id, entry in data["files"].items():
            # Every field checked here, not where it is used: a hand-edited `"updated": "yesterday"` taken as it
            # came made every later save fail with a TypeError, after the run had shipped its records.
            offset = entry["offset"]
            if type(offset) is not int or offset < 0:
                raise ValueError(f"bad offset for {file_id}")
            path, tail, updated = entry.get("path", ""), entry.get("tail"), entry.get("updated", 0.0)
            if type(path) is not str or not (tail is None or type(tail) is str):
                raise ValueError(f"bad path or tail for {file_id}")
            if "path_bytes" in entry:  # a name that is not UTF-8 (_stored_path)
                path = os.fsdecode(bytes.fromhex(entry["path_bytes"]))  # ValueError, TypeError: unreadable
            if type(updated) not in (int, float) or not math.isfinite(updated):
                raise ValueError(f"bad updated time for {file_id}")
            out[file_id] = Checkpoint(offset, path, tail, float(updated))
        return out

    # -- writing ------------------------------------------------------------------------------------------
    def update(self, file_id: str, offset: int, path: str, tail: str | None) -> None:
        entry = self.entries.get(file_id)
        if entry is not None and entry.offset == offset:
            return
        self.entries[file_id] = Checkpoint(offset, path, tail, time.time())

    def dirty(self) -> bool:
        return any(self._saved_snapshot.get(k) != v.offset for k, v in self.entries.items())

    def save(self) -> bool:
        """Write the entries if they changed. A failure (disk full, permissions) is logged once per kind and
        retried on the next call: the shipper goes on, and a restart would resend only what came after the
        last good save."""
        if not self.dirty():
            return True
        if len(self.entries) > MAX_ENTRIES:
            keep = sorted(self.entries.items(), key=lambda kv: kv[1].updated)[-MAX_ENTRIES:]
            self.entries = dict(keep)
        payload = orjson.dumps(
            {
                "version": FORMAT_VERSION,
                "files": {
                    k: {"offset": v.offset, **_stored_path(v.path), "tail": v.tail, "updated": round(v.updated, 3)}
                    for k, v in self.entries.items()
                },
            },
            option=orjson.OPT_INDENT_2,
        )
        try:
            write_atomically(self.path, payload, previous=self.previous)
        except OSError as exc:
            message = f"cannot save checkpoint {self.path}: {exc.strerror}"
            if message != self._last_error:
                log.error("%s; will retry (nothing is lost, a restart now would resend since the last save)", message)
                self._last_error = message
            return False
        if self._last_error:
            log.info("checkpoint %s saved again", self.path)
            self._last_error = None
        self._saved_snapshot = {k: v.offset for k, v in self.entries.items()}
        return True


def fsync_dir(directory: str) -> None:
    """Make a directory's entries (a file created, renamed) durable: without it a crash can lose a whole file
    whose contents were fsynced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What kong-ship writes holds event data (headers, bodies) and positions: its own, whatever the umask.
FILE_MODE = 0o600
DIR_MODE = 0o700


def make_dirs(path: str) -> None:
    """Create `path` and its missing parents, each 0700 (os.makedirs gives the parents 0777 less the umask).
    Existing directories are left as the operator made them."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            pass


def open_private(path: str, flags: int) -> int:
    """os.open with FILE_MODE; a directory deleted under a running kong-ship is created again. A FIFO put at the
    path is refused, not waited on: opened without O_NONBLOCK it blocked until a reader came, in the kernel, where
    no SIGTERM reached the run (a dead-letter path made a FIFO after the start check; O_NONBLOCK does nothing to a
    regular file or /dev/null)."""
    flags |= os.O_CREAT | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags, FILE_MODE)
        except FileNotFoundError:
            make_dirs(os.path.dirname(path) or ".")
            fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # for writing, with no reader (or a socket): say what it is, not "no device"
            raise OSError(errno.ENXIO, "a FIFO or a socket, not a file", path) from None
        raise
    if stat.S_ISFIFO(os.fstat(fd).st_mode):  # opened at once: for reading, or a reader had it open
        os.close(fd)
        raise OSError(errno.EINVAL, "a FIFO, not a file", path)
    return fd


def write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def write_atomically(path: str, payload: bytes, *, previous: str | None = None) -> None:
    """Replace `path` by `payload` so that a crash leaves the old or the new content, never a mix: temporary
    file, fsync, rename, fsync of the directory. With `previous`, the old file is kept under that name."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        if previous is not None and os.path.exists(path):
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(path) or ".")


def check_state_dir(state_dir: str) -> None:
    """Fail at start, with one line, when the state directory cannot hold checkpoints."""
    try:
        make_dirs(state_dir)
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {state_dir}: {exc.strerror} (set --state-dir)") from None
    probe = os.path.join(state_dir, f".probe{os.getpid()}")
    try:
        fd = open_private(probe, os.O_WRONLY)
        try:
            os.write(fd, b"ok")  # a full disk too is better said at start than found at the first checkpoint
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"state directory {state_dir} is not writable: {exc.strerror} (set --state-dir)") from None
