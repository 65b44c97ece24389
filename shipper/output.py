"""Standard output for what kong-ship prints as data (`--sink stdout`, `parse`, `tap`, `--dry-run`)."""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import BinaryIO

from shipper.errors import ConfigError


def printable(text: str) -> str:
    """`text` as valid UTF-8 for JSON and a terminal: a file name's bytes that are not UTF-8 (Python's surrogate
    escapes, `kong\udcff.json`) as `\xff`. For showing a name, never for opening it again."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def whole_writes(stream: BinaryIO | None = None) -> BinaryIO:
    """`stream` (standard output's binary layer by default) as one whose `write` writes all it is given.

    Under PYTHONUNBUFFERED=1, common in container images, `sys.stdout.buffer` is the raw file: its `write` is
    one write(2), which a full pipe or a signal may cut short (the rest was dropped), and into which another
    thread's write may land part-way (a batch of events cut one event in two). A BufferedWriter over the same
    descriptor writes everything, under a lock of its own; it never closes the descriptor."""
    if stream is None:
        if sys.stdout is None:  # started with descriptor 1 closed (`>&-`): say so, in one line, before any work
            raise ConfigError("standard output is closed: this command writes its output there (redirect it to a "
                              "file or to /dev/null)")
        stream = sys.stdout.buffer
    if isinstance(stream, io.RawIOBase):
        return open(stream.fileno(), "wb", closefd=False)  # noqa: SIM115  # lives as long as the process
    return stream


def cannot_write(stream: BinaryIO, exc: OSError) -> str:
    """The one-line reason to stop on when `stream` cannot be written (disk full, a quota, EIO; a closed pipe is
    the caller's own case). When `stream` is standard output, descriptor 1 then points at /dev/null: what a
    failed write left in its buffer could fail again when the interpreter flushes it at exit (Python's own
    "Exception ignored" lines). The caller writes nothing more to it: those writes would vanish."""
    try:
        if stream.fileno() == 1:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
    except (OSError, ValueError):  # no descriptor (a BytesIO), or /dev/null cannot be opened: nothing to quiet
        pass
    return f"cannot write to standard output: {exc.strerror or exc}"


class SharedOutput:
    """Standard output as several sender threads share it (`--sink stdout`, `--dry-run`): each write whole, under
    one lock (a raw file's write let another thread's batch land inside a full pipe's write), and once a write
    failed, why (`failure`): nothing is written after it, nor taken as written."""

    def __init__(self, stream: BinaryIO | None = None):
        self.stream = whole_writes(stream)
        self.lock = threading.Lock()
        self.failure = ""

    def write(self, data: bytes) -> bool:
        """Write and flush `data`; False when standard output cannot be written (`failure` says why)."""
        with self.lock:
            if self.failure:
                return False
            try:
                self.stream.write(data)
                self.stream.flush()
                return True
            except BrokenPipeError:  # `... | head`: the reader went away; stop like any Unix tool
                self.failure = "standard output was closed"
            except OSError as exc:  # `> /dev/full`, a quota, EIO: the run stops in one line, not a dead thread
                self.failure = cannot_write(self.stream, exc)
            return False
