"""stderr's one language per run: text, or with --log-format json one JSON object per line. `say` writes the
lines that are not log records (an input error, a fatal end) in that language. A module of its own, light (click
and orjson only), so that `kong-ship --version`, `--help` and the errors found before a command loads do not
import the shipping machinery (httpx and the sinks: ~0.3 s)."""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import Any

import click
import orjson

from shipper.output import printable


class _StderrStyle:
    json = False  # --log-format json: every line kong-ship writes to stderr is one JSON object


_stderr = _StderrStyle()


def json_stderr() -> bool:
    return _stderr.json


def use_json_stderr(on: bool) -> None:
    """Set before logging is (main reads --log-format from the arguments and the file), so that the errors
    found before a command runs follow the flag too."""
    _stderr.json = on


def say(level: str, message: str, **fields: Any) -> None:
    """A line on stderr that is not a log record (an input error, a fatal end): `kong-ship: LEVEL: message`, or
    with --log-format json one JSON object, like the log lines."""
    try:
        if _stderr.json:
            message = printable(message)  # a file name that is not UTF-8
            click.echo(orjson.dumps({"time": utc_stamp(time.time()), "level": level, "message": message,
                                     **fields}).decode(), err=True)
        else:
            click.echo(f"kong-ship: {level}: {message}", err=True)
    except OSError:
        stderr_lost()


def write_line(line: str) -> None:
    """`line` as it is on stderr (a closing line after the summary), never an exception when stderr cannot be
    written: a message nobody can read must not turn a clean stop into exit 1 and a traceback (`stderr_lost`)."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # ValueError: stderr closed
        stderr_lost()


# Errors of a stderr whose reader is still there: a non-blocking pipe or terminal full for a moment (EAGAIN), a
# file on a disk that is full now and may not be in a minute. The line is lost, stderr kept: pointed at /dev/null
# a service that runs for months would log nothing more, ever.
_PASSING = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOSPC, errno.EDQUOT})


def stderr_lost() -> None:
    """Called in the `except` of a write to stderr that failed. Its reader gone (`2>&1 | head -1`, a journal
    that went away, a terminal hung up): descriptor 2 is pointed at /dev/null, so that what kong-ship writes
    there later (a log line, the summary, the fatal line, Python's flush at exit) is dropped rather than raising.
    A message nobody can read must never change the run's exit code: a tail stopped by SIGTERM exits 0, not 1 (a
    BrokenPipeError out of the summary) or 120 (the flush at exit); the run's own outcome decides it. A passing
    error (`_PASSING`) loses the line only (Python's flush of stderr at exit does not change the exit code)."""
    failure = sys.exc_info()[1]
    if isinstance(failure, OSError) and failure.errno in _PASSING:
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(null, 2)
    finally:
        os.close(null)
    try:
        if sys.stderr is not None:
            sys.stderr.flush()  # what the failed write left in the buffer goes to /dev/null now
    except (OSError, ValueError):
        pass


def utc_stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
