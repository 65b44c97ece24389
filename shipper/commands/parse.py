"""`kong-ship parse PATH...`: the normalized transactions as NDJSON on stdout; nothing sent, no state written."""

from __future__ import annotations

from typing import Any

import click

from shipper.commands import SUMMARIES
from shipper.commands.options import apply_options, config_option, understanding_options, window_options
from shipper.commands.running import (
    exit_if_unreadable,
    make_parser,
    need_a_match,
    need_paths,
    report_inputs,
    settings_fields,
    setup_logging,
)
from shipper.commands.stderr import json_stderr
from shipper.deadletter import DeadLetter
from shipper.errors import FatalError
from shipper.output import cannot_write, whole_writes
from shipper.processors import chain_for
from shipper.processors.redact import mask_text
from shipper.settings import Settings
from shipper.sources.files import FileSource, Oversize
from shipper.transform import EVENT, FAILED, INVALID, NormalizedLines, Transformer


@click.command(short_help=SUMMARIES["parse"])
@click.argument("paths", nargs=-1)
@apply_options(understanding_options + window_options + [config_option])
def parse(paths: tuple[str, ...], **kw: Any) -> None:
    """Print the normalized transactions of log files as NDJSON; send nothing, write no state.

    Lines that cannot be understood are reported on stderr, one line each. Masks apply, as when shipping.
    """
    # What the file reader logs (a gzip file cut short) in the run's form, `kong-ship: ERROR: ...`, not bare
    # through Python's last-resort handler.
    setup_logging("warning", "json" if json_stderr() else "text")
    need_paths(paths)
    need_a_match(paths)
    parser = make_parser(kw["fmt"], dict(kw["nginx_field"]))
    # The same settings and chain as a shipping run's: what parse prints is what would be shipped.
    settings = Settings(paths=list(paths), **settings_fields(kw))
    masker, chain = chain_for(settings)
    unreadable = report_inputs(paths)
    source = FileSource(list(paths), known=lambda fingerprint: {}, follow=False, max_line_bytes=settings.max_line_bytes)
    out = whole_writes()
    errors = DeadLetter(None, masker)
    transform = Transformer(parser, chain, NormalizedLines())  # the boundary of shipping: no line stops a parse
    for file_id, data, offset, end in source.read_all():
        where = f"{source.path_of(file_id)}: offset {offset}"  # a byte offset (what the dead-letter file keeps)
        if type(data) is Oversize:
            errors.write("too_long", "")
            click.echo(f"kong-ship: {where}: too_long: line of {data.length} bytes", err=True)
            continue
        outcome, payload, _ = transform(file_id, data, offset, end)
        if outcome == EVENT:
            try:
                out.write(payload)
            except BrokenPipeError:
                raise  # `parse | head`: click's own quiet exit 1
            except OSError as exc:  # `> /dev/full`, a quota, EIO: one line and exit 1, not a traceback
                raise FatalError(cannot_write(out, exc)) from None
        elif outcome in (INVALID, FAILED):
            reason, detail = payload
            errors.write(reason, detail)
            click.echo(f"kong-ship: {where}: {reason}: {mask_text(detail, masker)}", err=True)
    source.close()
    try:
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise FatalError(cannot_write(out, exc)) from None
    for path, size in source.unterminated:
        click.echo(f"kong-ship: {path}: ends with {size} bytes of an unfinished line (not printed)", err=True)
    if errors.total:
        click.echo(f"kong-ship: {errors.total} line(s) not understood", err=True)
    exit_if_unreadable(unreadable + len(source.unread))  # a corrupt gzip file's rest too (said when it happened)
