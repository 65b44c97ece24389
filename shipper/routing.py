"""Routing by tenant (issue 17): records go to different destinations by Kong workspace, service or route.

A destination is a `[[route]]` table of the configuration file: a sink of its own (`segment@team-a`: its own
credentials, endpoint and options over the `[sinks.NAME]` ones) and a `match` on the record. Each destination is
a lane like any sink's (pipeline.py): its own reader, queue, retries and checkpoints (`checkpoints-segment@team-a
.json`), dead letters and metrics under its name, so one tenant that is down holds back only its own lane.

Every lane reads every line, as every sink's lane always has; a destination keeps only its own records. The others
it counts, never silently drops: `routed_elsewhere` (another route, or the default lane, takes them) or `unrouted`
(no route matched and there is no default; its total over every run is saved with the checkpoints, for
`kong-ship status`: counters.FilteredTotals). So in each lane, once delivered:
read = shipped + filtered + dead-lettered + rejected + skipped + blank + routed_elsewhere + unrouted.

Rules (the README's "Routing by tenant" says them for users):
- a record goes to every route whose `match` it satisfies (the keys of a match must all hold; a key's list is any
  of its values; `service` and `route` match a name or an id);
- `[routing] default = ["segment"]` names the plain sinks whose lanes take the records that no route matched;
  without it they are counted `unrouted` by every route lane;
- a plain sink that no route uses keeps today's fan-out (every record); one that routes use and `default` does
  not name has no lane of its own (its `[sinks.NAME]` table is only the routes' shared options);
- a route never borrows the default's credential: its own file (`write_key_file`, …) or the environment variable
  with the route's name (`SEGMENT_WRITE_KEY_TEAM_A` for route `team-a`), else exit 2 naming the route.

The decision is the first processor of a routed lane's chain (`RouteFilter`, put there by `lane_chain`): it
raises `Dropped` with the counter's name, which comes back from the worker processes as the outcome's reason
(processors/filters.py) and the lane counts under that counter (counters.DROP_COUNTERS). First, so another
tenant's record costs its parse and a few set lookups: no JWT decoding, masking or encoding (measured in-process:
39-42 us/line against 54-58 deciding at encode time). Routed lanes do without the sinks' flat paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import click
import httpx

from shipper.counters import ROUTED_ELSEWHERE, UNROUTED
from shipper.errors import ConfigError
from shipper.model import Transaction
from shipper.processors import Dropped
from shipper.processors.redact import redact_url, url_has_userinfo
from shipper.sinks import sink_class
from shipper.sinks.base import FATAL, FlatEncode, OptionList, Sink, Verdict, WrappedSink
from shipper.sinks.credentials import env_suffix

if TYPE_CHECKING:
    from shipper.formats import Parser
    from shipper.processors import Processor

CONFIG_KEY = "__routing__"  # where service/config.py leaves the file's [[route]] and [routing] in a command's defaults
ROUTE_SINKS = ("segment", "moesif", "runscope", "webhook")
MATCH_KEYS = ("workspace", "workspace_name", "service", "route")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")  # a lane's name is part of its state files' names
# The credential each sink reads: its file option's TOML key, and the environment variable behind it.
CREDENTIALS = {
    "segment": ("write_key_file", "SEGMENT_WRITE_KEY"),
    "moesif": ("application_id_file", "MOESIF_APPLICATION_ID"),
    "runscope": ("access_token_file", "RUNSCOPE_ACCESS_TOKEN"),
    "webhook": ("secret_file", "KONG_SHIP_WEBHOOK_SECRET"),  # optional: unsigned without one
}


@dataclass(frozen=True)
class Match:
    """Which records a route takes: every key given must hold, any value of a key's list."""

    workspace: frozenset[str] = frozenset()
    workspace_name: frozenset[str] = frozenset()
    service: frozenset[str] = frozenset()
    route: frozenset[str] = frozenset()

    def __call__(self, txn: Transaction) -> bool:
        if self.workspace and txn.workspace not in self.workspace:
            return False
        if self.workspace_name and txn.workspace_name not in self.workspace_name:
            return False
        if self.service and not _entity_in(txn.service, self.service):
            return False
        return not self.route or _entity_in(txn.route, self.route)

    def describe(self) -> dict[str, list[str]]:
        return {key: sorted(getattr(self, key)) for key in MATCH_KEYS if getattr(self, key)}


def _entity_in(entity: Mapping[str, Any] | None, wanted: frozenset[str]) -> bool:
    return entity is not None and (entity.get("name") in wanted or entity.get("id") in wanted)


@dataclass(frozen=True)
class Route:
    name: str
    sink: str
    match: Match
    options: dict[str, Any]  # the sink's options by click name (segment_write_key_file), over [sinks.NAME]'s
    endpoint: str | None

    @property
    def lane(self) -> str:
        return f"{self.sink}@{self.name}"

    @property
    def env_suffix(self) -> str:
        return self.name.upper().replace("-", "_")


@dataclass(frozen=True)
class Routing:
    path: str
    routes: tuple[Route, ...]
    default: tuple[str, ...]  # plain sinks whose lanes take what no route matched

    def sink_kinds(self, plain: Sequence[str]) -> list[str]:
        """The sinks of the run (settings.sinks): the plain ones, the defaults, then the routes' kinds."""
        return list(dict.fromkeys([*plain, *self.default, *(route.sink for route in self.routes)]))


# -- the file's tables -----------------------------------------------------------------------------------------
def from_defaults(defaults: Mapping[str, Any] | None) -> Routing | None:
    """The routing a command's configuration-file defaults carry (None: the file has no [[route]])."""
    found = (defaults or {}).get(CONFIG_KEY)
    if not found or not found.get("route"):
        if found and found.get("routing"):
            raise ConfigError(f"{found['path']}: [routing]: there is no [[route]] table to go with it")
        return None
    return parse(found["path"], found["route"], found.get("routing") or {})


def parse(path: str, tables: Any, routing: Any) -> Routing:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: route: expected [[route]] tables")
    if not isinstance(routing, dict) or set(routing) - {"default"}:
        raise ConfigError(f"{path}: [routing]: expected a table with one key, default")
    routes: list[Route] = []
    for i, table in enumerate(tables):
        route = parse_route(path, i, table)
        if any(r.name == route.name for r in routes):
            raise ConfigError(f"{path}: route {route.name}: a second [[route]] of that name (names are unique)")
        routes.append(route)
    default = routing.get("default", [])
    default = [default] if isinstance(default, str) else default
    if not isinstance(default, list) or not all(isinstance(d, str) for d in default):
        raise ConfigError(f"{path}: routing.default: expected a sink's name or a list of them, got {default!r}")
    for name in default:
        if name not in ROUTE_SINKS:
            raise ConfigError(f"{path}: routing.default: unknown sink {name!r} (known: {', '.join(ROUTE_SINKS)})")
    return Routing(path, tuple(routes), tuple(dict.fromkeys(default)))


def parse_route(path: str, i: int, table: dict[str, Any]) -> Route:
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{path}: route #{i + 1}: name: expected letters, digits, - and _ (at most 63), "
                          f"got {name!r}")
    where = f"{path}: route {name}"
    sink = table.get("sink")
    if sink not in ROUTE_SINKS:
        raise ConfigError(f"{where}: sink: unknown sink {sink!r} (known: {', '.join(ROUTE_SINKS)})")
    match = parse_match(where, table.get("match"))
    params = _sink_params(sink)
    options: dict[str, Any] = {}
    endpoint = None
    for key, value in table.items():
        if key in ("name", "sink", "match"):
            continue
        if key in ("endpoint", "url"):
            if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                raise ConfigError(f"{where}: {key}: expected an http:// or https:// URL")
            if url_has_userinfo(value):  # as running.sink_urls refuses it: it would replace the credential
                raise ConfigError(f"{where}: {key} {redact_url(value)}: a user:password@ in the URL is refused; "
                                  f"give the route's credential the documented way")
            endpoint = value
            continue
        param = params.get(f"{sink}_{key}") or params.get(key)
        if param is None:
            known = sorted({"endpoint", "match", "name", "sink", *(n.removeprefix(f"{sink}_") for n in params)})
            raise ConfigError(f"{where}: {key}: unknown key for a {sink} route (known: {', '.join(known)})")
        assert param.name is not None
        options[param.name] = _checked(f"{where}: {key}", param, value)
    return Route(name, sink, match, options, endpoint)


def parse_match(where: str, match: Any) -> Match:
    if not isinstance(match, dict) or not match:
        raise ConfigError(f"{where}: match: expected a table, e.g. match = {{ workspace_name = [\"team-a\"] }}")
    values: dict[str, frozenset[str]] = {}
    for key, value in match.items():
        if key not in MATCH_KEYS:
            raise ConfigError(f"{where}: match.{key}: unknown key (known: {', '.join(MATCH_KEYS)})")
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
            raise ConfigError(f"{where}: match.{key}: expected a string or a list of strings, got {value!r}")
        values[key] = frozenset(items)
    return Match(**values)


def _sink_params(sink: str) -> dict[str, click.Option]:
    options: OptionList = sink_class(sink).OPTIONS
    params = [click.Option(decls, **kwargs) for decls, kwargs in options]
    return {param.name: param for param in params if param.name}


def _checked(where: str, param: click.Option, value: Any) -> Any:
    """A route's value judged as [sinks.NAME]'s are: the shape TOML gives, then the option's own type."""
    if param.multiple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if param.is_flag:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(value, (bool, list, dict)):
        raise ConfigError(f"{where}: expected a single value, got {value!r}")
    if isinstance(param.type, click.Path):
        return str(value)
    try:
        return param.type.convert(value, param, None)
    except click.BadParameter as exc:
        raise ConfigError(f"{where}: {exc.format_message()}") from None


# -- the lanes -------------------------------------------------------------------------------------------------
class Selector:
    """One lane's routing decision: None keeps the record, else the counter it goes to. `own` is the route's
    match (None: the default lane, which keeps what no route matched); `others` every other route's."""

    def __init__(self, own: Match | None, others: Sequence[Match], has_default: bool):
        self.own = own
        self.others = tuple(others)
        self.has_default = has_default

    def __call__(self, txn: Transaction) -> str | None:
        own = self.own
        if own is not None and own(txn):
            return None
        for other in self.others:
            if other(txn):
                return ROUTED_ELSEWHERE
        if own is None:
            return None
        return ROUTED_ELSEWHERE if self.has_default else UNROUTED


class RouteFilter:
    """The processor that keeps a routed lane's own records (first in its chain); `Dropped` for the others."""

    __slots__ = ("lane", "select")

    def __init__(self, lane: str, select: Selector):
        self.lane = lane
        self.select = select

    def __call__(self, txn: Transaction) -> Transaction:
        elsewhere = self.select(txn)
        if elsewhere is not None:
            raise Dropped(elsewhere)
        return txn

    def __repr__(self) -> str:
        own = self.select.own
        takes = "no route's" if own is None else " and ".join(f"{k} in {v}" for k, v in own.describe().items())
        return f"Route({self.lane}: {takes})"


def lane_chain(sink: Any, chain: list[Processor]) -> list[Processor]:
    """A lane's chain: a routed lane's begins with its RouteFilter (the pipeline asks for every lane)."""
    if isinstance(sink, RoutedSink):
        return [RouteFilter(sink.name, sink.select), *chain]
    inner = getattr(sink, "inner", None)  # a dry run's DryRunSink around a RoutedSink
    return lane_chain(inner, chain) if inner is not None else chain


class RoutedSink(WrappedSink):
    """A sink under its lane's name (`segment@team-a`), whose lane keeps only its records (`lane_chain`)."""

    def __init__(self, inner: Sink, name: str, select: Selector, credential: str | None = None):
        super().__init__(inner, name)
        self.select = select
        self.credential = credential  # where a route's credential comes from, for its fatal line

    def judge(self, response: httpx.Response) -> Verdict:
        """A route's fatal answer names its lane, and a refused credential the route's own (the sink's line names
        the default's, which a route never uses)."""
        verdict = self.inner.judge(response)
        if verdict.kind != FATAL or self.credential is None:
            return verdict
        reason = f"{self.name}: {verdict.reason}"
        if response.status_code in (401, 403):  # the sinks' lines end ": check <the default's credential>"
            reason = f"{reason.split(': check ', 1)[0]}: check this route's credential, {self.credential}"
        return replace(verdict, reason=reason)

    def flat_path(self, parser: Parser, chain: Sequence[Processor]) -> FlatEncode | None:
        return None  # a flat path runs only the processors it knows: it must never skip the RouteFilter


def build_sinks(routing: Routing, plain: Sequence[str], sink_options: Mapping[str, Any],
                urls: Mapping[str, str | None]) -> list[Any]:
    """The run's sinks, one per lane: the plain sinks no route uses (every record), the default lanes (what no
    route matched), then one per route. `urls`: each sink's --endpoint, for the plain lanes and as the routes'
    fallback."""
    matches = [route.match for route in routing.routes]
    has_default = bool(routing.default)
    routed = {route.sink for route in routing.routes}
    sinks: list[Any] = []
    for name in dict.fromkeys([*plain, *routing.default]):
        if name in routing.default:
            inner = sink_class(name).from_options(sink_options, urls.get(name))
            sinks.append(RoutedSink(inner, name, Selector(None, matches, has_default)))
        elif name not in routed:
            sinks.append(sink_class(name).from_options(sink_options, urls.get(name)))
    for i, route in enumerate(routing.routes):
        inner = build_route_sink(routing.path, route, sink_options, urls.get(route.sink))
        others = matches[:i] + matches[i + 1 :]
        sinks.append(RoutedSink(inner, route.lane, Selector(route.match, others, has_default), credential(route)))
    return sinks


def credential(route: Route) -> str:
    """Where the route's credential comes from, as its fatal line says it (the file's path, never the value)."""
    key, env = CREDENTIALS[route.sink]
    given = route.options.get(f"{route.sink}_{key}")
    if given:
        return f"{key} {os.path.abspath(given)} in its [[route]] table"
    own_env = f"{env}_{route.env_suffix}"
    if route.sink == "webhook" and not (os.environ.get(env, "").strip() and os.environ.get(own_env, "").strip()):
        # Signed by its own variable only while the default's is set too (build_route_sink); else unsigned.
        return "its header values (unsigned: no secret_file in its [[route]] table)"
    return own_env


def build_route_sink(path: str, route: Route, sink_options: Mapping[str, Any], url: str | None) -> Sink:
    """The route's own sink: [sinks.NAME]'s options under the route's, and the route's own credential only."""
    key, env = CREDENTIALS[route.sink]
    file_option = f"{route.sink}_{key}"
    own_env = f"{env}_{route.env_suffix}"
    if route.sink != "webhook" and not route.options.get(file_option) and not os.environ.get(own_env, "").strip():
        raise ConfigError(f"{path}: route {route.name}: no {route.sink} credential: set {key} in its [[route]] "
                          f"table or export {own_env}")
    if route.sink == "webhook" and not route.options.get(file_option) and os.environ.get(own_env, "").strip() \
            and not os.environ.get(env, "").strip():
        # the webhook sink asks for a secret only when its own variable is set: this one would be ignored
        raise ConfigError(f"{path}: route {route.name}: {own_env} would not be read: set secret_file in its "
                          f"[[route]] table for a signed webhook")
    opts = {**sink_options, file_option: None, **route.options}
    try:
        with env_suffix(route.env_suffix):
            return sink_class(route.sink).from_options(opts, route.endpoint or url)
    except ConfigError as exc:
        raise ConfigError(f"{path}: route {route.name}: {exc}") from None


def describe(routing: Routing, redact) -> list[str]:
    """The routes as TOML (check-config; `redact` masks a URL's secrets; credentials appear as their files)."""
    from shipper.service.config import toml_value

    lines = ["", "[routing]", f"default = {toml_value(list(routing.default))}"]
    for route in routing.routes:
        lines += ["", "[[route]]", f"name = {toml_value(route.name)}", f"sink = {toml_value(route.sink)}",
                  f"match = {toml_value(route.match.describe())}"]
        if route.endpoint:
            lines.append(f"endpoint = {toml_value(redact(route.endpoint))}")
        for name, value in route.options.items():
            if name == "webhook_header":
                value = [f"{h.partition(':')[0].strip()}: (redacted)" for h in value]
            elif name.endswith("_file") and value:
                value = os.path.abspath(value)
            lines.append(f"{name.removeprefix(route.sink + '_')} = {toml_value(value)}")
        key, env = CREDENTIALS[route.sink]
        if f"{route.sink}_{key}" not in route.options:
            unsigned = " if set; else unsigned" if route.sink == "webhook" else ""
            lines.append(f"# the credential: from ${env}_{route.env_suffix}{unsigned} (not shown)")
    return lines


def lanes_line(sinks: Sequence[Any], routing: Routing) -> str:
    """check-config's stderr line: every lane and what it takes."""
    def takes(sink: Any) -> str:
        if not isinstance(sink, RoutedSink):
            return "every record"
        if sink.select.own is None:
            return "records no route matched"
        return " and ".join(f"{k} in {v}" for k, v in sink.select.own.describe().items())

    unrouted = "" if routing.default else "; records no route matches: counted unrouted"
    return "lanes: " + "; ".join(f"{sink.name} ({takes(sink)})" for sink in sinks) + unrouted
