"""What every shipping command does around its pipeline: set up logging, turn options into `Settings` and sinks,
run the pipeline with its progress bar and metrics endpoint, and print the summary.

stderr speaks one language per run: text, or with --log-format json one JSON object per line (stderr.py: `say`
writes the lines that are not log records, an input error or a fatal end, in that language).
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import time
from glob import has_magic
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click
import orjson

from shipper.commands.options import RUN_OPTIONS, SETTINGS_FIELD, SINK_OPTION_NAMES, Endpoint
from shipper.commands.stderr import say, stderr_lost, use_json_stderr
from shipper.errors import ConfigError
from shipper.formats import Parser
from shipper.output import printable
from shipper.processors.identity import DEFAULT_JWT_PLACES
from shipper.processors.redact import mask_text, redact_url, url_has_userinfo
from shipper.routing import Routing
from shipper.routing import build_sinks as build_routed_sinks
from shipper.routing import from_defaults as routing_from_defaults
from shipper.settings import Settings, default_state_dir
from shipper.sinks import SINK_NAMES, sink_class
from shipper.sources.checkpoints import check_state_dir
from shipper.sources.files import expand, input_problems
from shipper.workers import default_workers

if TYPE_CHECKING:
    from shipper.pipeline import RunResult

log = logging.getLogger("kong-ship")


# -- stderr and logging ----------------------------------------------------------------------------------------
class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "message": printable(record.getMessage()),  # a file name that is not UTF-8
            }
        ).decode()


class RedactFilter(logging.Filter):
    """Our own log lines pass the textual masks: a request target with `?token=…` (receive's debug log), a URL
    with userinfo or a header quoted in a message never reaches the journal."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        # A traceback (a dying thread's, at debug level) ends with its exception's message, which may quote
        # what it was working on: masked as the message is (the formatter prints `exc_text` when it is set).
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_text(_TRACEBACKS.formatException(record.exc_info))
        return True


_TRACEBACKS = logging.Formatter()


class StderrHandler(logging.StreamHandler):
    """Log lines to stderr; when it cannot be written (its reader gone), stderr goes to /dev/null (stderr.py:
    `stderr_lost`) instead of logging's "--- Logging error ---" and a traceback at each line after."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            stderr_lost()
            return
        super().handleError(record)


def setup_logging(level: str, fmt: str = "text") -> None:
    use_json_stderr(fmt == "json")
    handler = StderrHandler(sys.stderr)
    handler.addFilter(RedactFilter())
    if fmt == "json":
        formatter: logging.Formatter = JSONFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("kong-ship: %(levelname)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger("kong-ship")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)


# -- inputs ----------------------------------------------------------------------------------------------------
def need_paths(paths: tuple[str, ...]) -> None:
    if not paths:
        raise ConfigError("no log files given: pass PATH... or set input.paths in the config file")


def need_a_match(paths: tuple[str, ...]) -> None:
    if "-" in paths:
        raise ConfigError("- (standard input) is not read: name the log files (gzip files are read as they are)")
    if not expand(list(paths)):
        # nothing to do at all: a usage error (a literal path is named as `input_problems` names it)
        raise ConfigError(f"{paths[0]}: no such file" if len(paths) == 1 and not has_magic(paths[0])
                          else f"no file matches {' '.join(paths)}")


def report_inputs(paths: tuple[str, ...]) -> int:
    """One-shot commands name each input they cannot read (no match, not a regular file, no permission) and
    read the others; the run then exits 1, since "skipped until it becomes readable" means nothing here."""
    problems = input_problems(list(paths))
    for problem in problems:
        say("error", problem)
    return len(problems)


def exit_if_unsaved(result: RunResult) -> None:
    """Exit 1 with one line when a sink's last checkpoint save failed (its state file system read-only or full):
    every record may have been delivered, but a script or systemd reading exit 0 would not know that the next
    run sends again what came after the last checkpoint saved."""
    if result.unsaved:
        say("error", f"the checkpoint of {', '.join(result.unsaved)} could not be saved at the end (said above): "
                     "the next run sends again what came after the last one saved")
        sys.exit(1)


def exit_if_unreadable(count: int) -> None:
    if count:
        say("error", f"{count} input(s) could not be read, whole or in part (said above)")
        sys.exit(1)


# -- options -> Settings ---------------------------------------------------------------------------------------
def make_parser(fmt: str, nginx_fields: dict[str, str]) -> Parser:
    try:
        return Parser(fmt, nginx_fields)
    except ValueError as exc:  # an --nginx-field naming no transaction field
        raise ConfigError(f"--nginx-field: {exc}") from None


def jwt_places(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not value.strip() or any(not part for part in value.strip().split(".")):
            raise ConfigError(f"--jwt-from {value!r}: expected a dotted path, e.g. {DEFAULT_JWT_PLACES[0]}")
    return tuple(v.strip() for v in values) or DEFAULT_JWT_PLACES


def load_ca_file(path: str | None) -> str | None:
    """Load --ca-file once at start, so a bad file is a usage error (exit 2) and not a failure per request."""
    if not path:
        return None
    from shipper.delivery.trust import tls_context

    try:
        tls_context(path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"--ca-file {path}: cannot load it: {getattr(exc, 'strerror', None) or exc}") from None
    return os.path.abspath(path)


# How an option's value becomes its Settings field's, where it is not the value itself.
_FIELD_VALUE: dict[str, Callable[[Any], Any]] = {
    "sinks": lambda names: list(dict.fromkeys(names)),
    "state_dir": lambda path: os.path.abspath(path or default_state_dir()),
    "nginx_field": dict,
    "jwt_from": jwt_places,
    "mask_header": tuple,
    "mask_query": tuple,
    "mask_body_key": tuple,
    "ship_raw_bodies": bool,
    "workers": lambda workers: default_workers() if workers == "auto" else workers,
    "since": lambda moment: moment.ms if moment else None,
    "until": lambda moment: moment.ms if moment else None,
    "ca_file": load_ca_file,
}


def settings_fields(kw: dict[str, Any]) -> dict[str, Any]:
    """The Settings fields the command's options give; the options a command lacks leave their field at its
    default (`receive` has no --poll-interval). Sink options go to `sink_options`, exactly those."""
    fields: dict[str, Any] = {}
    for name, value in kw.items():
        if name in RUN_OPTIONS or name in SINK_OPTION_NAMES:
            continue
        convert = _FIELD_VALUE.get(name)
        fields[SETTINGS_FIELD.get(name, name)] = convert(value) if convert else value
    fields["sink_options"] = {name: value for name, value in kw.items() if name in SINK_OPTION_NAMES}
    return fields


def build_settings(paths: tuple[str, ...], kw: dict[str, Any], **fixed: Any) -> Settings:
    """The run's Settings from the command's options; `fixed` sets fields the command decides itself (a spooled
    command's state directory and line limit)."""
    if not kw["sinks"]:
        raise ConfigError(f"no sink: pass --sink {{{','.join(SINK_NAMES)}}} or add a [sinks.NAME] table to the "
                          "config file")
    if "fmt" in kw:
        make_parser(kw["fmt"], dict(kw["nginx_field"]))
    since, until = kw.get("since"), kw.get("until")
    if since and until and since.ms >= until.ms:
        raise ConfigError(f"--since {since.text} is not before --until {until.text}: the window is empty")
    return Settings(paths=list(paths), **{**settings_fields(kw), **fixed})


def sink_urls(endpoints: tuple[Endpoint, ...], sinks: list[str]) -> dict[str, str | None]:
    """Each sink's --endpoint (None: the vendor's default)."""
    out: dict[str, str | None] = {name: None for name in sinks}
    for endpoint in endpoints:
        if endpoint.sink is not None:
            if endpoint.sink not in sinks:
                # e.g. the config file names several sinks and the command line picked fewer
                log.warning("--endpoint %s: no --sink %s in this run; ignored", endpoint.text, endpoint.sink)
                continue
            out[endpoint.sink] = endpoint.url
        elif len(sinks) > 1:
            raise ConfigError(f"--endpoint {endpoint.text}: with several sinks, name one: --endpoint SINK=URL")
        else:
            out[sinks[0]] = endpoint.url
    for name, url in out.items():
        if url is not None and url_has_userinfo(url):
            # httpx would turn it into an Authorization header, replacing the vendor's credential (Segment's
            # write key), and it would show wherever the endpoint is printed: refused, not silently stripped.
            raise ConfigError(f"--endpoint {redact_url(url)}: a user:password@ in the URL is refused; "
                              f"give the {name} credential the documented way")
    return out


def build_sinks(settings: Settings, endpoints: tuple[Endpoint, ...]) -> list:
    urls = sink_urls(endpoints, settings.sinks)
    return [sink_class(name).from_options(settings.sink_options, urls[name]) for name in settings.sinks]


def prepare(paths: tuple[str, ...], kw: dict[str, Any], **fixed: Any) -> tuple[Settings, list]:
    need_paths(paths)
    setup_logging(kw["log_level"], kw["log_format"])
    routing = routing_of_command()
    if routing is None:
        settings = build_settings(paths, kw, **fixed)
        sinks = build_sinks(settings, kw["endpoint"])  # credentials first: the most common mistake
    else:  # [[route]] tables: a lane per destination (shipper/routing.py); settings.sinks names every sink used
        settings = build_settings(paths, {**kw, "sinks": routing.sink_kinds(kw["sinks"])}, **fixed)
        urls = sink_urls(kw["endpoint"], settings.sinks)
        sinks = build_routed_sinks(routing, list(dict.fromkeys(kw["sinks"])), settings.sink_options, urls)
    check_state_dir(settings.state_dir)
    check_dead_letter(settings.dead_letter_path)
    return settings, sinks


def check_dead_letter(path: str) -> None:
    """What the dead-letter file's first write would find out, said before any work (exit 2): a path under a
    file, or something that cannot be appended to (a FIFO, a socket, a terminal or a pipe such as /dev/stderr, a
    disk). It showed at the first malformed line as a write retried for ever: a backfill that never ended, a
    FIFO nobody reads blocking the run at the open. Regular files and /dev/null pass; what may pass with time (a
    read-only remount, a full disk) is left to the writes, which wait it out."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return  # created at the first dead letter, with the directories it needs
    except OSError as exc:  # ENOTDIR: a file where a directory of the path should be
        raise ConfigError(f"--dead-letter {path}: {exc.strerror}") from None
    mode = found.st_mode
    if stat.S_ISREG(mode):
        return
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "a block device" if stat.S_ISBLK(mode) else "a device")
    if stat.S_ISCHR(mode):
        try:  # as the writes open it: /dev/null seeks, a terminal does not
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_NOCTTY)
            try:
                if os.isatty(fd):
                    kind = "a terminal"
                else:
                    os.lseek(fd, 0, os.SEEK_END)
                    return
            finally:
                os.close(fd)
        except OSError:
            pass
    raise ConfigError(f"--dead-letter {path}: {kind}, not a file lines can be appended to")


def routing_of_command() -> Routing | None:
    """The [[route]] tables of the configuration file the running command was given (its click defaults)."""
    ctx = click.get_current_context(silent=True)
    return routing_from_defaults(ctx.default_map if ctx is not None else None)


def prepare_spooled(kw: dict[str, Any], name: str, max_line_bytes: int) -> tuple[Settings, list, str]:
    """Settings and sinks for a command whose records reach the pipeline through a spool (`receive`, `audit
    tail`), and the spool's directory.

    Everything of such a command lives in STATE_DIR/<name>/ (spool, checkpoints, dead letters), so a `tail` on
    the same node may share --state-dir without the two mixing their checkpoints. Spooled records are kong-ship's
    own JSON envelopes: no format guessing, read from their start in one process. Both spool records masked with
    the run's `--mask-*` names (`chain_for(settings)`'s masker); the JWT options apply where the command has them
    (`receive`, for Kong's records): `audit tail` keeps their defaults (audit records carry no JWT)."""
    spool_dir = os.path.join(os.path.abspath(kw["state_dir"] or default_state_dir()), name)
    settings, sinks = prepare(
        (os.path.join(spool_dir, "spool-*.jsonl"),), kw, state_dir=spool_dir, max_line_bytes=max_line_bytes
    )  # creates spool_dir
    return settings, sinks, spool_dir


# -- running ---------------------------------------------------------------------------------------------------
def run(settings: Settings, sinks: list, follow: bool, metrics_addr: str | None = None, progress: bool = False):
    from shipper.pipeline import Pipeline

    pipeline = Pipeline(settings, sinks, follow=follow)
    return pipeline, drive(pipeline, metrics_addr, progress)


def drive(pipeline, metrics_addr: str | None = None, progress: bool = False, collectors: Sequence[Any] = ()):
    """Run a pipeline to its end, with the progress bar and the metrics endpoint around it (serving the
    `collectors` too: a command's own sources); its RunResult."""
    bar = None
    if progress:
        from shipper.service.progress import Progress

        bar = Progress(pipeline, sys.stderr)
        bar.start()
    server = None
    if metrics_addr:
        from shipper.service.metrics import serve

        server = serve(pipeline, metrics_addr, collectors)
        log.info("metrics at http://%s/metrics", metrics_addr)
    try:
        result = pipeline.run()
    finally:
        if bar is not None:
            bar.stop()
        if server is not None:
            server.shutdown()
    return result
