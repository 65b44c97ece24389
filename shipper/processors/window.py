"""`--since` / `--until`: ship only the transactions whose start time falls in a window.

`since` is inclusive and `until` exclusive, so consecutive windows (`--until X`, then `--since X`) neither
overlap nor leave a gap. A record without a start time cannot be placed and is kept: dropping data silently is
worse than shipping a record from outside the window. Such a record is dated when it was read
(`started_at_estimated`), and that date says nothing about the window, so it is kept too.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from shipper.model import Transaction

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, now: float | None = None) -> int:
    """ISO-8601 (`2024-05-01`, `2024-05-01T12:00:00Z`, with an offset; no zone means UTC), Unix seconds, or a
    duration before now (`90s`, `15m`, `6h`, `7d`, `2w`). Returns epoch milliseconds; ValueError if none fits."""
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        now = time.time() if now is None else now
        return int((now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]) * 1000)
    if text.isdigit():
        return int(text) * 1000
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: use ISO-8601 (2024-05-01T12:00:00Z), Unix seconds, or a duration ago (7d, 6h, 30m)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class TimeWindow:
    """A processor keeping transactions with since ≤ started_at < until (either bound may be None)."""

    __slots__ = ("since_ms", "until_ms", "_low", "_high")

    def __init__(self, since_ms: int | None, until_ms: int | None) -> None:
        self.since_ms, self.until_ms = since_ms, until_ms
        # open bounds as numbers beyond any epoch ms, so that a call is two comparisons and no None tests
        self._low = since_ms if since_ms is not None else -(1 << 62)
        self._high = until_ms if until_ms is not None else 1 << 62

    def __call__(self, txn: Transaction) -> Transaction | None:
        started = txn.started_at
        if started is None or self._low <= started < self._high or txn.started_at_estimated:
            return txn
        return None

    def __repr__(self) -> str:
        return f"time_window(since={_iso(self.since_ms)}, until={_iso(self.until_ms)})"


def _iso(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


time_window = TimeWindow  # the name the chain and the tests know it by
