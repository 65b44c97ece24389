"""The `kong-ship` command: the group, `main` and the exit codes. Each command lives in its own module under
`shipper.commands` (Celery's `celery/bin/` layout); this module only names them for the group, which imports a
command's module when the command is looked up (`LazyCommands`: a run imports its own command only), so imports
run one way: commands import `shipper.commands.options` and `shipper.commands.running`, nothing imports this module but
`python -m shipper` and the console script.

Exit codes: 0 done; 1 a fatal runtime error (the vendor refused our credentials) or, for backfill, events the
vendor permanently rejected; 2 a usage or configuration error. Errors are one line on stderr, no traceback.
"""

from __future__ import annotations

import codecs
import importlib
import io
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, NoReturn

# httpx's __init__ imports its own command-line client (`httpx.main`, which kong-ship never calls) whenever click,
# rich and pygments happen to be installed: rich and pygments, ~60 ms of CPU at every start. A module marked
# absent makes httpx define its stand-in `main` instead. Before anything imports httpx (the commands do).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import click  # noqa: E402

from shipper import __version__  # noqa: E402
from shipper.allocator import map_big_buffers, return_free_pages  # noqa: E402
from shipper.commands import SUMMARIES  # noqa: E402
from shipper.commands.stderr import say, use_json_stderr  # noqa: E402
from shipper.errors import ConfigError, FatalError  # noqa: E402

EXIT_OK = 0
EXIT_FAILED = 1  # a fatal runtime error; for backfill, events the vendor permanently rejected
EXIT_USAGE = 2  # a usage or configuration error
EXIT_INTERRUPTED = 130  # Ctrl-C before the run's own handlers are in place (128 + SIGINT)


# -- the group ------------------------------------------------------------------------------------------------
# Each command by name: the module under `shipper.commands` that defines it, as an attribute of the module's name.
COMMAND_MODULES = {
    "tail": "tail", "backfill": "backfill", "parse": "parse", "check-config": "check_config", "status": "status",
    "init": "init", "receive": "receive", "audit": "audit", "tap": "tap",
}


class LazyCommands(MutableMapping[str, click.Command]):
    """The group's commands (click's `Group.commands`), each command's module imported when the command is first
    looked up: when it runs, or when `kong-ship --help` shows its short help. A `backfill` does not import what
    only `audit` (cryptography), `tap` (prometheus_client) or `receive` need. Every name is listed from the start,
    so click's listing and its "did you mean" suggestions import nothing."""

    def __init__(self, modules: dict[str, str]) -> None:
        self._modules = dict(modules)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            module = self._modules[name]  # KeyError: no such command (click's `get` answers None)
            try:
                command = getattr(importlib.import_module(f"shipper.commands.{module}"), module)
            except KeyError as exc:  # not "no such command": a failure inside the command's module
                raise RuntimeError(f"importing the {name} command: {exc!r}") from exc
            if command.name != name:
                raise RuntimeError(f"shipper.commands.{module}.{module} is the {command.name!r} command, not {name!r}")
            self._loaded[name] = command
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._loaded and name not in self._modules:
            raise KeyError(name)
        self._loaded.pop(name, None)
        self._modules.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._modules, *self._loaded]))

    def __len__(self) -> int:
        return len(self._modules.keys() | self._loaded.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._modules or name in self._loaded  # without importing


class _Group(click.Group):
    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands' summaries from `shipper.commands.SUMMARIES`, as click would list their `short_help`,
        without importing every command's module to read it."""
        rows = [(name, SUMMARIES[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_Group, commands=LazyCommands(COMMAND_MODULES),
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="kong-ship")
def cli() -> None:
    """Ship Kong Gateway file-log and Nginx JSON access logs to Segment, Moesif or Runscope.

    At-least-once: checkpoints move only past what the vendor acknowledged, every event carries an id derived
    from its record, and the vendors de-duplicate on it.
    """


class _FileDefaults(Mapping[str, Any]):
    """The config file's values as click's `default_map`, one command's at a time, read when click (or
    `_json_from_the_start`) first asks for a command's:
    - a run imports its own command only, as without a file (each command's made at start imported them all:
      audit's cryptography and tap's and receive's modules, ~0.3 s and ~13 MB in a service that only tails);
    - `--version` and the group's `--help` never read it; a command without `--config` (status, init, tap), and
      any command's `--help` (`lenient`), go on without a file they cannot use, saying so in one line: a broken
      /etc/kong-ship/kong-ship.toml must not stop what an operator reaches for to mend it.
    Unknown sections and keys are refused whichever command runs; a value is checked by the commands that take
    it."""

    def __init__(self, path: str, lenient: bool) -> None:
        self._path, self._lenient = path, lenient
        self._data: dict[str, Any] | None = None
        self._made: dict[str, Any] = {}

    def _file(self) -> dict[str, Any]:
        if self._data is None:
            from shipper.service import config

            data = config.load(self._path)
            config.check_sections(data, self._path)  # an unknown section or key: refused, whatever the command
            self._data = data
        return self._data

    def _for(self, command: click.Command) -> dict[str, Any]:
        from shipper.service import config

        try:
            return config.default_map(self._file(), self._path, command)
        except ConfigError as exc:
            if not self._lenient and any(p.name == "config_file" for p in command.params):
                raise
            say("warning", f"{exc}; going on without the file")
            self._data = {}  # said once
            return {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._made:
            command = cli.commands[name]  # KeyError: not a command, no defaults
            self._made[name] = (
                # a group (`audit`): each of its commands takes the file's defaults like a top-level one
                {sub: self._for(c) for sub, c in command.commands.items()}
                if isinstance(command, click.Group)
                else self._for(command)
            )
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(cli.commands)

    def __len__(self) -> int:
        return len(cli.commands)


def _config_defaults(argv: list[str]) -> Mapping[str, Any] | None:
    from shipper.service import config

    path = config.find_config(argv)
    if path is None or "--version" in argv:
        return None
    return _FileDefaults(path, lenient="--help" in argv or "-h" in argv)


# click >= 8.2 raises it for a group called without a command (8.1 printed the help and exited 0 itself).
_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _json_from_the_start(args: list[str], defaults: Mapping[str, Any] | None) -> None:
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
        if isinstance(level, Mapping) and arg in level and isinstance(level[arg], Mapping):
            level = level[arg]
    use_json_stderr(isinstance(level, Mapping) and level.get("log_format") == "json")


class _ClosedStdout(io.TextIOBase):
    """sys.stdout when kong-ship started with descriptor 1 closed (`>&-`). Python leaves it None, and click
    writes nothing at all to a None stdout: `status`, `init --print`, `--help` exited 0 having printed nothing.
    Here the first write of any text, or any use of the binary layer (`output.whole_writes`, before a `parse` or
    a `--sink stdout` run reads anything), is the one-line usage error; a command that prints nothing runs."""

    encoding = "utf-8"
    errors = "strict"

    def _refuse(self) -> NoReturn:
        raise ConfigError("standard output is closed: this command writes its output there (redirect it to a file "
                          "or to /dev/null)")

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError("write() argument must be str")  # click's probe for a binary stream: this is not one
        if text:
            self._refuse()
        return 0

    @property
    def buffer(self) -> NoReturn:
        self._refuse()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _as_printable(exc: UnicodeError) -> tuple[str, int]:
    """stderr's encoding errors: a file name's byte that is not UTF-8 (Python's surrogate escape, U+DC80-U+DCFF)
    as `\\xff`, as `output.printable` shows it in `status`, the JSON lines and the dead-letter file (stderr's own
    backslashreplace wrote `\\udcff`); any other character the encoding lacks, backslash-escaped."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    from shipper.output import printable

    return printable(exc.object[exc.start : exc.end]).encode("ascii", "backslashreplace").decode("ascii"), exc.end


codecs.register_error("kong-ship-printable", _as_printable)


def _standard_descriptors() -> None:
    """Descriptors 0-2 held open (on /dev/null where one was closed: `2>&-` in a cron line), so that no file
    kong-ship opens later becomes standard error and takes our messages; sys.stderr then writes there rather
    than being None (an AttributeError at the first message). A closed standard output refuses what is written
    to it, in one line (`_ClosedStdout`)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False, errors="kong-ship-printable")  # noqa: SIM115  # the process's own
    elif isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(errors="kong-ship-printable")
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    _standard_descriptors()
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
        # Without a context (an option's missing argument, found while parsing), the command named in `args`.
        named = [arg for arg in args if arg in COMMAND_MODULES][:1]
        command = exc.ctx.command_path if exc.ctx else " ".join(["kong-ship", *named])
        message = " ".join(exc.format_message().split())  # click wraps choice lists over several lines
        say("error", f"{message} (see '{command} --help')")
        sys.exit(EXIT_USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C before the run's own handlers are in place
        sys.exit(EXIT_INTERRUPTED)
    except ConfigError as exc:
        from shipper.processors.redact import mask_text  # the masks load only for an error that needs them

        say("error", mask_text(str(exc)))
        sys.exit(EXIT_USAGE)
    except FatalError as exc:
        from shipper.processors.redact import mask_text

        say("fatal", mask_text(str(exc)))  # a vendor's answer may quote us
        sys.exit(EXIT_FAILED)
    except click.exceptions.ClickException as exc:
        say("error", exc.format_message())
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.filename is not None:
            raise  # a file's own error that nothing caught: a bug, with its traceback
        # A write to standard output failed (`--help > /dev/full`: no space left, EIO), click's closed pipe aside:
        # the commands' own writes say so themselves.
        from shipper.output import cannot_write

        open_stdout = sys.stdout is not None and not isinstance(sys.stdout, _ClosedStdout)
        say("fatal", cannot_write(sys.stdout.buffer, exc) if open_stdout else str(exc))
        sys.exit(EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
