"""`kong-ship status`: what the state directory says, per sink and file — checkpoint, file size, lag — read
from the checkpoint files alone, so it needs no running daemon."""

from __future__ import annotations

import glob
import gzip
import os
import time
from collections import Counter
from typing import Any

from shipper.counters import UNROUTED, read_counts
from shipper.output import printable
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


class _Rotated:
    """Where the rotated-away files of a log went: the files beside it whose name starts with its name
    (kong.json.1, kong.json-20260101, kong.json.2.gz), by fingerprint, each looked at once."""

    def __init__(self) -> None:
        self._dirs: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}

    def find(self, path: str, file_id: str) -> tuple[str, int] | None:
        directory, name = os.path.split(path)
        known = self._dirs.get((directory, name))
        if known is None:
            known = self._dirs[(directory, name)] = {}
            try:
                siblings = sorted(os.listdir(directory or "."))
            except OSError:
                siblings = []
            for sibling in siblings:
                if sibling != name and sibling.startswith(name):
                    found = _fingerprint(os.path.join(directory, sibling))
                    if found is not None:
                        known.setdefault(found[0], (os.path.join(directory, sibling), found[1]))
        return known.get(family(file_id))


def _fingerprint(path: str) -> tuple[str, int] | None:
    """(fingerprint, size of the content) of a plain or gzip file; gzip's size is its trailer's (mod 4 GiB)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
            if head[:2] == GZIP_MAGIC:
                handle.seek(-4, os.SEEK_END)
                size = int.from_bytes(handle.read(4), "little")
                handle.seek(0)
                with gzip.GzipFile(fileobj=handle) as unzipped:
                    head = unzipped.read(HEAD_BYTES)
            else:
                size = os.fstat(handle.fileno()).st_size
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    return identity(head_of(head) or head), size


def collect(state_dir: str) -> list[dict[str, Any]]:
    """One row per sink and checkpoint. `done`: the file is shipped to its end (True), not yet (False), or it
    cannot be known (the file is gone). A rotated-away file is looked for beside its old path."""
    rows = []
    rotated = _Rotated()
    for path in sorted(glob.glob(os.path.join(state_dir, "checkpoints-*.json"))):
        sink = os.path.basename(path)[len("checkpoints-") : -len(".json")]
        store = CheckpointStore(state_dir, sink)
        for file_id, entry in sorted(store.load().items(), key=lambda kv: kv[1].path):
            size, state = _current_size(entry.path, file_id) if entry.path else (None, "gone")
            now_at = None
            if state in ("rotated", "gone", "compressed") and entry.path:
                found = rotated.find(entry.path, file_id)
                if found is not None:
                    now_at, size = found
                    state = "rotated"
            lag = None if size is None else max(0, size - entry.offset)
            rows.append(
                {
                    "sink": sink,
                    "file": printable(entry.path),
                    "file_id": file_id,
                    "checkpoint": entry.offset,
                    "size": size,
                    "lag": lag,
                    "state": state,
                    "now_at": now_at if now_at is None else printable(now_at),
                    "done": None if lag is None else lag == 0,
                    "updated": entry.updated,
                }
            )
    return rows


def _totals(state_dir: str) -> list[tuple[str, dict[str, int]]]:
    """(sink, its `filtered-<sink>.json` counts: the reasons and `unrouted`), for every sink that has the file."""
    return [
        (os.path.basename(path)[len("filtered-") : -len(".json")], read_counts(path))
        for path in sorted(glob.glob(os.path.join(state_dir, "filtered-*.json")))
    ]


def filtered(state_dir: str) -> dict[str, dict[str, int]]:
    """Per sink, the records its lanes dropped on purpose, by reason, over every run (`counters.FilteredTotals`)."""
    out = {}
    for sink, counts in _totals(state_dir):
        reasons = {reason: n for reason, n in counts.items() if reason != UNROUTED}
        if reasons:
            out[sink] = dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0])))
    return out


def unrouted(state_dir: str) -> dict[str, int]:
    """Per sink (a route's lane), the records no route matched, over every run: kept beside the filtered totals
    (`counters.FilteredTotals`); sinks that counted none are left out."""
    return {sink: counts[UNROUTED] for sink, counts in _totals(state_dir) if counts.get(UNROUTED)}


def render_unrouted(by_sink: dict[str, int]) -> str:
    """`SINK: N unrouted (no route matched)`, a line per sink."""
    return "\n".join(f"{sink}: {count:,} unrouted (no route matched)" for sink, count in by_sink.items())


def render_filtered(by_sink: dict[str, dict[str, int]]) -> str:
    """`SINK: N filtered (reason n, ...)`, a line per sink."""
    return "\n".join(
        f"{sink}: {sum(counts.values()):,} filtered ({', '.join(f'{r} {n:,}' for r, n in counts.items())})"
        for sink, counts in by_sink.items()
    )


def _bytes(count: int | None) -> str:
    if count is None:
        return "-"
    n: float = count  # divided down to the unit it is shown in
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
    # Rotated-away files shipped to their end are many (one per rotation) and say nothing each: one line per sink.
    shipped = Counter(row["sink"] for row in rows if row["state"] != "ok" and row["done"])
    notes = [f"{sink}: {n:,} rotated file(s) fully shipped" for sink, n in sorted(shipped.items())]
    for row in rows:
        if row["state"] != "ok" and row["done"]:
            continue
        age = now - row["updated"] if row["updated"] else None
        table.append(
            (
                row["sink"],
                row["file"] + ("" if row["state"] == "ok" else f" ({_describe(row)})"),
                f"{row['checkpoint']:,}",
                _bytes(row["size"]),
                _bytes(row["lag"]),
                "-" if age is None else f"{age:.0f} s ago",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table] if len(table) > 1 else []
    return "\n".join(lines + notes)


def _describe(row: dict[str, Any]) -> str:
    """What became of a file no longer at its path, and whether it is shipped to its end."""
    if row["done"] is None:
        return f"{row['state']}; not found beside it, done unknown"
    where = f"now {os.path.basename(row['now_at'])}; " if row.get("now_at") else ""
    return f"{row['state']}; {where}{'done' if row['done'] else 'not done'}"
