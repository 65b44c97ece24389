"""The options the commands share, under their --help headings, and the click types that check their values.

Celery's `celery/bin/base.py` in our terms: one place for what several commands take. A default is never written
here: it is read from the field of `Settings` the option fills, so the flag, the file and the run agree. The
config file's values are checked by each option's own type (`shipper.service.config` calls `type.convert`), so a
value is judged the same way from a flag or from the file.

Which option goes where is derived, not listed: an option fills a `Settings` field (`SETTINGS_FIELD`), serves
the run around the pipeline (`RUN_OPTIONS`), or is declared by a sink's `OPTIONS` (then it reaches the sinks,
and only then). `check_option_names` refuses anything else when this module is imported, so a new option cannot
silently leak into the sinks or be silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import click
import orjson
from click_option_group import OptionGroup

from shipper.errors import ConfigError
from shipper.formats import FORMATS
from shipper.processors.filters import Filter, parse_statuses
from shipper.processors.identity import DEFAULT_JWT_PLACES
from shipper.processors.redact import redact_url
from shipper.processors.sampling import SampleRule
from shipper.processors.window import parse_time
from shipper.settings import MAX_SECONDS, Settings
from shipper.sinks import SINK_NAMES, sink_class


# -- custom types ----------------------------------------------------------------------------------------------
class CheckedType(click.ParamType):
    """A value kong-ship parses itself. A bad one is a ConfigError naming the flag (one line, exit 2), worded
    as the run has always worded it; `shipper.service.config` catches it to name the file's key instead."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # parsed already (click passes a converted default through again)
        try:
            return self.parse(value)
        except ValueError as exc:
            raise ConfigError(self.problem(param.opts[0] if param else "", value, str(exc))) from None

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def problem(self, flag: str, text: str, reason: str) -> str:
        return f"{flag} {text}: {reason}"


class FiniteFloatRange(click.FloatRange):
    """Every float option's type. click's FloatRange lets `inf` through (it is above any minimum) and `nan` (no
    comparison holds): seconds, rates and events per second are finite, and `inf` or `nan` only surfaces deep in
    the run (a timer out of range, a poll that never fires, int(inf)). From a flag or the file alike."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


class Seconds(FiniteFloatRange):
    """A duration option's type: finite, at least `min`, at most MAX_SECONDS (a year)."""

    def __init__(self, min: float) -> None:  # noqa: A002 - click's own name for it
        super().__init__(min=min, max=MAX_SECONDS)


class Moment(NamedTuple):
    """A --since/--until value: the text as given (for messages) and the moment it names, epoch ms."""

    text: str
    ms: int


class TimeType(CheckedType):
    """ISO-8601, Unix seconds or a duration ago (`7d`), read once, when the command starts."""

    name = "time"

    def parse(self, text: str) -> Moment | None:
        return Moment(text, parse_time(text)) if text else None  # an empty value sets no bound

    def problem(self, flag: str, text: str, reason: str) -> str:
        return f"{flag}: {reason}"  # parse_time's reason quotes the value


class Endpoint(NamedTuple):
    sink: str | None  # None: the one sink of the run
    url: str

    @property
    def text(self) -> str:
        """As the user wrote it."""
        return f"{self.sink}={self.url}" if self.sink else self.url


class EndpointType(CheckedType):
    """`[SINK=]URL`: an http(s) URL, optionally for one named sink. Its userinfo is judged where the sink is
    known (`running.sink_urls`), since the message names the sink's credential."""

    name = "endpoint"

    @staticmethod
    def split(text: str) -> Endpoint:
        name, eq, url = text.partition("=")
        # `http://host/?a=b` holds an = too: only a sink's name before it names a sink
        return Endpoint(name, url) if eq and name in SINK_NAMES and "://" not in name else Endpoint(None, text)

    def parse(self, text: str) -> Endpoint:
        endpoint = self.split(text)
        if not endpoint.url.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        url = urlsplit(endpoint.url)
        if not url.hostname:  # `http://` or `https://:443` would be retried forever
            raise ValueError("the URL names no host")
        if url.port == 0:  # reading .port raises ValueError for one out of range or not a number
            raise ValueError("port 0 is not a port")
        return endpoint

    def problem(self, flag: str, text: str, reason: str) -> str:
        return f"{flag} {redact_url(self.split(text).url)}: {reason}"


class NginxFieldType(CheckedType):
    """`FIELD=KEY`: which Nginx log key holds a transaction field."""

    name = "nginx_field"

    def parse(self, text: str) -> tuple[str, str]:
        name, eq, key = text.partition("=")
        if not eq or not name or not key:
            raise ValueError("expected FIELD=KEY, e.g. client_ip=real_ip")
        return name.strip(), key.strip()

    def problem(self, flag: str, text: str, reason: str) -> str:
        return f"{flag} {text!r}: {reason}"


class WorkersType(CheckedType):
    """`N` (0 to 64) or `auto`; `auto` stays `auto` until the run resolves it (check-config prints it so)."""

    name = "workers"

    def parse(self, text: str) -> int | str:
        if text == "auto":
            return text
        if not text.isdigit() or int(text) > 64:
            raise ValueError("expected a number from 0 to 64, or auto")
        return int(text)


class StatusSpecType(CheckedType):
    """`--exclude-status`: a code (404), a class (5xx) or a range (500-504), kept as written."""

    name = "status"

    def parse(self, text: str) -> str:
        parse_statuses(text)
        return text.strip()


class RuleType(CheckedType):
    """A `[[filter]]` or `[[sampling.rule]]` table (the file gives it as a table, the flag as JSON): its rule."""

    def __init__(self, rule: type[Filter] | type[SampleRule]) -> None:
        self.rule = rule
        self.name = "filter" if rule is Filter else "sample_rule"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dict):
            value = orjson.dumps(value).decode()
        return super().convert(value, param, ctx)

    def problem(self, flag: str, text: str, reason: str) -> str:
        return f"{flag}: {reason}"  # the JSON itself says little; the reason names the key

    def parse(self, text: str) -> Filter | SampleRule:
        try:
            table = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("expected a JSON object, as the [[filter]] or [[sampling.rule]] table") from None
        rule = self.rule.from_table(table)
        unknown = [s for s in getattr(rule, "sinks", ()) if s.partition("@")[0] not in SINK_NAMES]
        if unknown:
            raise ValueError(f"sinks: unknown sink {unknown[0]!r} (known: {', '.join(SINK_NAMES)})")
        return rule


# -- option groups ---------------------------------------------------------------------------------------------
def apply_options(options: list[Callable]) -> Callable:
    """Attach `options` to a command, grouped for --help: each group's options together, the groups in the order
    of their rank (options of no group first: a command's own, such as receive's --listen)."""
    options = sorted(options, key=lambda option: getattr(option, "rank", 0))

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


class RankedGroup(OptionGroup):
    """A heading in --help; `rank` orders the headings (every shipping command shows them in one order)."""

    def __init__(self, rank: int, name: str) -> None:
        super().__init__(name)
        self.rank = rank

    def option(self, *decls: str, **attrs: Any) -> Callable:
        decorator = super().option(*decls, **attrs)
        decorator.rank = self.rank  # type: ignore[attr-defined]
        return decorator


# The first screen of `tail --help` and `backfill --help`: where to ship, what to read, where state lives.
DELIVERY = RankedGroup(1, "Delivery")
INPUT = RankedGroup(2, "Input")
STATE = RankedGroup(3, "State")
SERVICE = RankedGroup(4, "Configuration, logs and metrics")
UNDERSTANDING = RankedGroup(5, "Understanding the records (format, user, masks)")
TUNING = RankedGroup(6, "Delivery tuning (batches, retries, limits, TLS)")
SINK_GROUPS = {
    "segment": RankedGroup(7, "Segment sink (the event name and path also shape --sink stdout)"),
    "moesif": RankedGroup(8, "Moesif sink"),
    "runscope": RankedGroup(9, "Runscope sink (legacy)"),
    "webhook": RankedGroup(10, "Webhook sink"),
}


def sink_options() -> list[Callable]:
    """Every sink's options (its class's OPTIONS, part of the Sink contract) once each, under its sink's heading
    (stdout shares Segment's event options)."""
    seen, out = set(), []
    for name in SINK_NAMES:
        for decls, kwargs in sink_class(name).OPTIONS:
            if decls[0] not in seen:
                seen.add(decls[0])
                out.append(SINK_GROUPS.get(name, TUNING).option(*decls, **kwargs))
    return out


config_option = SERVICE.option(
    "--config", "config_file", type=click.Path(dir_okay=False), expose_value=False, is_eager=True,
    help="TOML configuration file [env KONG_SHIP_CONFIG; default /etc/kong-ship/kong-ship.toml if present]. "
         "Flags win over the environment, which wins over the file.",
)

understanding_options = [
    UNDERSTANDING.option("--format", "fmt", type=click.Choice(FORMATS), default=Settings.format, show_default=True,
                         help="Log format; auto detects it per line, container runtime lines (CRI, Docker json-file) "
                              "included; cri or docker takes every line as one."),
    UNDERSTANDING.option("--nginx-field", "nginx_field", multiple=True, type=NginxFieldType(), metavar="FIELD=KEY",
                         help="Map a transaction field to an Nginx log key (repeatable), e.g. client_ip=real_ip."),
    UNDERSTANDING.option("--jwt-from", "jwt_from", multiple=True, metavar="DOTTED.PATH",
                         help="Where to find the JWT in a record (repeatable, in order). "
                              f"Default: {', '.join(DEFAULT_JWT_PLACES)}."),
    UNDERSTANDING.option("--jwt-claim", default=Settings.jwt_claim, show_default=True,
                         help="JWT claim that holds the user id."),
    UNDERSTANDING.option("--mask-header", multiple=True, metavar="NAME", help="Also mask this header (repeatable)."),
    UNDERSTANDING.option("--mask-query", multiple=True, metavar="NAME",
                         help="Also mask this query argument (repeatable)."),
    UNDERSTANDING.option("--mask-body-key", multiple=True, metavar="NAME",
                         help="Also mask this key in bodies, at any depth (repeatable)."),
    UNDERSTANDING.option("--ship-raw-bodies", is_flag=True,
                         help="Send bodies that are neither JSON nor form-encoded as they are (default: a placeholder "
                              "with their size, since their secrets cannot be found)."),
    UNDERSTANDING.option("--max-line-bytes", type=click.IntRange(min=1024), default=Settings.max_line_bytes,
                         show_default=True,
                         help="Longer lines are set aside and reported (when shipping: in the dead-letter file)."),
]

shipping_options = [
    # Not required=True: a config file's [sinks.NAME] tables give it too (the template unit relies on that), and
    # click would print "[required]"; build_settings says when neither does.
    DELIVERY.option("--sink", "sinks", multiple=True, type=click.Choice(SINK_NAMES),
                    help="Where to ship (repeatable: every record goes to each sink). Needed unless the config file "
                         "has [sinks.NAME] tables."),
    DELIVERY.option("--endpoint", multiple=True, type=EndpointType(), metavar="[SINK=]URL",
                    help="Vendor base URL (default: the vendor's public one). With several sinks: SINK=URL."),
    STATE.option("--state-dir", envvar="KONG_SHIP_STATE_DIR", type=click.Path(file_okay=False),
                 help="Checkpoints live here [env KONG_SHIP_STATE_DIR; default $STATE_DIRECTORY, "
                      "else $XDG_STATE_HOME/kong-ship]."),
    STATE.option("--dead-letter", type=click.Path(dir_okay=False),
                 help="Dead-letter file [default: STATE_DIR/dead-letter.jsonl]."),
    TUNING.option("--batch-size", type=click.IntRange(min=1), help="Events per request (default: the vendor's maximum)."),
    TUNING.option("--flush-interval", type=Seconds(min=0.001), default=Settings.flush_interval,
                  show_default=True, help="Seconds before a partial batch is sent."),
    TUNING.option("--queue-size", type=click.IntRange(min=1), default=Settings.queue_size, show_default=True,
                  help="Events queued per sink; when full, reading pauses (the file is the buffer)."),
    TUNING.option("--concurrency", type=click.IntRange(min=1, max=64), default=Settings.concurrency, show_default=True,
                  help="Requests in flight per sink."),
    TUNING.option("--shutdown-timeout", type=Seconds(min=0), default=Settings.shutdown_timeout,
                  show_default=True, help="Seconds to deliver what is in flight after SIGTERM/SIGINT."),
    TUNING.option("--retry-initial-delay", type=Seconds(min=0.001), default=Settings.retry_initial,
                  show_default=True, help="First backoff step, seconds (then exponential with full jitter)."),
    TUNING.option("--retry-max-delay", type=Seconds(min=0.001), default=Settings.retry_max, show_default=True,
                  help="Longest backoff between retries, seconds (Retry-After is honoured beyond it)."),
    TUNING.option("--give-up-after", type=Seconds(min=1), default=None, metavar="SECONDS",
                  help="Stop (exit 1, checkpoints where delivery stopped) when a sink has delivered nothing for this "
                       "long while retrying. Default: retry for ever."),
    TUNING.option("--timeout", type=Seconds(min=0.1), default=Settings.timeout, show_default=True,
                  help="HTTP request timeout, seconds."),
    SERVICE.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
                   show_default=True),
    SERVICE.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                   help="Own log lines on stderr: text, or one JSON object per line."),
    SERVICE.option("--metrics-addr", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics."),
    TUNING.option("--max-rate", type=FiniteFloatRange(min=0.001), metavar="N",
                  help="At most N events per second to each sink (retries count); reading slows to match."),
    TUNING.option("--ca-file", type=click.Path(exists=True, dir_okay=False), metavar="PEM",
                  help="CA certificate(s) to trust for the sinks' TLS, on top of the default ones (verification is "
                       "always on; `audit tail` verifies the Admin API with them too)."),
    # Filters and sampling (README "Filters and sampling"): the common cases as flags, the rest in the file.
    INPUT.option("--exclude-path", multiple=True, metavar="GLOB",
                 help="Ship no record whose path matches GLOB (repeatable), e.g. /health or '/metrics*'."),
    INPUT.option("--exclude-status", multiple=True, type=StatusSpecType(), metavar="SPEC",
                 help="Ship no record with this status (repeatable): 404, 5xx or 500-504."),
    INPUT.option("--sample-rate", type=FiniteFloatRange(min=0, max=1), metavar="R",
                 help="Ship a fraction R of the records (0.1: one in ten), chosen by their id: the same ones on "
                      "every run."),
    # The file's [[filter]] and [[sampling.rule]] tables arrive through these (a table each, as JSON).
    INPUT.option("--filter-rule", multiple=True, type=RuleType(Filter), hidden=True),
    INPUT.option("--sample-rule", multiple=True, type=RuleType(SampleRule), hidden=True),
] + sink_options()

following_options = [
    INPUT.option("--start-at", type=click.Choice(["beginning", "end"]), default=Settings.start_at, show_default=True,
                 help="Where files found at start without a checkpoint begin."),
    INPUT.option("--ignore-older", type=Seconds(min=1), default=None, metavar="SECONDS",
                 help="Files with no checkpoint modified over SECONDS ago start at their end. Default: off."),
    INPUT.option("--poll-interval", type=Seconds(min=0.01), default=Settings.poll_interval, show_default=True,
                 help="Seconds between looks for new data and new files (inotify wakes it sooner)."),
    INPUT.option("--rotate-wait", type=Seconds(min=0), default=Settings.rotate_wait, show_default=True,
                 help="Seconds a rotated-away file must stay quiet before it is let go."),
]

window_options = [
    INPUT.option("--since", type=TimeType(), metavar="TIME",
                 help="Only records that started at or after TIME: ISO-8601 (2024-05-01T12:00:00Z; no zone = UTC), "
                      "Unix seconds, or a duration ago (7d, 6h, 30m)."),
    INPUT.option("--until", type=TimeType(), metavar="TIME",
                 help="Only records that started before TIME (same forms as --since)."),
]

DRY_RUN_HELP = ("Send nothing: print each request every sink would make (URL, headers with credentials redacted, "
                "body uncompressed), one JSON line each, on stdout. Checkpoints are neither read nor moved.")
dry_run_option = DELIVERY.option("--dry-run", is_flag=True, help=DRY_RUN_HELP)


def spooled_dry_run_option(spool: str) -> Callable:
    """--dry-run of a command that ships from a spool (`receive`, `audit tail`): the same, and what becomes of
    its spool (`spool`: one sentence)."""
    return DELIVERY.option("--dry-run", is_flag=True, help=f"{DRY_RUN_HELP} {spool}")

progress_option = SERVICE.option(
    "--progress/--no-progress", default=None,
    help="A progress bar on stderr [default: on when stderr is a terminal].",
)


def workers_option(default: str) -> Callable:
    """--workers; `tail` defaults to 0 (one process is enough to keep up), `backfill` to auto (throughput)."""
    return INPUT.option(
        "--workers", type=WorkersType(), default=default, show_default=True, metavar="N|auto",
        help="Processes that parse and encode lines (auto: one per CPU; 0: in the reader thread).",
    )


# `tail`'s options; `check-config` takes the very same, to judge the configuration as `tail` would see it.
tail_options = shipping_options + understanding_options + following_options + [workers_option("0"), config_option]


# -- where each option's value goes ---------------------------------------------------------------------------
# option name -> the Settings field it fills, where the two names differ (flags are named for the user, fields
# for the code); every other core option fills the field of its own name.
SETTINGS_FIELD = {
    "fmt": "format", "nginx_field": "nginx_fields", "jwt_from": "jwt_places", "mask_header": "mask_headers",
    "mask_body_key": "mask_body_keys", "retry_initial_delay": "retry_initial", "retry_max_delay": "retry_max",
    "since": "since_ms", "until": "until_ms", "exclude_path": "exclude_paths", "exclude_status": "exclude_statuses",
    "filter_rule": "filters", "sample_rule": "sample_rules",
}
# Options of the run around the pipeline: which sinks' URLs, logging, metrics, the progress bar.
RUN_OPTIONS = frozenset({"endpoint", "log_level", "log_format", "metrics_addr", "progress", "dry_run"})


def option_names(options: Iterable[Callable]) -> list[str]:
    """The parameter names `options` give a command (built on a throwaway command: click names them; the
    hidden options are click_option_group's headings)."""
    command = click.command()(apply_options(list(options))(lambda **kw: None))
    return [param.name for param in command.params if param.name and not getattr(param, "hidden", False)]


def sink_option_names() -> frozenset[str]:
    """The names of the options the sinks declare: exactly what reaches `from_options`."""
    return frozenset(
        click.Option(decls, **kwargs).name for name in SINK_NAMES for decls, kwargs in sink_class(name).OPTIONS
    )


def check_option_names(names: Iterable[str], sink_names: frozenset[str]) -> None:
    """Every shared option fills a Settings field, serves the run, or belongs to a sink; a sink option named
    like a core one would be read by both. Either mistake is a bug: refused when the commands are built."""
    settings_fields = {f.name for f in fields(Settings)}
    core = {name for name in names if name not in sink_names}
    for name in core:
        if SETTINGS_FIELD.get(name, name) not in settings_fields and name not in RUN_OPTIONS:
            raise RuntimeError(f"option {name!r} fills no Settings field, serves no run and no sink declares it")
    clash = sink_names & (set(SETTINGS_FIELD) | RUN_OPTIONS | settings_fields)
    if clash:
        raise RuntimeError(f"sink option(s) {', '.join(sorted(clash))} named like core options")


SINK_OPTION_NAMES = sink_option_names()
SHARED_OPTION_NAMES = option_names(
    [*understanding_options, *shipping_options, *following_options, *window_options, progress_option,
     workers_option("0")]
)
check_option_names(SHARED_OPTION_NAMES, SINK_OPTION_NAMES)
