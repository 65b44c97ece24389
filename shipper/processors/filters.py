"""Filters (issue 17): drop records by path, method, status, service, route, consumer, workspace or host before
anything is identified, masked or encoded, so a dropped `/health` costs its parse and a few comparisons.

A rule (`[[filter]]` in the config file, `--exclude-path`/`--exclude-status` on the command line) is one
`Filter` processor. Within a rule every matcher given must match (AND) and a matcher matches when any of its
values does (OR). `exclude` drops what the rule matches; `keep` drops what it does not match, and several keep
rules must each be satisfied. A rule may name the sinks it applies to (`sinks = ["segment"]`); without, it
applies to every sink (the pipeline builds one chain per lane).

A record dropped by a rule is not a plain `None`: the processor raises `Dropped` with the rule's reason
(`filter:<name>`), which the Transformer turns into a FILTERED outcome carrying that reason, so every drop is
counted by name (the run summary, the status line, `kong_ship_events_filtered_total{sink,reason}`). Other
processors may raise it too (sampling: `sample:<rule>`; routing: `unrouted`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from shipper.model import Transaction


class Dropped(Exception):
    """Raised by a processor for a record it drops by a named rule; `reason` is what the drop is counted as."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


ACTIONS = ("exclude", "keep")
# matcher key in a [[filter]] table -> what it reads of the record (see `Filter.matches`)
MATCHERS = ("paths", "methods", "statuses", "services", "routes", "consumers", "workspaces", "hosts")
KEYS = frozenset({"name", "action", "sinks", *MATCHERS})
_CLASS = re.compile(r"^([1-9])xx$", re.IGNORECASE)
_RANGE = re.compile(r"^(\d{3})\s*-\s*(\d{3})$")


def parse_statuses(spec: str | int) -> frozenset[int]:
    """`404`, `5xx` or `500-504` as the set of codes it names; ValueError otherwise."""
    text = str(spec).strip()
    if text.isdigit() and len(text) == 3 and 100 <= int(text) <= 999:
        return frozenset({int(text)})
    found = _CLASS.match(text)
    if found:
        low = int(found.group(1)) * 100
        return frozenset(range(low, low + 100))
    found = _RANGE.match(text)
    if found:
        low, high = int(found.group(1)), int(found.group(2))
        if 100 <= low <= high <= 999:
            return frozenset(range(low, high + 1))
    raise ValueError(f"{str(spec)[:40]!r} is not a status: use a code (404), a class (5xx) or a range (500-504)")


def _globs(values: Iterable[str], fold: bool = False) -> re.Pattern[str]:
    """One compiled pattern for a list of globs (`*`, `?`, `[...]`; case-sensitive unless `fold`)."""
    return re.compile("|".join(fnmatch.translate(v) for v in values), re.IGNORECASE if fold else 0)


# What names an entity of each kind: services and routes by name or id, consumers by username, custom_id or id.
ENTITY_KEYS = {"service": ("name", "id"), "route": ("name", "id"), "consumer": ("username", "custom_id", "id")}


def entity_names(entity: Mapping[str, Any] | None, kind: str) -> tuple[str, ...]:
    """The strings a rule may name an entity (a Kong service, route or consumer) by."""
    if not entity:
        return ()
    return tuple(v for k in ENTITY_KEYS[kind] if type(v := entity.get(k)) is str)


class Filter:
    """One rule as a processor. Built from the rule's table (`from_table` checks it), called for every record
    of the lanes it applies to."""

    __slots__ = ("name", "action", "sinks", "spec", "reason", "_paths", "_methods", "_statuses", "_services",
                 "_routes", "_consumers", "_workspaces", "_hosts", "_exclude")

    def __init__(
        self, name: str, action: str = "exclude", *, paths: Iterable[str] = (), methods: Iterable[str] = (),
        statuses: Iterable[str | int] = (), services: Iterable[str] = (), routes: Iterable[str] = (),
        consumers: Iterable[str] = (), workspaces: Iterable[str] = (), hosts: Iterable[str] = (),
        sinks: Iterable[str] = (),
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"action {action!r}: expected exclude or keep")
        if not name or not isinstance(name, str):
            raise ValueError("a filter needs a name (it is what the drops are counted as)")
        self.name, self.action, self.sinks = name, action, tuple(sinks)
        self.reason = f"filter:{name}"
        self._exclude = action == "exclude"
        # The rule as given, for repr, check-config and the effective configuration file.
        spec: dict[str, list[Any]] = {
            "paths": list(paths), "methods": [m.upper() for m in methods], "statuses": list(statuses),
            "services": list(services), "routes": list(routes), "consumers": list(consumers),
            "workspaces": list(workspaces), "hosts": [h.lower() for h in hosts],
        }
        self.spec = {k: v for k, v in spec.items() if v}
        if not self.spec:
            raise ValueError("a filter needs at least one of " + ", ".join(MATCHERS))
        self._paths = _globs(spec["paths"]) if spec["paths"] else None
        self._methods = frozenset(spec["methods"]) or None
        statuses_set: frozenset[int] = frozenset().union(*(parse_statuses(s) for s in spec["statuses"]))
        self._statuses = statuses_set or None
        self._services = frozenset(spec["services"]) or None
        self._routes = frozenset(spec["routes"]) or None
        self._consumers = frozenset(spec["consumers"]) or None
        self._workspaces = frozenset(spec["workspaces"]) or None
        self._hosts = _globs(spec["hosts"], fold=True) if spec["hosts"] else None

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Filter:
        """A rule from its TOML table; ValueError naming the key at fault (`sinks` is checked by the caller,
        who knows the sinks)."""
        if not isinstance(table, Mapping):
            raise ValueError("expected a table")
        for key, value in table.items():
            if key not in KEYS:
                raise ValueError(f"{key}: unknown key (known: {', '.join(sorted(KEYS))})")
            if key in ("name", "action"):
                if not isinstance(value, str):
                    raise ValueError(f"{key}: expected a string")
            elif not isinstance(value, list) or not all(
                isinstance(v, str) or (key == "statuses" and isinstance(v, int) and not isinstance(v, bool))
                for v in value
            ):
                raise ValueError(f"{key}: expected a list of {'codes or strings' if key == 'statuses' else 'strings'}")
        for item in table.get("statuses", []):
            try:
                parse_statuses(item)
            except ValueError as exc:
                raise ValueError(f"statuses: {exc}") from None
        if "name" not in table:
            raise ValueError("name: missing (it is what the drops are counted as)")
        try:
            return cls(**{k: v for k, v in table.items()})
        except re.error as exc:
            raise ValueError(f"not a glob: {exc}") from None

    def to_table(self) -> dict[str, Any]:
        """The rule as its TOML table (check-config's effective configuration)."""
        return {"name": self.name, "action": self.action, **self.spec, **({"sinks": list(self.sinks)} if self.sinks else {})}

    def applies_to(self, sink: str | None) -> bool:
        """A rule naming a sink (`segment`) applies to its lanes, routed ones (`segment@team-a`) too; a routed
        lane may also be named alone."""
        return sink is None or not self.sinks or sink in self.sinks or sink.partition("@")[0] in self.sinks

    def matches(self, txn: Transaction) -> bool:
        """Every matcher of the rule matches the record. Services and routes match by name or id, consumers by
        username, custom_id or id, workspaces by id or name; paths (no query) and hosts by glob."""
        if self._paths is not None and self._paths.match(txn.path) is None:
            return False
        if self._methods is not None and txn.method not in self._methods:
            return False
        if self._statuses is not None and txn.status not in self._statuses:
            return False
        if self._hosts is not None and self._hosts.match(txn.host) is None:
            return False
        if self._services is not None and self._services.isdisjoint(entity_names(txn.service, "service")):
            return False
        if self._routes is not None and self._routes.isdisjoint(entity_names(txn.route, "route")):
            return False
        if self._consumers is not None and self._consumers.isdisjoint(
            entity_names(txn.consumer, "consumer")
        ):
            return False
        if self._workspaces is not None and self._workspaces.isdisjoint(
            (w for w in (txn.workspace, txn.workspace_name) if w)
        ):
            return False
        return True

    def __call__(self, txn: Transaction) -> Transaction:
        if self.matches(txn) == self._exclude:
            raise Dropped(self.reason)
        return txn

    def __repr__(self) -> str:
        matchers = ", ".join(f"{k}={v!r}" for k, v in self.spec.items())
        where = f", sinks={list(self.sinks)!r}" if self.sinks else ""
        return f"filter[{self.name}]({self.action} {matchers}{where})"


def flag_filters(exclude_paths: Iterable[str], exclude_statuses: Iterable[str]) -> list[Filter]:
    """The rules the common-case flags make: `--exclude-path` (one rule `exclude-path`, any of the globs) and
    `--exclude-status` (one rule `exclude-status`, any of the codes)."""
    rules = []
    paths, statuses = list(exclude_paths), list(exclude_statuses)
    if paths:
        rules.append(Filter("exclude-path", paths=paths))
    if statuses:
        rules.append(Filter("exclude-status", statuses=statuses))
    return rules


def filters_for(filters: Iterable[Filter], sink: str | None) -> list[Filter]:
    """The rules of one sink's lane (None: every rule, as check-config shows them)."""
    return [f for f in filters if f.applies_to(sink)]
