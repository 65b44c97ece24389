"""`kong-ship status`: the checkpoints and the lag, read from the state directory (no running kong-ship needed)."""

from __future__ import annotations

import os

import click
import orjson

from shipper.commands import SUMMARIES
from shipper.errors import ConfigError, FatalError
from shipper.settings import default_state_dir


@click.command(short_help=SUMMARIES["status"])
# readable=False: a directory we may not read is a failure (exit 1, below), not a wrong flag (click's exit 2)
@click.option("--state-dir", envvar="KONG_SHIP_STATE_DIR", type=click.Path(file_okay=False, readable=False),
              help="The state directory [env KONG_SHIP_STATE_DIR; default as for tail].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
def status(state_dir: str | None, as_json: bool) -> None:
    """Show, per sink and file, the checkpoint, the file's size and the lag (bytes not yet shipped), and per
    sink the records dropped on purpose (filtered, by reason) and those no route matched (unrouted), over every run.

    Reads the state directory only: no running kong-ship is needed.
    """
    from shipper.service.status import collect, filtered, render, render_filtered, render_unrouted, unrouted

    state_dir = state_dir or default_state_dir()
    if not os.path.isdir(state_dir):
        what = "is not a directory" if os.path.exists(state_dir) else "does not exist"  # a FIFO, a socket
        raise ConfigError(f"state directory {state_dir} {what} (set --state-dir)")
    try:
        os.listdir(state_dir)
        rows = collect(state_dir)
    except OSError as exc:
        raise FatalError(f"cannot read {exc.filename or state_dir}: {exc.strerror}") from None
    except ConfigError as exc:  # a checkpoint file it cannot make sense of: the state is broken, not the flags
        raise FatalError(str(exc)) from None
    dropped = filtered(state_dir)  # filters and sampling, by reason, over every run (issue 17)
    nowhere = unrouted(state_dir)  # records no route matched, over every run (routing.py)
    if as_json:
        click.echo(orjson.dumps({"state_dir": state_dir, "files": rows, "filtered": dropped, "unrouted": nowhere},
                                option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(rows))
        if dropped:
            click.echo(render_filtered(dropped))
        if nowhere:
            click.echo(render_unrouted(nowhere))
