"""The backfill progress bar, `pv`-style: on a terminal only, on stderr, redrawn in place.

    kong-ship:  42% [#########...........]  113/270 MB  25,311 records/s  ETA 0:06

Bytes are on-disk bytes across all files (gzip files count compressed bytes), so the bar moves evenly over
mixed plain and compressed logs; the rate counts records read. It never writes to a pipe or a log file: there
the final summary says everything.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import TextIO

from shipper.sources.files import expand


def total_bytes(patterns: list[str]) -> int:
    total = 0
    for path in expand(patterns):
        try:
            total += os.stat(path).st_size
        except OSError:
            pass
    return total


def render(done: int, total: int, records: int, elapsed: float, width: int) -> str:
    """The bar in `width` columns: on a narrow terminal the records/s go first, then the bar, then the prefix,
    so the percentage, the MB and the ETA always show whole."""
    fraction = min(1.0, done / total) if total else 1.0
    rate = records / elapsed if elapsed > 0 else 0.0
    byte_rate = done / elapsed if elapsed > 0 else 0.0
    eta = "--:--"
    if byte_rate > 0 and done < total:
        seconds = int((total - done) / byte_rate)
        eta = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"
    elif done >= total:
        eta = "0:00"
    room = max(width - 1, 20)  # the last column would wrap on some terminals
    mb = f"  {_mb(done)}/{_mb(total)} MB"
    for prefix, rate_part, with_bar in (
        ("kong-ship: ", f"  {rate:,.0f} records/s", True),
        ("kong-ship: ", "", True),
        ("kong-ship: ", "", False),
        ("", "", False),
    ):
        head = f"{prefix}{fraction * 100:3.0f}% "
        tail = f"{mb}{rate_part}  ETA {eta}"
        if not with_bar:
            line = f"{head.rstrip()}{tail}"
        else:
            bar_width = min(40, room - len(head) - len(tail) - 2)
            if bar_width < 6:
                continue
            filled = int(bar_width * fraction)
            line = f"{head}[{'#' * filled}{'.' * (bar_width - filled)}]{tail}"
        if len(line) <= room:
            return line
    return line[:room]


def terminal_width(stream: TextIO) -> int | None:
    """Columns of the terminal `stream` writes to ($COLUMNS first, as shutil does); None for a pipe or a file."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (OSError, ValueError, AttributeError):
        return None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}" if n < 10e6 else f"{n / 1e6:,.0f}"


class Progress:
    def __init__(self, pipeline, stream: TextIO, interval: float = 0.2):
        self.pipeline = pipeline
        self.stream = stream
        self.interval = interval
        self.total = total_bytes(pipeline.settings.paths)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._started = time.monotonic()
        self._done = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._draw(final=True)

    def line(self) -> str:
        lane = self.pipeline.lanes[0]
        width = terminal_width(self.stream) or shutil.get_terminal_size((100, 24)).columns
        # Never backwards: once the files are closed (a stopped run) their read positions are gone, and the
        # last line must say how far it got, not 0 %.
        self._done = max(self._done, lane.source.disk_progress())
        return render(self._done, self.total, lane.counts["read"], time.monotonic() - self._started, width)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        try:
            self.stream.write("\r" + self.line() + "\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
        except (OSError, ValueError):
            pass
