"""What `receive`'s tcp-log and udp-log listeners do with each record they read: check it is a JSON object,
encode it once, and hand it to the spool's group commit as kind `kong_log` — or dead-letter it, with a reason,
in the run's dead-letter file (masked, as every dead letter is). Kong expects no answer from either listener,
so nothing is refused back: a record is either spooled, dead-lettered, or (UDP only) dropped and counted."""

from __future__ import annotations

import threading
from collections import Counter

import orjson

from shipper.deadletter import DeadLetter
from shipper.formats.decode import ParseError, decode_line
from shipper.sources.spool import GroupCommit

KIND = "kong_log"  # read by the Kong parser, as file-log's lines are (shipper.formats.spooled)


class Intake:
    """One listener's intake; `counts` holds `records` (spooled), `dead_lettered` and `dropped`."""

    def __init__(self, name: str, commit: GroupCommit, dead_letter: DeadLetter, *, max_record_bytes: int):
        self.name = name  # "tcp-log", "udp-log": starts the details of its dead letters
        self.commit = commit
        self.dead_letter = dead_letter
        self.max_record_bytes = max_record_bytes
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, line: bytes, peer: str, *, wait: bool) -> bool:
        """Spool or dead-letter one record; False only when it was dropped (the spool writer is behind and
        `wait` is false)."""
        try:
            record = decode_line(line)
        except ParseError as exc:
            self.reject(exc.reason, f"{self.name} record from {peer}: {exc.detail}", line)
            return True
        try:
            encoded = orjson.dumps(record)
        except orjson.JSONEncodeError:  # orjson reads 1024 levels but writes 254
            self.reject("too_deep", f"{self.name} record from {peer}: nested too deeply to be stored", line)
            return True
        if len(encoded) > self.max_record_bytes:  # invalid UTF-8 replaced by U+FFFD can grow a record
            self.reject("too_long", f"{self.name} record from {peer}: {len(encoded)} bytes once re-encoded", line)
            return True
        if not self.commit.add(encoded, wait=wait):
            self.count("dropped")
            return False
        self.count("records")
        return True

    def reject(self, reason: str, detail: str, line: bytes, *, truncated: bool = False) -> None:
        self.count("dead_lettered")
        self.dead_letter.write(reason, detail, line=line, truncated=truncated)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)
