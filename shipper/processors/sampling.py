"""Deterministic sampling (issue 17): keep a fraction of the records, the same ones on every run.

Whether a record is kept is derived from its `event_id` (the log's request id, else its file position: never
random), through BLAKE2b personalised for this use, as a number in [0, 1) compared with the rate. So a resend
after a crash or a `kill -9` decides exactly as the first reading did, and every sink of a run gets the same
records. The personalisation makes the draw independent of Moesif's own (`moesif_sampling.draw`, BLAKE2b of the
same id without it): when both sample, an event survives with the product of the rates, and Moesif's
`weight` is computed from that product.

The rate is the first `[[sampling.rule]]` whose services, routes and consumers match (as the filters match
them: by name or id; by username, custom_id or id), else the global `[sampling] rate` / `--sample-rate`. A kept
record carries its rate in `Transaction.sample_rate` (Segment ships it as `properties.sampleRate`, Moesif folds
it into `weight`); a dropped one raises `Dropped("sample:<rule>")` (`sample:global` for the global rate), counted
as *filtered* under that reason, so read = shipped + dead-lettered + filtered + skipped + … still holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from shipper.errors import ConfigError
from shipper.model import Transaction
from shipper.processors.filters import Dropped, entity_names

GLOBAL = "global"
_PERSON = b"kong-ship-smpl"  # BLAKE2b's personalisation (at most 16 bytes): independent of Moesif's draw
_SCALE = float(1 << 64)
RULE_KEYS = frozenset({"name", "rate", "services", "routes", "consumers"})


def parse_rate(value: Any) -> float:
    """A rate as the flag or the file gives it: a fraction from 0 to 1 (`0.1`) or a percentage string (`10%`)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not a rate: use a fraction from 0 to 1 (0.1) or a percentage (10%)") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    else:
        raise ValueError(f"{str(value)[:40]!r} is not a rate: use a fraction from 0 to 1 (0.1) or a percentage (10%)")
    if not 0 <= rate <= 1:  # NaN fails too
        raise ValueError(f"{str(value)[:40]} is not a rate from 0 to 1 (or 0% to 100%)")
    return rate


def draw(event_id: str) -> float:
    """The record's number in [0, 1): the same id always draws the same number."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") / _SCALE


class SampleRule:
    """`[[sampling.rule]]`: a rate for the records of some services, routes or consumers."""

    __slots__ = ("name", "rate", "spec", "reason", "_services", "_routes", "_consumers")

    def __init__(self, name: str, rate: float, *, services: Iterable[str] = (), routes: Iterable[str] = (),
                 consumers: Iterable[str] = ()) -> None:
        self.name, self.rate, self.reason = name, parse_rate(rate), f"sample:{name}"
        spec = {"services": list(services), "routes": list(routes), "consumers": list(consumers)}
        self.spec = {k: v for k, v in spec.items() if v}
        if not self.spec:
            raise ValueError("a sampling rule needs services, routes or consumers (the global rate is [sampling] rate)")
        self._services = frozenset(spec["services"]) or None
        self._routes = frozenset(spec["routes"]) or None
        self._consumers = frozenset(spec["consumers"]) or None

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> SampleRule:
        """A rule from its TOML table; ValueError naming the key at fault."""
        if not isinstance(table, Mapping):
            raise ValueError("expected a table")
        for key, value in table.items():
            if key not in RULE_KEYS:
                raise ValueError(f"{key}: unknown key (known: {', '.join(sorted(RULE_KEYS))})")
            if key == "name" and not (isinstance(value, str) and value):
                raise ValueError("name: expected a string")
            if key in ("services", "routes", "consumers") and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                raise ValueError(f"{key}: expected a list of strings")
        for key in ("name", "rate"):
            if key not in table:
                raise ValueError(f"{key}: missing")
        try:
            rate = parse_rate(table["rate"])
        except ValueError as exc:
            raise ValueError(f"rate: {exc}") from None
        return cls(table["name"], rate, **{k: v for k, v in table.items() if k not in ("name", "rate")})

    def to_table(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate, **self.spec}

    def matches(self, txn: Transaction) -> bool:
        if self._services is not None and self._services.isdisjoint(entity_names(txn.service, "service")):
            return False
        if self._routes is not None and self._routes.isdisjoint(entity_names(txn.route, "route")):
            return False
        if self._consumers is not None and self._consumers.isdisjoint(entity_names(txn.consumer, "consumer")):
            return False
        return True

    def __repr__(self) -> str:
        return f"{self.name}={self.rate:g}({', '.join(f'{k}={v!r}' for k, v in self.spec.items())})"


class Sampling:
    """The processor: keeps a record when its draw is below its rate, else raises `Dropped`."""

    __slots__ = ("rate", "rules", "_reason")

    def __init__(self, rate: float = 1.0, rules: Iterable[SampleRule] = ()) -> None:
        try:
            self.rate = parse_rate(rate)
        except ValueError as exc:  # the flag's and the file's types refuse it first; a bad rate is still no crash
            raise ConfigError(f"sample rate: {exc}") from None
        self.rules = tuple(rules)
        self._reason = f"sample:{GLOBAL}"

    def __call__(self, txn: Transaction) -> Transaction:
        rate, reason = self.rate, self._reason
        for rule in self.rules:
            if rule.matches(txn):
                rate, reason = rule.rate, rule.reason
                break
        if rate >= 1.0:
            return txn
        if draw(txn.event_id) < rate:
            txn.sample_rate = rate
            return txn
        raise Dropped(reason)

    def __repr__(self) -> str:
        rules = "".join(f", {rule!r}" for rule in self.rules)
        return f"sample(rate={self.rate:g}{rules})"


def sampling_for(rate: float | None, rules: Iterable[SampleRule]) -> Sampling | None:
    """The run's sampling processor, or None when nothing is sampled (no processor in the chain: the sinks'
    flat paths stay usable)."""
    rules = tuple(rules)
    if (rate is None or rate >= 1.0) and not rules:
        return None
    return Sampling(1.0 if rate is None else rate, rules)
