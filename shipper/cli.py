"""The `kong-ship` command: the group, `main` and the exit codes. Each command lives in its own module under
`shipper.commands` (Celery's `celery/bin/` layout); this module only adds them to the group, so imports run one
way: commands import `shipper.commands.options` and `shipper.commands.running`, nothing imports this module but
`python -m shipper` and the console script.

Exit codes: 0 done; 1 a fatal runtime error (the vendor refused our credentials) or, for backfill, events the
vendor permanently rejected; 2 a usage or configuration error. Errors are one line on stderr, no traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from shipper import __version__
from shipper.allocator import map_big_buffers, return_free_pages
from shipper.commands.audit import audit
from shipper.commands.backfill import backfill
from shipper.commands.check_config import check_config
from shipper.commands.init import init
from shipper.commands.parse import parse
from shipper.commands.receive import receive
from shipper.commands.running import say, use_json_stderr
from shipper.commands.status import status
from shipper.commands.tail import tail
from shipper.commands.tap import tap
from shipper.errors import ConfigError, FatalError
from shipper.processors.redact import mask_text

EXIT_OK = 0
EXIT_FAILED = 1  # a fatal runtime error; for backfill, events the vendor permanently rejected
EXIT_USAGE = 2  # a usage or configuration error
EXIT_INTERRUPTED = 130  # Ctrl-C before the run's own handlers are in place (128 + SIGINT)


# -- the group ------------------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="kong-ship")
def cli() -> None:
    """Ship Kong Gateway file-log and Nginx JSON access logs to Segment, Moesif or Runscope.

    At-least-once: checkpoints move only past what the vendor acknowledged, every event carries an id derived
    from its record, and the vendors de-duplicate on it.
    """


def _config_defaults(argv: list[str]) -> dict[str, Any] | None:
    from shipper.service import config

    path = config.find_config(argv)
    if path is None:
        return None
    data = config.load(path)
    return {
        name: (
            # a group (`audit`): each of its commands takes the file's defaults like a top-level one
            {sub: config.default_map(data, path, c) for sub, c in command.commands.items()}
            if isinstance(command, click.Group)
            else config.default_map(data, path, command)
        )
        for name, command in cli.commands.items()
    }


# click >= 8.2 raises it for a group called without a command (8.1 printed the help and exited 0 itself).
_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _json_from_the_start(args: list[str], defaults: dict[str, Any] | None) -> None:
    """--log-format json (flag or config file) holds for the errors found before logging is set up too: a usage
    error, an input that matches nothing."""
    for i, arg in enumerate(args):
        if arg == "--log-format=json" or (arg == "--log-format" and args[i + 1 : i + 2] == ["json"]):
            use_json_stderr(True)
            return
        if arg == "--log-format" or arg.startswith("--log-format="):
            return  # the flag wins over the file
    level: Any = defaults or {}
    for arg in args:
        if isinstance(level, dict) and isinstance(level.get(arg), dict):
            level = level[arg]
    use_json_stderr(isinstance(level, dict) and level.get("log_format") == "json")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    map_big_buffers()  # before any worker forks: heaps that stay flat however long the run (allocator.py)
    return_free_pages()
    try:
        defaults = _config_defaults(args)
        _json_from_the_start(args, defaults)
        code = cli.main(args=args, prog_name="kong-ship", standalone_mode=False, default_map=defaults)
    except _NoArgsIsHelp as exc:
        exc.show()  # `kong-ship`, `kong-ship audit`: click's own answer, the whole help on stderr, exit 2
        sys.exit(EXIT_USAGE)
    except click.exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "kong-ship"
        message = " ".join(exc.format_message().split())  # click wraps choice lists over several lines
        say("error", f"{message} (see '{command} --help')")
        sys.exit(EXIT_USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C before the run's own handlers are in place
        sys.exit(EXIT_INTERRUPTED)
    except ConfigError as exc:
        say("error", mask_text(str(exc)))
        sys.exit(EXIT_USAGE)
    except FatalError as exc:
        say("fatal", mask_text(str(exc)))  # a vendor's answer may quote us
        sys.exit(EXIT_FAILED)
    except click.exceptions.ClickException as exc:
        say("error", exc.format_message())
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


cli.add_command(tail)
cli.add_command(backfill)
cli.add_command(parse)
cli.add_command(check_config)
cli.add_command(status)
cli.add_command(init)
cli.add_command(receive)
cli.add_command(audit)
cli.add_command(tap)
