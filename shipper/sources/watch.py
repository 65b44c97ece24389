"""File notifications for the followed logs: inotify (through watchdog) calls `wake` as soon as something
changes in a directory the patterns point into, so readers look at once instead of at their next poll.

Polling stays the safety net: a missed or unsupported notification costs only the poll interval. That is why
every failure here (watchdog missing, no inotify, too many watches) is a warning at most, never an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("kong-ship")

GLOB_CHARS = "*?["


def directories_of(patterns: Iterable[str]) -> set[str]:
    """The existing directories to watch for these patterns: the deepest directory of each without glob
    characters (a new file in `logs/*/kong.json` shows up in `logs`, not in a directory that may not exist yet)."""
    directories = set()
    for pattern in patterns:
        directory = os.path.dirname(os.path.abspath(pattern))
        while any(ch in directory for ch in GLOB_CHARS):
            directory = os.path.dirname(directory)
        if os.path.isdir(directory):
            directories.add(directory)
    return directories


class Watcher:
    """Calls `wake()` on any change in the directories of `patterns`; `start()` and `stop()` once each."""

    def __init__(self, patterns: Iterable[str], wake: Callable[[], None], *, poll_interval: float):
        self.patterns = list(patterns)
        self.wake = wake
        self.poll_interval = poll_interval  # only for the warning: what it costs to go without notifications
        self._observer: Any = None  # a watchdog Observer, once started

    def start(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return
        except OSError as exc:  # out of descriptors (a flood of connections): importing opens files too
            log.warning("file notifications unavailable (%s); polling every %.2f s", exc, self.poll_interval)
            return
        # watchdog logs a race of its own shutdown ("InotifyEmitter.queue_events() called when the thread is
        # inactive", seen in about 1 of 40 stops) as an error through a logger with no handler: Python's last-resort
        # handler wrote it to stderr, a line in none of our formats. Polling covers whatever it could report.
        library_log = logging.getLogger("watchdog")
        library_log.addHandler(logging.NullHandler())
        library_log.propagate = False
        wake = self.wake

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                wake()

        try:
            observer = Observer()
            for directory in directories_of(self.patterns):
                observer.schedule(Wake(), directory, recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except OSError as exc:
            log.warning("file notifications unavailable (%s); polling every %.2f s", exc, self.poll_interval)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
