"""The part of a spool-fed command (`receive`, `audit tail`) that runs beside the pipeline.

Such a command writes records into a spool (`spool.py`) and has the ordinary pipeline follow it. Beside the
pipeline it needs the same few things: one writer per spool (the lock), a step repeated until the run stops
(poll the Admin API; or nothing, for the receiver, whose records arrive on their own threads), the readers
woken when records were spooled, and the segments every sink has acknowledged deleted every few seconds.
`SpoolFeeder` is that, once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from shipper.sources.spool import Spool, lock
from shipper.threads import RunContext

log = logging.getLogger("kong-ship")


class SpoolFeeder:
    """Feeds `spool` to a running pipeline: `feed` repeats a step and prunes the spool every `prune_every`
    seconds. `name` starts its log lines (`receive: …`, `audit: …`)."""

    def __init__(self, spool: Spool, *, name: str, prune_every: float, lock_fd: int | None = None):
        self.spool = spool
        self.name = name
        self.prune_every = prune_every
        self._lock_fd = lock_fd
        self._last_prune = time.monotonic()

    @classmethod
    def open(cls, directory: str, command: str, *, name: str, prune_every: float) -> SpoolFeeder:
        """Take the spool's lock (ConfigError if another `command` holds it) and open the spool; `close`
        releases both."""
        fd = lock(directory, command)
        try:
            spool = Spool(directory)
        except BaseException:
            os.close(fd)
            raise
        return cls(spool, name=name, prune_every=prune_every, lock_fd=fd)

    def feed(
        self,
        run: RunContext,
        every: float,
        step: Callable[[], bool] | None = None,
        until: threading.Event | None = None,
    ) -> bool:
        """Every `every` seconds until `until` (default: the run's stop) is set: `step()` (False ends the
        loop), then the pruning when it is due. True when the loop ended because the run is stopping."""
        until = run.stop if until is None else until
        self._last_prune = time.monotonic()
        while not until.wait(every):
            if run.stop.is_set():
                return True
            if step is not None and not step():
                return False
            self.prune_if_due(run)
        return until is run.stop

    def prune_if_due(self, run: RunContext, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._last_prune < self.prune_every:
            return
        self._last_prune = now
        try:
            for path in self.spool.prune(run.behind):
                log.debug("%s: pruned %s", self.name, path)
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping: it never stops the command
            log.warning("%s: pruning the spool failed: %s", self.name, exc)

    def close(self) -> None:
        self.spool.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
