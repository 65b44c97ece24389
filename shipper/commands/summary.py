"""The end-of-run summary on stderr: a small table, one row per sink, the totals and what stands out (skipped by
kind, filtered by reason, dead letters, unfinished lines); with --log-format json one JSON object with the same
counts. Every line read is in exactly one of: shipped, filtered, dead-lettered, rejected, skipped, blank, and with
routes routed-elsewhere, unrouted (once delivered)."""

from __future__ import annotations

import sys
import time

import orjson

from shipper.commands.stderr import json_stderr, stderr_lost, utc_stamp
from shipper.counters import COUNTERS
from shipper.output import printable
from shipper.service.progress import terminal_width

SUMMARY_COLUMNS = ("read", "shipped", "filtered", "dead-lettered", "rejected", "skipped", "blank", "anonymous", "retries")
# The counter (a name in COUNTERS) behind each column, in the same order.
COLUMN_COUNTERS = ("read", "sent", "filtered", "dead_lettered", "rejected", "skipped", "blank", "anonymous", "retries")
# Counters the status line shows that have no column (the container lines inside `skipped`, by kind): said
# after the table when not zero, so that a new such counter in COUNTERS shows here without an edit.
# Routing by tenant's counters (shipper/routing.py): columns only in a run where some lane counted them.
ROUTING_COLUMNS = (("routed-elsewhere", "routed_elsewhere"), ("unrouted", "unrouted"))
BY_KIND = tuple(spec for spec in COUNTERS if spec.status and spec.name not in COLUMN_COUNTERS
                and spec.name not in dict(ROUTING_COLUMNS).values())


def summary_columns(result) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The summary's columns and their counters: the routing ones only when a lane counted any."""
    extra = [(c, n) for c, n in ROUTING_COLUMNS if any(getattr(lane, n) for lane in result.lanes)]
    return SUMMARY_COLUMNS + tuple(c for c, _ in extra), COLUMN_COUNTERS + tuple(n for _, n in extra)


def skipped_by_kind(result) -> dict[str, int]:
    """The BY_KIND counts that are not zero, by counter name (read from the first lane: every lane reads the
    same lines)."""
    return {spec.name: n for lane in result.lanes[:1] for spec in BY_KIND if (n := getattr(lane, spec.name))}


def summary(result, stream) -> None:
    """The end of a run as a small table, one row per sink, then the totals (--log-format json: one JSON
    object with the same counts). On a terminal, columns that are all zero go first when it is too narrow.
    A stream that cannot be written (stderr's reader gone) loses the table, and the exit code stays the run's."""
    try:
        write_summary(result, stream)
    except OSError:
        if stream is sys.stderr:
            stderr_lost()
        else:
            raise


def write_summary(result, stream) -> None:
    read = sum(lane.read for lane in result.lanes[:1])
    rate = read / result.elapsed if result.elapsed > 0 else 0.0
    mb = sum(lane.bytes_read for lane in result.lanes[:1]) / 1e6
    if json_stderr():
        summary_json(result, stream, rate, mb)
        return
    columns, counters = summary_columns(result)
    rows: list[tuple[str, ...]] = [("sink", *columns)]
    for lane in result.lanes:
        rows.append((lane.sink, *(f"{getattr(lane, name):,}" for name in counters)))
    width = terminal_width(stream)
    while width and table_width(rows) >= width:
        # "read" and "shipped" stay; then the rightmost column that says nothing (all zero) goes
        empty = [i for i in range(3, len(rows[0])) if all(row[i] == "0" for row in rows[1:])]
        if not empty:
            break
        rows = [row[: empty[-1]] + row[empty[-1] + 1 :] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    lines.append(f"elapsed {result.elapsed:.1f} s, {rate:,.0f} records/s, {mb / result.elapsed if result.elapsed > 0 else 0:,.1f} MB/s")
    by_kind = skipped_by_kind(result)
    if by_kind:
        words = {spec.name: spec.status for spec in BY_KIND}
        lines.append("skipped: " + ", ".join(f"{n:,} {words[name]}" for name, n in by_kind.items()))
    lines += filtered_lines(result)
    if result.dead_letters:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(result.dead_letters.items()))
        lines.append(f"dead letters: {reasons} → {result.dead_letter_path}")
    for lane in result.lanes[:1]:
        for path, size in lane.unterminated:
            lines.append(f"waiting for a newline: {path} ends with {size} bytes of an unfinished line (not shipped)")
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def filtered_lines(result) -> list[str]:
    """The `filtered` column by reason (filter:<name>, sample:<rule>, window): one line when every sink dropped
    the same, else one per sink that dropped any (a filter may be for some sinks only)."""
    def said(by: dict[str, int]) -> str:
        return ", ".join(f"{n:,} {reason}" for reason, n in by.items())

    lanes = [lane for lane in result.lanes if lane.filtered_by]
    if not lanes:
        return []
    if len(lanes) == len(result.lanes) and all(lane.filtered_by == lanes[0].filtered_by for lane in lanes):
        return [f"filtered: {said(lanes[0].filtered_by)}"]
    return [f"filtered ({lane.sink}): {said(lane.filtered_by)}" for lane in lanes]


def table_width(rows) -> int:
    return sum(max(len(row[i]) for row in rows) for i in range(len(rows[0]))) + 2 * (len(rows[0]) - 1)


def summary_json(result, stream, rate: float, mb: float) -> None:
    sinks = [
        {"sink": lane.sink, **{column.replace("-", "_"): getattr(lane, name)
                               for column, name in zip(*summary_columns(result))}}
        for lane in result.lanes
    ]
    unterminated = [{"file": printable(p), "bytes": n} for lane in result.lanes[:1] for p, n in lane.unterminated]
    record = {
        "time": utc_stamp(time.time()),
        "level": "info", "message": "summary", "sinks": sinks, "elapsed_s": round(result.elapsed, 3),
        "records_per_s": round(rate, 1), "mb_per_s": round(mb / result.elapsed if result.elapsed > 0 else 0.0, 3),
        "dead_letters": dict(result.dead_letters), "dead_letter_file": result.dead_letter_path or None,
        "skipped_by_kind": skipped_by_kind(result),
        "filtered_by_reason": {lane.sink: dict(lane.filtered_by) for lane in result.lanes},
        "unterminated": unterminated,
    }
    stream.write(orjson.dumps(record).decode() + "\n")
    stream.flush()
