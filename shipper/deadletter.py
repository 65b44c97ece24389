"""The dead-letter file: one JSON object per line that could not be shipped, with the reason, so nothing is
lost silently. Written before the checkpoint passes the line.

Nothing unmasked goes into it: a line is kept only as far as it can be masked (`processors.redact.mask_line`:
JSON is masked like an event, by key at any depth with the header and query rules, then every line gets the
textual masks of Bearer/Basic credentials, JWT-shaped strings, URL userinfo and `name=value` / `"name": value`
/ `Name: value` pairs with secret names), and so are the detail and the event.

A write that fails (disk full, read-only, the directory deleted) is retried until it succeeds, with one log
line per kind of failure: the caller waits, so the line is not acknowledged and the checkpoint stays before it.
Only a shutdown that runs out of time gives up (`Unwritten`); the line is then read again after a restart."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Any

import orjson

from shipper.delivery.queue import Closed
from shipper.output import printable
from shipper.processors.masking import Masker
from shipper.processors.redact import mask_line, mask_text
from shipper.sources.checkpoints import open_private, write_all

log = logging.getLogger("kong-ship")

PREFIX_BYTES = 4096  # how much of an oversize line is kept
SUMMARY_EVERY = 60.0  # seconds between log summaries of dead letters
RETRY_MAX = 5.0  # longest wait between attempts at a failing write


class Unwritten(Closed):
    """Shutdown gave up waiting for a dead letter that could not be written. A `Closed`, so that a reader stops
    as it does when its queue closes: quietly, with the line unacknowledged."""


class DeadLetter:
    def __init__(self, path: str | None, masker: Masker | None = None, abort: threading.Event | None = None):
        self.path = path
        self.masker = masker or Masker()  # the run's masks (with --mask-* names); the defaults otherwise
        self.counts: Counter[str] = Counter()
        self._fd: int | None = None
        self._abort = abort or threading.Event()  # set when shutdown stops waiting for a failing write
        self._failing: str | None = None  # the failure last logged, to log each kind once
        self._lock = threading.Lock()
        self._last_summary = time.monotonic()
        self._since_summary: Counter[str] = Counter()

    def write(
        self,
        reason: str,
        detail: str,
        *,
        file: str | None = None,
        offset: int | None = None,
        sink: str | None = None,
        line: bytes | None = None,
        event: bytes | None = None,
        truncated: bool = False,
    ) -> None:
        entry: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": reason}
        entry["detail"] = mask_text(detail, self.masker)  # parse errors may quote the line
        if sink:
            entry["sink"] = sink
        if file is not None:
            entry["file"] = printable(file)
            entry["offset"] = offset
        if line is not None:
            # Masked whole, then cut: masking a cut line could miss a secret whose name was cut away.
            masked = mask_line(line, self.masker, cut=truncated).encode("utf-8", "backslashreplace")
            entry["line"] = masked[:PREFIX_BYTES].decode("utf-8", "ignore")
            if truncated or len(masked) > PREFIX_BYTES:
                entry["truncated"] = True
        if event is not None:
            entry["event"] = mask_text(event.decode("utf-8", "backslashreplace"), self.masker)
        data = orjson.dumps(entry) + b"\n"
        with self._lock:
            if self.path:
                self._append(data)  # Unwritten: neither counted nor said to be in the file
            self.counts[reason] += 1
            self._since_summary[reason] += 1
            now = time.monotonic()
            if now - self._last_summary >= SUMMARY_EVERY:
                self._log_summary(now)

    def _append(self, data: bytes) -> None:
        delay = 0.1
        while True:
            try:
                self._append_once(data)
            except OSError as exc:
                self._close_fd()  # reopened on the next attempt: a remount or a re-created directory is seen
                message = f"cannot write the dead-letter file {self.path}: {exc.strerror or exc}"
                if message != self._failing:
                    log.error("%s; retrying, and the lines waiting for it are not acknowledged meanwhile", message)
                    self._failing = message
                if self._abort.wait(delay):
                    raise Unwritten(message) from None
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._failing:
                log.info("the dead-letter file %s is written again", self.path)
                self._failing = None
            return

    def _append_once(self, data: bytes) -> None:
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            self._close_fd()  # deleted under us: what we would write there is lost
        if self._fd is None:
            assert self.path is not None  # _append is called only when there is a file to write
            self._fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            write_all(self._fd, data)
        except OSError:
            try:
                os.ftruncate(self._fd, start)  # no half entry for the retry to glue a whole one to
            except OSError:
                pass
            raise

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _log_summary(self, now: float) -> None:
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self._since_summary.items()))
        seconds = now - self._last_summary
        # A run shorter than a second (or the last few lines before it ends) has no "last N s" to speak of.
        since = f" in the last {seconds:.0f} s" if seconds >= 1 else ""
        log.warning("dead letters%s: %s (see %s)", since, parts, self.path)
        self._since_summary.clear()
        self._last_summary = now

    def close(self) -> None:
        with self._lock:
            if self._since_summary and self.path:
                self._log_summary(time.monotonic())
            self._close_fd()

    @property
    def total(self) -> int:
        return sum(self.counts.values())
