"""`kong-ship tail PATH...`: follow log files and ship every record, forever (the service)."""

from __future__ import annotations

import sys
from typing import Any

import click

from shipper.commands import SUMMARIES
from shipper.commands.options import apply_options, dry_run_option, tail_options
from shipper.commands.running import exit_if_unsaved, prepare, run, say
from shipper.commands.summary import summary
from shipper.delivery.dry_run import DryRun


@click.command(short_help=SUMMARIES["tail"])
@click.argument("paths", nargs=-1)
@apply_options(tail_options + [dry_run_option])
def tail(paths: tuple[str, ...], **kw: Any) -> None:
    """Follow log files (globs allowed; new matching files are picked up) and ship every record, forever.

    SIGTERM/SIGINT: deliver what is in flight (up to --shutdown-timeout), save checkpoints, exit 0 (1 when the
    last save failed: the next start sends again what came after the last one saved).
    SIGHUP: re-open files and re-read the patterns.
    """
    dry_run = DryRun.for_options(kw)
    settings, sinks = prepare(paths, kw, **dry_run.fields())
    pipeline, result = run(settings, dry_run.wrap(sinks), follow=True, metrics_addr=kw["metrics_addr"])
    summary(result, sys.stderr)
    dry_run.report(say)
    if pipeline.forced_by:
        sys.exit(128 + pipeline.forced_by)
    exit_if_unsaved(result)
