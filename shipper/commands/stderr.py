"""stderr's one language per run: text, or with --log-format json one JSON object per line. `say` writes the
lines that are not log records (an input error, a fatal end) in that language. A module of its own, light (click
and orjson only), so that `kong-ship --version`, `--help` and the errors found before a command loads do not
import the shipping machinery (httpx and the sinks: ~0.3 s)."""

from __future__ import annotations

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
    if _stderr.json:
        message = printable(message)  # a file name that is not UTF-8
        click.echo(orjson.dumps({"time": utc_stamp(time.time()), "level": level, "message": message, **fields}).decode(),
                   err=True)
    else:
        click.echo(f"kong-ship: {level}: {message}", err=True)


def utc_stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
