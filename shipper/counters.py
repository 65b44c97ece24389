"""What a lane counts, named once.

`COUNTERS` lists every counter of a lane: its name (also the attribute of the run's `LaneSummary`), what it
means, which threads count it, the word the live status line uses for it and the
Prometheus metric it is exported as. The lane, its summary, the status line and the metrics all read this
table, so a new counter is one line here.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from shipper.sources.checkpoints import write_atomically


@dataclass(frozen=True, slots=True)
class CounterSpec:
    name: str
    help: str
    # Counted from several threads (the senders; the reader too, for `rejected`), so under a lock; the others
    # are the reader thread's alone, without a lock, so that the per-line path stays one dict addition.
    shared: bool = False
    metric: str | None = None  # exported as kong_ship_<metric>_total; None: not exported
    # Exported without a sink label, from the first lane: every lane reads the same lines.
    per_sink: bool = True
    status: str | None = None  # shown in the status line with this word when not zero


COUNTERS: tuple[CounterSpec, ...] = (
    CounterSpec("read", "Lines read from the log files.", metric="lines_read", per_sink=False),
    CounterSpec("parsed", "Lines understood as transactions.", metric="records_parsed", per_sink=False),
    CounterSpec("blank", "Empty or whitespace-only lines (nothing to ship).", metric="blank_lines", per_sink=False),
    CounterSpec("anonymous", "Transactions with no identified user (sent under an anonymous id)."),
    CounterSpec("dead_lettered", "Lines and events this lane wrote to the dead-letter file."),
    # By reason too (LaneCounters.filtered_by): `filter:<name>`, `sample:<rule>`, `window`, a sink's own (Moesif's
    # 30-day window); exported as kong_ship_events_filtered_total{sink,reason} (service/metrics.py).
    CounterSpec("filtered", "Transactions dropped by a filter, sampling, --since/--until or a vendor's rule."),
    CounterSpec(
        "attempted", "Events sent in requests, retries included.", shared=True, metric="events_sent"
    ),
    CounterSpec("sent", "Events the vendor accepted.", shared=True, metric="events_acknowledged"),
    CounterSpec("retries", "Requests tried again.", shared=True, metric="requests_retried"),
    CounterSpec(
        "rejected", "Events the vendor refused for good (dead-lettered).", shared=True,
        metric="events_rejected", status="rejected",
    ),
    # The sink chose not to send them (Moesif sampling, kinds a vendor has no event for), or the lines hold no
    # access-log record (the two counters below, counted here too: read = shipped + dead-lettered + filtered +
    # rejected + skipped + blank).
    CounterSpec(
        "skipped", "Events and lines deliberately not sent (sampling, container lines with no access-log record).",
        metric="events_skipped",
    ),
    # Routing by tenant (shipper/routing.py): records this lane set aside for another destination, or that no
    # destination takes (no route matched, no default lane). Counted here too: read = shipped + ... + blank +
    # routed_elsewhere + unrouted.
    CounterSpec("routed_elsewhere", "Records another route's lane (or the default lane) ships, not this one.",
                metric="records_routed_elsewhere"),
    CounterSpec("unrouted", "Records no route matched, with no default lane: shipped nowhere.",
                metric="records_unrouted", status="unrouted"),
    CounterSpec(
        "not_access_log", "Container stdout lines that are not JSON objects (Kong's text access log, notices).",
        metric="lines_not_access_log", per_sink=False, status="not access-log records",
    ),
    CounterSpec(
        "stderr_lines", "Container stderr lines (Kong's error log).", metric="stderr_lines", per_sink=False,
        status="stderr lines",
    ),
)
NAMES = frozenset(spec.name for spec in COUNTERS)
ROUTED_ELSEWHERE, UNROUTED = "routed_elsewhere", "unrouted"
# A FILTERED outcome whose reason is one of these names is counted under it, not under `filtered`.
DROP_COUNTERS = frozenset({ROUTED_ELSEWHERE, UNROUTED})


class LaneCounters:
    """One lane's counters. `reader` is the reader thread's own Counter (it adds to it directly); `add` counts
    the shared ones. `snapshot()` reads them all, by name."""

    def __init__(self) -> None:
        self.reader: Counter[str] = Counter()
        self.filtered_by: Counter[str] = Counter()  # the reader's too: `filtered` by reason (the Transformer's)
        self._shared: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, name: str, n: int) -> None:
        with self._lock:
            self._shared[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            shared = dict(self._shared)
        reader = self.reader
        return {spec.name: (shared if spec.shared else reader).get(spec.name, 0) for spec in COUNTERS}

    def filtered_reasons(self) -> dict[str, int]:
        """`filtered` by reason, most first (a copy: dict() of a Counter is one step the reader cannot split)."""
        return dict(sorted(dict(self.filtered_by).items(), key=lambda item: (-item[1], item[0])))


class FilteredTotals:
    """`filtered` by reason over every run with this state directory, for `kong-ship status` (which reads files,
    not a running process): saved with the checkpoints, as `filtered-<sink>.json`, when it changed. A record
    read again after a crash is counted again, as the live counters count it.

    The `unrouted` count (routing.py: no route matched, no default lane) is kept beside the reasons, under its
    own key `"unrouted"`: it is not a filter's drop (the lane keeps it out of `filtered_by`, so no reason has that
    name), yet it is a record shipped nowhere that `status` should tell. A file from before it has no such key: 0."""

    def __init__(self, state_dir: str, sink: str) -> None:
        self.path = os.path.join(state_dir, f"filtered-{sink}.json")
        saved = read_counts(self.path)
        self.unrouted_before = saved.pop(UNROUTED, 0)
        self.before = saved  # the earlier runs' (both)
        self._saved: tuple[dict[str, int], int] = ({}, 0)

    def save(self, run: dict[str, int], unrouted: int = 0) -> None:
        """`run`: this run's reasons so far; `unrouted`: this run's unrouted count so far."""
        if (run or unrouted) and (run, unrouted) != self._saved:
            totals = Counter(self.before)
            totals.update(run)
            if self.unrouted_before + unrouted:
                totals[UNROUTED] = self.unrouted_before + unrouted
            write_atomically(self.path, orjson.dumps(dict(totals)))
            self._saved = (run, unrouted)


def read_counts(path: str) -> dict[str, int]:
    """A `filtered-<sink>.json` file's counts, the reasons and `unrouted`; {} when it is missing or not ours."""
    try:
        with open(path, "rb") as handle:
            data = orjson.loads(handle.read())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return {k: v for k, v in data.items() if type(v) is int} if isinstance(data, dict) else {}


@dataclass(frozen=True)
class LaneSummary:
    """What one sink's lane did in a run: `summary.sent`, `summary.read`, … (every name in `COUNTERS`), the
    bytes read, and the files whose last line had no newline (one-shot commands)."""

    sink: str
    counts: Mapping[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    unterminated: list[tuple[str, int]] = field(default_factory=list)
    filtered_by: Mapping[str, int] = field(default_factory=dict)  # `filtered` by reason (filter:<name>, sample:…)
    unread: list[str] = field(default_factory=list)  # files whose rest could not be read (a corrupt gzip file)

    def __getattr__(self, name: str) -> int:
        # Only called for names that are not fields: the counters, by their name in COUNTERS.
        if name in NAMES:
            return self.__dict__.get("counts", {}).get(name, 0)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
