"""The dead-letter file: one JSON object per line that could not be shipped, with the reason, so nothing is
lost silently. Written before the checkpoint passes the line.

Nothing unmasked goes into it: a line is kept only as far as it can be masked (`processors.redact.mask_line`:
JSON is masked like an event, by key at any depth with the header and query rules, then every line gets the
textual masks of Bearer/Basic credentials, JWT-shaped strings, URL userinfo and `name=value` / `"name": value`
/ `Name: value` pairs with secret names), and so are the detail and the event."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Any

import orjson

from shipper.processors.masking import Masker
from shipper.processors.redact import mask_line, mask_text

log = logging.getLogger("kong-ship")

PREFIX_BYTES = 4096  # how much of an oversize line is kept
SUMMARY_EVERY = 60.0  # seconds between log summaries of dead letters


class DeadLetter:
    def __init__(self, path: str | None, masker: Masker | None = None):
        self.path = path
        self.masker = masker or Masker()  # the run's masks (with --mask-* names); the defaults otherwise
        self.counts: Counter[str] = Counter()
        self._handle = None
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
            entry["file"] = file
            entry["offset"] = offset
        if line is not None:
            # Masked whole, then cut: masking a cut line could miss a secret whose name was cut away.
            masked = mask_line(line, self.masker).encode("utf-8", "backslashreplace")
            entry["line"] = masked[:PREFIX_BYTES].decode("utf-8", "ignore")
            if truncated or len(masked) > PREFIX_BYTES:
                entry["truncated"] = True
        if event is not None:
            entry["event"] = mask_text(event.decode("utf-8", "backslashreplace"), self.masker)
        data = orjson.dumps(entry) + b"\n"
        with self._lock:
            self.counts[reason] += 1
            self._since_summary[reason] += 1
            if self.path:
                if self._handle is None:
                    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                    self._handle = open(self.path, "ab")
                self._handle.write(data)
                self._handle.flush()
            now = time.monotonic()
            if now - self._last_summary >= SUMMARY_EVERY:
                self._log_summary(now)

    def _log_summary(self, now: float) -> None:
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self._since_summary.items()))
        log.warning("dead letters in the last %.0f s: %s (see %s)", now - self._last_summary, parts, self.path)
        self._since_summary.clear()
        self._last_summary = now

    def close(self) -> None:
        with self._lock:
            if self._since_summary and self.path:
                self._log_summary(time.monotonic())
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())
