"""`kong-ship backfill PATH...`: ship log files to their end (plain or gzip, oldest first) and exit."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

import click

from shipper.commands import SUMMARIES
from shipper.commands.options import (
    apply_options,
    config_option,
    dry_run_option,
    progress_option,
    shipping_options,
    understanding_options,
    window_options,
    workers_option,
)
from shipper.commands.running import (
    drive,
    exit_if_unreadable,
    exit_if_unsaved,
    need_a_match,
    need_paths,
    prepare,
    report_inputs,
    say,
)
from shipper.commands.stderr import json_stderr
from shipper.commands.summary import summary
from shipper.delivery.dry_run import DryRun
from shipper.errors import FatalError
from shipper.sources.files import expand
from shipper.threads import start_thread

log = logging.getLogger("kong-ship")


@click.command(short_help=SUMMARIES["backfill"])
@click.argument("paths", nargs=-1)
@apply_options(shipping_options + understanding_options + window_options
               + [progress_option, workers_option("auto"), config_option, dry_run_option])
def backfill(paths: tuple[str, ...], **kw: Any) -> None:
    """Ship log files (plain or gzip, oldest first) to their end, wait for every acknowledgement, and exit.

    Uses the same checkpoints as `tail`: a second run ships only what is new. Exit 1 if the vendor
    permanently rejected any event (they are in the dead-letter file).
    """
    need_paths(paths)
    need_a_match(paths)
    dry_run = DryRun.for_options(kw)
    settings, sinks = prepare(paths, kw, **dry_run.fields())
    sinks = dry_run.wrap(sinks)
    unreadable = report_inputs(paths)
    progress = kw["progress"]
    if progress is None:
        # a bar is not JSON; a dumb terminal cannot erase the line it redraws (ESC [ K)
        progress = sys.stderr.isatty() and os.environ.get("TERM") != "dumb" and not json_stderr()
    from shipper.pipeline import Pipeline

    pipeline = Pipeline(settings, sinks, follow=False)  # its worker processes fork here
    scan, died = window_scan(settings, pipeline) if "moesif" in settings.sinks else (None, [])
    result = drive(pipeline, kw["metrics_addr"], progress)
    if scan is not None and not (pipeline.stopped_by or pipeline.forced_by):
        scan.join()  # said before the summary (an interrupted run does not wait for it)
    if died:
        raise FatalError(died[0])
    summary(result, sys.stderr)
    dry_run.report(say)
    if pipeline.forced_by:
        sys.exit(128 + pipeline.forced_by)
    if pipeline.stopped_by:
        how_far(pipeline, result)
        sys.exit(128 + pipeline.stopped_by)  # 130 for Ctrl-C, 143 for SIGTERM: the backfill did not finish
    exit_if_unsaved(result)
    if any(lane.rejected for lane in result.lanes):
        sys.exit(1)
    # A file whose rest could not be read (a corrupt or truncated gzip file: said when it happened) is an input
    # that could not be read, as a missing one is: what came before it was shipped.
    exit_if_unreadable(unreadable + len(result.lanes[0].unread if result.lanes else []))


def window_scan(settings, pipeline) -> tuple[threading.Thread, list[str]]:
    """Moesif drops events older than 30 days: say early in the run how many that is, so a backfill of old logs
    is not mistaken for one that will arrive (the sink counts them as filtered, never sends them). The count
    is a scan of every byte of the input (about 1 s of CPU per 100k Kong records): a thread beside the run,
    started once the workers have forked, not a wait before it with the other core idle (about 12 of the 28 µs a
    record the main process spent on a Moesif backfill were this scan, with no worker yet running). Returns the thread and where its
    death is told."""
    from shipper.sinks.moesif import count_outside_window

    def scan() -> None:
        too_old = count_outside_window(expand(settings.paths))
        if too_old:
            log.warning(too_old)

    died: list[str] = []

    def on_death(reason: str) -> None:
        died.append(reason)
        pipeline.fail(reason)

    return start_thread(scan, "moesif-window", on_death), died


def how_far(pipeline, result) -> None:
    """An interrupted backfill says how far it got: files and bytes acknowledged by every sink, records shipped."""
    sizes = {}
    for path in expand(pipeline.settings.paths):
        try:
            sizes[os.path.abspath(path)] = os.stat(path).st_size
        except OSError:
            pass
    # only files every sink has seen; the others are not started. Checkpoints keep absolute paths.
    behind = {os.path.abspath(path): lag for path, lag in pipeline.behind().items()}
    done_files = sum(1 for path in sizes if path in behind and behind[path] == 0)
    done_bytes = sum(max(0, size - behind[path]) for path, size in sizes.items() if path in behind)
    shipped = ", ".join(f"{lane.sent:,} shipped to {lane.sink}" for lane in result.lanes)
    log.warning(
        "interrupted by %s: %d of %d file(s) done, %s of %s MB, %s; the next run resumes from there",
        signal.Signals(pipeline.stopped_by).name, done_files, len(sizes), f"{done_bytes / 1e6:,.1f}",
        f"{sum(sizes.values()) / 1e6:,.1f}", shipped,
    )
