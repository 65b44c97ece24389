"""Typed settings of a run, filled by the CLI (flags > environment > config file > defaults).

The defaults are written here and only here: the click options read them (`default=Settings.poll_interval`),
and a command without an option (`receive` has no --poll-interval) leaves its field at the default. Frozen: a
run's settings do not change once it starts, so any thread may read them without a lock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from shipper.processors.filters import Filter
from shipper.processors.identity import DEFAULT_JWT_PLACES
from shipper.processors.sampling import SampleRule

# The longest any duration setting may be (seconds): a year. Python's waits and socket timeouts refuse much more
# than that (threading.TIMEOUT_MAX, ~292 years; a socket's ~317 years), which surfaced deep in the run as a dead
# thread (`--poll-interval 1e308`); past a year is a typo, not a setting.
MAX_SECONDS = 31_536_000.0
MAX_MILLISECONDS = int(MAX_SECONDS * 1000)  # the same, for the sinks' options in ms


def default_state_dir() -> str:
    """KONG_SHIP_STATE_DIR is read by the CLI; then systemd's $STATE_DIRECTORY, then the XDG state folder."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return systemd.split(":")[0]
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "kong-ship")


@dataclass(frozen=True)
class Settings:
    paths: list[str]
    sinks: list[str] = field(default_factory=lambda: ["stdout"])
    state_dir: str = field(default_factory=default_state_dir)
    dead_letter: str | None = None
    format: str = "auto"
    nginx_fields: dict[str, str] = field(default_factory=dict)
    batch_size: int | None = None  # None: the sink's own maximum
    flush_interval: float = 0.25
    queue_size: int = 10_000
    queue_bytes: int = 16 << 20
    concurrency: int = 2
    workers: int = 0  # transform processes; 0 transforms in the reader thread
    shutdown_timeout: float = 10.0
    start_at: str = "beginning"
    ignore_older: float | None = None  # --ignore-older: seconds; files with no checkpoint modified before: history
    max_line_bytes: int = 1 << 20
    jwt_places: tuple[str, ...] = DEFAULT_JWT_PLACES
    jwt_claim: str = "sub"
    mask_headers: tuple[str, ...] = ()
    mask_query: tuple[str, ...] = ()
    mask_body_keys: tuple[str, ...] = ()  # --mask-body-key: all three add to the one set of secret names
    ship_raw_bodies: bool = False  # --ship-raw-bodies: bodies that are neither JSON nor form are sent as they are
    poll_interval: float = 0.25
    rotate_wait: float = 5.0
    checkpoint_interval: float = 1.0
    retry_initial: float = 0.5
    retry_max: float = 60.0
    give_up_after: float | None = None  # --give-up-after: seconds of retries without a delivery before stopping
    timeout: float = 30.0
    since_ms: int | None = None  # --since/--until: the time window, epoch ms (until exclusive)
    until_ms: int | None = None
    max_rate: float | None = None  # --max-rate: events per second per sink
    ca_file: str | None = None  # --ca-file: CAs to trust for the sinks, on top of the default ones
    # Filters and sampling (processors/filters.py, sampling.py): the flags' common cases, the file's rules.
    exclude_paths: tuple[str, ...] = ()  # --exclude-path GLOB
    exclude_statuses: tuple[str, ...] = ()  # --exclude-status SPEC (404, 5xx, 500-504)
    filters: tuple[Filter, ...] = ()  # [[filter]] tables
    sample_rate: float | None = None  # --sample-rate, [sampling] rate: None keeps every record
    sample_rules: tuple[SampleRule, ...] = ()  # [[sampling.rule]] tables
    progress: bool = False  # a progress bar on stderr (backfill on a terminal)
    sink_options: dict[str, Any] = field(default_factory=dict)

    @property
    def dead_letter_path(self) -> str:
        return self.dead_letter or os.path.join(self.state_dir, "dead-letter.jsonl")
