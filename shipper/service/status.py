"""`kong-ship status`: what the state directory says, per sink and file — checkpoint, file size, lag — read
from the checkpoint files alone, so it needs no running daemon."""

from __future__ import annotations

import glob
import os
import time
from typing import Any

from shipper.sources.checkpoints import CheckpointStore
from shipper.sources.files import GZIP_MAGIC, HEAD_BYTES
from shipper.sources.identity import family, head_of, identity


def _current_size(path: str, file_id: str) -> tuple[int | None, str]:
    """The size of the file at `path` if it is still the file the checkpoint is about, and what we found."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return None, "gone"
    if head[:2] == GZIP_MAGIC:
        return None, "compressed"
    if identity(head_of(head) or head) != family(file_id):
        return None, "rotated"  # the path now holds another file
    return size, "ok"


def collect(state_dir: str) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(glob.glob(os.path.join(state_dir, "checkpoints-*.json"))):
        sink = os.path.basename(path)[len("checkpoints-") : -len(".json")]
        store = CheckpointStore(state_dir, sink)
        for file_id, entry in sorted(store.load().items(), key=lambda kv: kv[1].path):
            size, state = _current_size(entry.path, file_id) if entry.path else (None, "gone")
            rows.append(
                {
                    "sink": sink,
                    "file": entry.path,
                    "file_id": file_id,
                    "checkpoint": entry.offset,
                    "size": size,
                    "lag": None if size is None else max(0, size - entry.offset),
                    "state": state,
                    "updated": entry.updated,
                }
            )
    return rows


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(rows: list[dict[str, Any]], now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not rows:
        return "no checkpoints yet"
    header = ("SINK", "FILE", "CHECKPOINT", "SIZE", "LAG", "UPDATED")
    table = [header]
    for row in rows:
        age = now - row["updated"] if row["updated"] else None
        table.append(
            (
                row["sink"],
                row["file"] + ("" if row["state"] == "ok" else f" ({row['state']})"),
                f"{row['checkpoint']:,}",
                _bytes(row["size"]),
                _bytes(row["lag"]),
                "-" if age is None else f"{age:.0f} s ago",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)
