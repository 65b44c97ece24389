"""The `kong-ship` command. Thin: options → Settings → Pipeline.run(), and exit codes.

Exit codes: 0 done; 1 a fatal runtime error (the vendor refused our credentials) or, for backfill, events the
vendor permanently rejected; 2 a usage or configuration error. Errors are one line on stderr, no traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import orjson
from click_option_group import OptionGroup

from shipper import __version__
from shipper.deadletter import DeadLetter
from shipper.errors import ConfigError, FatalError
from shipper.formats import FORMATS, Parser
from shipper.processors import build_chain
from shipper.processors.identity import DEFAULT_JWT_PLACES
from shipper.processors.masking import Masker
from shipper.processors.redact import mask_text, redact_url, url_has_userinfo
from shipper.settings import Settings, default_state_dir
from shipper.sinks import SINK_NAMES, sink_class, sink_module
from shipper.sources.checkpoints import check_state_dir
from shipper.sources.files import FileSource, Oversize, expand, input_problems
from shipper.service.progress import terminal_width
from shipper.transform import EVENT, FAILED, INVALID, NormalizedLines, Transformer, default_workers

log = logging.getLogger("kong-ship")


# -- option groups -------------------------------------------------------------------------------------------
def _apply(options: list[Callable]) -> Callable:
    """Attach `options` to a command, grouped for --help: each group's options together, the groups in the order
    of their rank (options of no group first: a command's own, such as receive's --listen)."""
    options = sorted(options, key=lambda option: getattr(option, "rank", 0))

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


class _Group(OptionGroup):
    """A heading in --help; `rank` orders the headings (every shipping command shows them in one order)."""

    def __init__(self, rank: int, name: str) -> None:
        super().__init__(name)
        self.rank = rank

    def option(self, *decls: str, **attrs: Any) -> Callable:
        decorator = super().option(*decls, **attrs)
        decorator.rank = self.rank  # type: ignore[attr-defined]
        return decorator


# The first screen of `tail --help` and `backfill --help`: where to ship, what to read, where state lives.
_DELIVERY = _Group(1, "Delivery")
_INPUT = _Group(2, "Input")
_STATE = _Group(3, "State")
_SERVICE = _Group(4, "Configuration, logs and metrics")
_UNDERSTANDING = _Group(5, "Understanding the records (format, user, masks)")
_TUNING = _Group(6, "Delivery tuning (batches, retries, limits, TLS)")
_SINK_GROUPS = {
    "segment": _Group(7, "Segment sink (the event name and path also shape --sink stdout)"),
    "moesif": _Group(8, "Moesif sink"),
    "runscope": _Group(9, "Runscope sink (legacy)"),
    "webhook": _Group(10, "Webhook sink"),
}


def _sink_options() -> list[Callable]:
    """Every sink's options once each, under its sink's heading (stdout shares Segment's event options)."""
    seen, out = set(), []
    for name in SINK_NAMES:
        for decls, kwargs in sink_module(name).OPTIONS:
            if decls[0] not in seen:
                seen.add(decls[0])
                out.append(_SINK_GROUPS[name].option(*decls, **kwargs))
    return out


_config_option = _SERVICE.option(
    "--config", "config_file", type=click.Path(dir_okay=False), expose_value=False, is_eager=True,
    help="TOML configuration file [env KONG_SHIP_CONFIG; default /etc/kong-ship/kong-ship.toml if present]. "
         "Flags win over the environment, which wins over the file.",
)

_understanding = [
    _UNDERSTANDING.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                 help="Log format; auto detects it per line."),
    _UNDERSTANDING.option("--nginx-field", "nginx_field", multiple=True, metavar="FIELD=KEY",
                 help="Map a transaction field to an Nginx log key (repeatable), e.g. client_ip=real_ip."),
    _UNDERSTANDING.option("--jwt-from", "jwt_from", multiple=True, metavar="DOTTED.PATH",
                 help="Where to find the JWT in a record (repeatable, in order). "
                      f"Default: {', '.join(DEFAULT_JWT_PLACES)}."),
    _UNDERSTANDING.option("--jwt-claim", default="sub", show_default=True, help="JWT claim that holds the user id."),
    _UNDERSTANDING.option("--mask-header", multiple=True, metavar="NAME", help="Also mask this header (repeatable)."),
    _UNDERSTANDING.option("--mask-query", multiple=True, metavar="NAME", help="Also mask this query argument (repeatable)."),
    _UNDERSTANDING.option("--mask-body-key", multiple=True, metavar="NAME",
                 help="Also mask this key in bodies, at any depth (repeatable)."),
    _UNDERSTANDING.option("--ship-raw-bodies", is_flag=True,
                 help="Send bodies that are neither JSON nor form-encoded as they are (default: a placeholder "
                      "with their size, since their secrets cannot be found)."),
    _UNDERSTANDING.option("--max-line-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
                 help="Longer lines are set aside and reported (when shipping: in the dead-letter file)."),
]

_shipping = [
    # Not required=True: a config file's [sinks.NAME] tables give it too (the template unit relies on that), and
    # click would print "[required]"; _settings says when neither does.
    _DELIVERY.option("--sink", "sinks", multiple=True, type=click.Choice(SINK_NAMES),
                 help="Where to ship (repeatable: every record goes to each sink). Needed unless the config file "
                      "has [sinks.NAME] tables."),
    _DELIVERY.option("--endpoint", multiple=True, metavar="[SINK=]URL",
                 help="Vendor base URL (default: the vendor's public one). With several sinks: SINK=URL."),
    _STATE.option("--state-dir", envvar="KONG_SHIP_STATE_DIR", type=click.Path(file_okay=False),
                 help="Checkpoints live here [env KONG_SHIP_STATE_DIR; default $STATE_DIRECTORY, "
                      "else $XDG_STATE_HOME/kong-ship]."),
    _STATE.option("--dead-letter", type=click.Path(dir_okay=False),
                 help="Dead-letter file [default: STATE_DIR/dead-letter.jsonl]."),
    _TUNING.option("--batch-size", type=click.IntRange(min=1), help="Events per request (default: the vendor's maximum)."),
    _TUNING.option("--flush-interval", type=click.FloatRange(min=0.001), default=0.25, show_default=True,
                 help="Seconds before a partial batch is sent."),
    _TUNING.option("--queue-size", type=click.IntRange(min=1), default=10_000, show_default=True,
                 help="Events queued per sink; when full, reading pauses (the file is the buffer)."),
    _TUNING.option("--concurrency", type=click.IntRange(min=1, max=64), default=2, show_default=True,
                 help="Requests in flight per sink."),
    _TUNING.option("--shutdown-timeout", type=click.FloatRange(min=0), default=10.0, show_default=True,
                 help="Seconds to deliver what is in flight after SIGTERM/SIGINT."),
    _TUNING.option("--retry-initial-delay", type=click.FloatRange(min=0.001), default=0.5, show_default=True,
                 help="First backoff step, seconds (then exponential with full jitter)."),
    _TUNING.option("--retry-max-delay", type=click.FloatRange(min=0.001), default=60.0, show_default=True,
                 help="Longest backoff between retries, seconds (Retry-After is honoured beyond it)."),
    _TUNING.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
                 help="HTTP request timeout, seconds."),
    _SERVICE.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
                 show_default=True),
    _SERVICE.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                 help="Own log lines on stderr: text, or one JSON object per line."),
    _SERVICE.option("--metrics-addr", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics."),
    _TUNING.option("--max-rate", type=click.FloatRange(min=0.001), metavar="N",
                 help="At most N events per second to each sink (retries count); reading slows to match."),
    _TUNING.option("--ca-file", type=click.Path(exists=True, dir_okay=False), metavar="PEM",
                 help="CA certificate(s) to trust for the sinks' TLS, on top of the default ones (verification is "
                      "always on; `audit tail` verifies the Admin API with them too)."),
] + _sink_options()

_following = [
    _INPUT.option("--start-at", type=click.Choice(["beginning", "end"]), default="beginning", show_default=True,
                 help="Where to start files that have no checkpoint (files appearing later always start at the beginning)."),
    _INPUT.option("--poll-interval", type=click.FloatRange(min=0.01), default=0.25, show_default=True,
                 help="Seconds between looks for new data and new files (inotify wakes it sooner)."),
    _INPUT.option("--rotate-wait", type=click.FloatRange(min=0), default=5.0, show_default=True,
                 help="Seconds a rotated-away file must stay quiet before it is let go."),
]

_window = [
    _INPUT.option("--since", metavar="TIME",
                 help="Only records that started at or after TIME: ISO-8601 (2024-05-01T12:00:00Z; no zone = UTC), "
                      "Unix seconds, or a duration ago (7d, 6h, 30m)."),
    _INPUT.option("--until", metavar="TIME", help="Only records that started before TIME (same forms as --since)."),
]

_progress_option = _SERVICE.option(
    "--progress/--no-progress", default=None,
    help="A progress bar on stderr [default: on when stderr is a terminal].",
)


def _workers_option(default: str) -> Callable:
    return _INPUT.option(
        "--workers", default=default, show_default=True, metavar="N|auto",
        help="Processes that parse and encode lines (auto: one per CPU; 0: in the reader thread).",
    )


_SHIPPING_KEYS = {
    "fmt", "nginx_field", "jwt_from", "jwt_claim", "mask_header", "mask_query", "max_line_bytes", "sinks",
    "endpoint", "state_dir", "dead_letter", "batch_size", "flush_interval", "queue_size", "concurrency",
    "shutdown_timeout", "retry_initial_delay", "retry_max_delay", "timeout", "log_level", "start_at",
    "poll_interval", "rotate_wait", "workers", "log_format", "metrics_addr", "since", "until", "max_rate",
    "progress", "ca_file", "mask_body_key", "ship_raw_bodies",
}


def _nginx_map(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        name, eq, key = value.partition("=")
        if not eq or not name or not key:
            raise ConfigError(f"--nginx-field {value!r}: expected FIELD=KEY, e.g. client_ip=real_ip")
        out[name.strip()] = key.strip()
    return out


def _endpoints(values: tuple[str, ...], sinks: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {name: None for name in sinks}
    for value in values:
        name, eq, url = value.partition("=")
        if eq and name in SINK_NAMES and "://" not in name:
            if name not in sinks:
                # e.g. the config file names several sinks and the command line picked fewer
                log.warning("--endpoint %s: no --sink %s in this run; ignored", value, name)
                continue
            out[name] = url
        elif len(sinks) > 1:
            raise ConfigError(f"--endpoint {value}: with several sinks, name one: --endpoint SINK=URL")
        else:
            out[sinks[0]] = value
    for name, url in out.items():
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(f"--endpoint {redact_url(url)}: expected an http:// or https:// URL")
        if url is not None and url_has_userinfo(url):
            # httpx would turn it into an Authorization header, replacing the vendor's credential (Segment's
            # write key), and it would show wherever the endpoint is printed: refused, not silently stripped.
            raise ConfigError(f"--endpoint {redact_url(url)}: a user:password@ in the URL is refused; "
                              f"give the {name} credential the documented way")
    return out


def _jwt_places(values) -> tuple[str, ...]:
    for value in values or ():
        if not value.strip() or any(not part for part in value.strip().split(".")):
            raise ConfigError(f"--jwt-from {value!r}: expected a dotted path, e.g. {DEFAULT_JWT_PLACES[0]}")
    return tuple(v.strip() for v in values or ()) or DEFAULT_JWT_PLACES


def _workers(value: str) -> int:
    if value == "auto":
        return default_workers()
    if not value.isdigit() or int(value) > 64:
        raise ConfigError(f"--workers {value}: expected a number from 0 to 64, or auto")
    return int(value)


def _settings(paths: tuple[str, ...], kw: dict[str, Any]) -> Settings:
    sinks = list(dict.fromkeys(kw["sinks"]))
    if not sinks:
        raise ConfigError(f"no sink: pass --sink {{{','.join(SINK_NAMES)}}} or add a [sinks.NAME] table to the "
                          "config file")
    state_dir = kw.get("state_dir") or default_state_dir()
    try:
        Parser(kw["fmt"], _nginx_map(kw["nginx_field"]))
    except ValueError as exc:
        raise ConfigError(f"--nginx-field: {exc}") from None
    since_ms, until_ms = _time_option(kw, "since"), _time_option(kw, "until")
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise ConfigError(f"--since {kw['since']} is not before --until {kw['until']}: the window is empty")
    return Settings(
        paths=list(paths),
        sinks=sinks,
        state_dir=os.path.abspath(state_dir),
        dead_letter=kw.get("dead_letter"),
        format=kw["fmt"],
        nginx_fields=_nginx_map(kw["nginx_field"]),
        batch_size=kw.get("batch_size"),
        flush_interval=kw["flush_interval"],
        queue_size=kw["queue_size"],
        concurrency=kw["concurrency"],
        workers=_workers(kw.get("workers") or "0"),
        shutdown_timeout=kw["shutdown_timeout"],
        start_at=kw.get("start_at") or "beginning",
        max_line_bytes=kw["max_line_bytes"],
        jwt_places=_jwt_places(kw["jwt_from"]),
        jwt_claim=kw["jwt_claim"],
        mask_headers=tuple(kw["mask_header"]),
        mask_query=tuple(kw["mask_query"]),
        mask_body_keys=tuple(kw.get("mask_body_key") or ()),
        ship_raw_bodies=bool(kw.get("ship_raw_bodies")),
        poll_interval=kw.get("poll_interval") or 0.25,
        rotate_wait=kw.get("rotate_wait", 5.0),
        retry_initial=kw["retry_initial_delay"],
        retry_max=kw["retry_max_delay"],
        timeout=kw["timeout"],
        since_ms=since_ms,
        until_ms=until_ms,
        max_rate=kw.get("max_rate"),
        ca_file=_ca_file(kw.get("ca_file")),
        sink_options={k: v for k, v in kw.items() if k not in _SHIPPING_KEYS},
    )


def _ca_file(path: str | None) -> str | None:
    """Load --ca-file once at start, so a bad file is a usage error (exit 2) and not a failure per request."""
    if not path:
        return None
    from shipper.delivery.sender import tls_context

    try:
        tls_context(path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"--ca-file {path}: cannot load it: {getattr(exc, 'strerror', None) or exc}") from None
    return os.path.abspath(path)


def _time_option(kw: dict[str, Any], name: str) -> int | None:
    value = kw.get(name)
    if not value:
        return None
    from shipper.processors.window import parse_time

    try:
        return parse_time(value)
    except ValueError as exc:
        raise ConfigError(f"--{name}: {exc}") from None


def _build_sinks(settings: Settings, endpoints: tuple[str, ...]) -> list:
    urls = _endpoints(endpoints, settings.sinks)
    return [sink_class(name).from_options(settings.sink_options, urls[name]) for name in settings.sinks]


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(),
                "message": record.getMessage(),
            }
        ).decode()


class _Redact(logging.Filter):
    """Our own log lines pass the textual masks: a request target with `?token=…` (receive's debug log), a URL
    with userinfo or a header quoted in a message never reaches the journal."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_json_stderr = False  # --log-format json: every line kong-ship writes to stderr is one JSON object


def _say(level: str, message: str, **fields: Any) -> None:
    """A line on stderr that is not a log record (an input error, a fatal end): `kong-ship: LEVEL: message`, or
    with --log-format json one JSON object, like the log lines."""
    if _json_stderr:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        click.echo(orjson.dumps({"time": stamp, "level": level, "message": message, **fields}).decode(), err=True)
    else:
        click.echo(f"kong-ship: {level}: {message}", err=True)


def _setup_logging(level: str, fmt: str = "text") -> None:
    global _json_stderr
    _json_stderr = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Redact())
    if fmt == "json":
        formatter: logging.Formatter = _JSONFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("kong-ship: %(levelname)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger("kong-ship")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _need_paths(paths: tuple[str, ...]) -> None:
    if not paths:
        raise ConfigError("no log files given: pass PATH... or set input.paths in the config file")


def _prepare(paths: tuple[str, ...], kw: dict[str, Any]) -> tuple[Settings, list]:
    _need_paths(paths)
    _setup_logging(kw["log_level"], kw.get("log_format") or "text")
    settings = _settings(paths, kw)
    sinks = _build_sinks(settings, kw["endpoint"])  # credentials first: the most common mistake
    check_state_dir(settings.state_dir)
    return settings, sinks


def _run(settings: Settings, sinks: list, follow: bool, metrics_addr: str | None = None, progress: bool = False):
    from shipper.pipeline import Pipeline

    pipeline = Pipeline(settings, sinks, follow=follow)
    return pipeline, _drive(pipeline, metrics_addr, progress)


def _drive(pipeline, metrics_addr: str | None = None, progress: bool = False):
    """Run a pipeline to its end, with the progress bar and the metrics endpoint around it; its RunResult."""
    bar = None
    if progress:
        from shipper.service.progress import Progress

        bar = Progress(pipeline, sys.stderr)
        bar.start()
    server = None
    if metrics_addr:
        from shipper.service.metrics import serve

        server = serve(pipeline, metrics_addr)
        log.info("metrics at http://%s/metrics", metrics_addr)
    try:
        result = pipeline.run()
    finally:
        if bar is not None:
            bar.stop()
        if server is not None:
            server.shutdown()
    return result


# -- commands ------------------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="kong-ship")
def cli() -> None:
    """Ship Kong Gateway file-log and Nginx JSON access logs to Segment, Moesif or Runscope.

    At-least-once: checkpoints move only past what the vendor acknowledged, every event carries an id derived
    from its record, and the vendors de-duplicate on it.
    """


@cli.command()
@click.argument("paths", nargs=-1)
@_apply(_shipping + _understanding + _following + [_workers_option("0")] + [_config_option])
def tail(paths: tuple[str, ...], **kw: Any) -> None:
    """Follow log files (globs allowed; new matching files are picked up) and ship every record, forever.

    SIGTERM/SIGINT: deliver what is in flight (up to --shutdown-timeout), save checkpoints, exit 0.
    SIGHUP: re-open files and re-read the patterns.
    """
    settings, sinks = _prepare(paths, kw)
    pipeline, result = _run(settings, sinks, follow=True, metrics_addr=kw.get("metrics_addr"))
    _summary(result, sys.stderr)
    if pipeline.forced_by:
        sys.exit(128 + pipeline.forced_by)


@cli.command()
@click.argument("paths", nargs=-1)
@_apply(_shipping + _understanding + _window + [_progress_option, _workers_option("auto"), _config_option])
def backfill(paths: tuple[str, ...], **kw: Any) -> None:
    """Ship log files (plain or gzip, oldest first) to their end, wait for every acknowledgement, and exit.

    Uses the same checkpoints as `tail`: a second run ships only what is new. Exit 1 if the vendor
    permanently rejected any event (they are in the dead-letter file).
    """
    _need_paths(paths)
    _need_a_match(paths)
    settings, sinks = _prepare(paths, kw)
    unreadable = _report_inputs(paths)
    progress = kw.get("progress")
    if progress is None:
        progress = sys.stderr.isatty() and not _json_stderr  # a bar is not JSON
    pipeline, result = _run(settings, sinks, follow=False, metrics_addr=kw.get("metrics_addr"), progress=progress)
    _summary(result, sys.stderr)
    if pipeline.forced_by:
        sys.exit(128 + pipeline.forced_by)
    if pipeline.stopped_by:
        _how_far(pipeline, result)
        sys.exit(128 + pipeline.stopped_by)  # 130 for Ctrl-C, 143 for SIGTERM: the backfill did not finish
    if any(lane.rejected for lane in result.lanes):
        sys.exit(1)
    _exit_if_unreadable(unreadable)


def _how_far(pipeline, result) -> None:
    """An interrupted backfill says how far it got: files and bytes acknowledged by every sink, records shipped."""
    import signal

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


def _need_a_match(paths: tuple[str, ...]) -> None:
    if not expand(list(paths)):
        raise ConfigError(f"no file matches {' '.join(paths)}")  # nothing to do at all: a usage error


def _report_inputs(paths: tuple[str, ...]) -> int:
    """One-shot commands name each input they cannot read (no match, not a regular file, no permission) and
    read the others; the run then exits 1, since "skipped until it becomes readable" means nothing here."""
    problems = input_problems(list(paths))
    for problem in problems:
        _say("error", problem)
    return len(problems)


def _exit_if_unreadable(count: int) -> None:
    if count:
        _say("error", f"{count} input(s) could not be read (listed above)")
        sys.exit(1)


@cli.command()
@click.argument("paths", nargs=-1)
@_apply(_understanding + _window + [_config_option])
def parse(paths: tuple[str, ...], **kw: Any) -> None:
    """Print the normalized transactions of log files as NDJSON; send nothing, write no state.

    Lines that cannot be understood are reported on stderr, one line each. Masks apply, as when shipping.
    """
    _need_paths(paths)
    _need_a_match(paths)
    try:
        parser = Parser(kw["fmt"], _nginx_map(kw["nginx_field"]))
    except ValueError as exc:
        raise ConfigError(f"--nginx-field: {exc}") from None
    masker = Masker((*kw["mask_header"], *kw["mask_query"], *kw["mask_body_key"]), kw["ship_raw_bodies"])
    chain = build_chain(
        _jwt_places(kw["jwt_from"]), kw["jwt_claim"],
        since_ms=_time_option(kw, "since"), until_ms=_time_option(kw, "until"), masker=masker,
    )
    unreadable = _report_inputs(paths)
    source = FileSource(list(paths), known=lambda fingerprint: {}, follow=False, max_line_bytes=kw["max_line_bytes"])
    out = sys.stdout.buffer
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
            out.write(payload)
        elif outcome in (INVALID, FAILED):
            reason, detail = payload
            errors.write(reason, detail)
            click.echo(f"kong-ship: {where}: {reason}: {mask_text(detail, masker)}", err=True)
    source.close()
    out.flush()
    for path, size in source.unterminated:
        click.echo(f"kong-ship: {path}: ends with {size} bytes of an unfinished line (not printed)", err=True)
    if errors.total:
        click.echo(f"kong-ship: {errors.total} line(s) not understood", err=True)
    _exit_if_unreadable(unreadable)


@cli.command("check-config")
@click.argument("paths", nargs=-1)
@_apply(_shipping + _understanding + _following + [_workers_option("0"), _config_option])
def check_config(paths: tuple[str, ...], **kw: Any) -> None:
    """Validate the configuration (file, environment and flags, as `tail` would see them) and print the
    effective settings, secrets redacted. Exit 2 with one line on the first problem."""
    settings, sinks = _prepare(paths, kw)
    from shipper.service.config import effective_toml

    counts = _check_inputs(settings.paths)
    workers = kw.get("workers") or "0"
    resolved = {
        "paths": [os.path.abspath(p) for p in settings.paths], "nginx_field": settings.nginx_fields,
        "jwt_from": list(settings.jwt_places), "state_dir": settings.state_dir,
        "dead_letter": os.path.abspath(settings.dead_letter_path), "ca_file": settings.ca_file,
        "workers": int(workers) if workers.isdigit() else workers,
    }
    endpoints = {name: redact_url(url) if url else None for name, url in _endpoints(kw["endpoint"], settings.sinks).items()}
    defaults = {sink.name: redact_url(url) if (url := getattr(sink, "url", None) or getattr(sink, "base", None)) else None
                for sink in sinks if sink.name != "stdout"}
    click.echo(effective_toml(kw, settings.paths, resolved, settings.sinks, endpoints, defaults), nl=False)
    for line in (f"inputs: {counts}", "configuration OK"):
        if _json_stderr:
            _say("info", line)  # with --log-format json, every stderr line is JSON
        else:
            click.echo(line, err=True)


def _check_inputs(patterns: list[str]) -> str:
    """check-config checks the inputs as backfill reads them: each pattern matches, each file can be read; the
    first problem is the error (exit 2), else how many files each pattern matches."""
    problems = input_problems(patterns)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ConfigError(f"input {problems[0]}{more}")
    return ", ".join(f"{pattern}: {len(expand([pattern]))} file(s)" for pattern in patterns)


@cli.command()
@click.option("--state-dir", envvar="KONG_SHIP_STATE_DIR", type=click.Path(file_okay=False),
              help="The state directory [env KONG_SHIP_STATE_DIR; default as for tail].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
def status(state_dir: str | None, as_json: bool) -> None:
    """Show, per sink and file, the checkpoint, the file's size and the lag (bytes not yet shipped).

    Reads the state directory only: no running kong-ship is needed.
    """
    from shipper.service.status import collect, render

    state_dir = state_dir or default_state_dir()
    if not os.path.isdir(state_dir):
        raise ConfigError(f"state directory {state_dir} does not exist (set --state-dir)")
    rows = collect(state_dir)
    if as_json:
        click.echo(orjson.dumps({"state_dir": state_dir, "files": rows}, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(rows))


# Every line read is in exactly one of: shipped, filtered, dead-lettered, rejected, skipped, blank (once delivered).
SUMMARY_COLUMNS = ("read", "shipped", "filtered", "dead-lettered", "rejected", "skipped", "blank", "anonymous", "retries")


def _summary(result, stream) -> None:
    """The end of a backfill as a small table, one row per sink, then the totals (--log-format json: one JSON
    object with the same counts). On a terminal, columns that are all zero go first when it is too narrow."""
    read = sum(lane.read for lane in result.lanes[:1])
    rate = read / result.elapsed if result.elapsed > 0 else 0.0
    mb = sum(lane.bytes_read for lane in result.lanes[:1]) / 1e6
    if _json_stderr:
        _summary_json(result, stream, rate, mb)
        return
    rows = [("sink", *SUMMARY_COLUMNS)]
    for lane in result.lanes:
        values = (
            lane.read, lane.sent, lane.filtered, lane.dead_lettered, lane.rejected, lane.skipped, lane.blank,
            lane.anonymous, lane.retries,
        )
        rows.append((lane.sink, *(f"{v:,}" for v in values)))
    width = terminal_width(stream)
    while width and _table_width(rows) >= width:
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
    if result.dead_letters:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(result.dead_letters.items()))
        lines.append(f"dead letters: {reasons} → {result.dead_letter_path}")
    for lane in result.lanes[:1]:
        for path, size in lane.unterminated:
            lines.append(f"waiting for a newline: {path} ends with {size} bytes of an unfinished line (not shipped)")
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def _table_width(rows) -> int:
    return sum(max(len(row[i]) for row in rows) for i in range(len(rows[0]))) + 2 * (len(rows[0]) - 1)


def _summary_json(result, stream, rate: float, mb: float) -> None:
    sinks = [
        {
            "sink": lane.sink, "read": lane.read, "shipped": lane.sent, "filtered": lane.filtered,
            "dead_lettered": lane.dead_lettered, "rejected": lane.rejected, "skipped": lane.skipped,
            "blank": lane.blank, "anonymous": lane.anonymous, "retries": lane.retries,
        }
        for lane in result.lanes
    ]
    unterminated = [{"file": p, "bytes": n} for lane in result.lanes[:1] for p, n in lane.unterminated]
    now = time.time()
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
        "level": "info", "message": "summary", "sinks": sinks, "elapsed_s": round(result.elapsed, 3),
        "records_per_s": round(rate, 1), "mb_per_s": round(mb / result.elapsed if result.elapsed > 0 else 0.0, 3),
        "dead_letters": dict(result.dead_letters), "dead_letter_file": result.dead_letter_path or None,
        "unterminated": unterminated,
    }
    stream.write(orjson.dumps(record).decode() + "\n")
    stream.flush()


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
    global _json_stderr
    for i, arg in enumerate(args):
        if arg == "--log-format=json" or (arg == "--log-format" and args[i + 1 : i + 2] == ["json"]):
            _json_stderr = True
            return
        if arg == "--log-format" or arg.startswith("--log-format="):
            return  # the flag wins over the file
    level: Any = defaults or {}
    for arg in args:
        if isinstance(level, dict) and isinstance(level.get(arg), dict):
            level = level[arg]
    _json_stderr = isinstance(level, dict) and level.get("log_format") == "json"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        defaults = _config_defaults(args)
        _json_from_the_start(args, defaults)
        code = cli.main(args=args, prog_name="kong-ship", standalone_mode=False, default_map=defaults)
    except _NoArgsIsHelp as exc:
        exc.show()  # `kong-ship`, `kong-ship audit`: click's own answer, the whole help on stderr, exit 2
        sys.exit(2)
    except click.exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "kong-ship"
        message = " ".join(exc.format_message().split())  # click wraps choice lists over several lines
        _say("error", f"{message} (see '{command} --help')")
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C before the run's own handlers are in place
        sys.exit(130)
    except ConfigError as exc:
        _say("error", mask_text(str(exc)))
        sys.exit(2)
    except FatalError as exc:
        _say("fatal", mask_text(str(exc)))  # a vendor's answer may quote us
        sys.exit(1)
    except click.exceptions.ClickException as exc:
        _say("error", exc.format_message())
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


# Commands with their own module use this one's option helpers, so they are attached after those exist.
from shipper.commands.audit import audit  # noqa: E402
from shipper.commands.init import init  # noqa: E402
from shipper.commands.receive import receive  # noqa: E402

cli.add_command(init)
cli.add_command(receive)
cli.add_command(audit)
