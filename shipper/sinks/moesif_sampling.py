"""Moesif sampling as kong-plugin-moesif 2.1.2 does it (log.lua, "fix sampling"): `GET /v1/config` gives a global
`sample_rate`, `user_sample_rate` and `company_sample_rate` maps and `regex_config` rules; when any of the user,
company or matching regex rates applies, the LOWEST of them is the event's rate, else the global rate. A kept
event carries `weight = floor(100 / rate)` (1 at 100 %), so Moesif scales its counts back up.

Where kong-ship differs: the draw is derived from the record's id instead of `math.random()`, so a resend after
a crash makes the same decision; conditions are Python regular expressions searched anywhere in the value (the
plugin ran them as Lua patterns, which Moesif's regexes mostly are too); an invalid pattern never matches (the
plugin then ignored every regex rule).

With worker processes (issue 16) the configuration is still fetched and refreshed in the parent only; each
worker samples by the parent's `SamplingConfig` of the moment its jobs were handed over (`Sampler.settled_config`
in the parent, `Sampler.adopt` in the worker: MoesifSink.worker_state / adopt_worker_state).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from shipper.delivery.deadline import Attempt
from shipper.sinks.moesif_regex import MATCH_CHARS, backtracks_safely

log = logging.getLogger("kong-ship")

CONFIG_REFRESH = 300.0  # seconds between /v1/config fetches (sooner when an answer's config ETag changes)
MAX_REGEX_RULES = 1000  # a dashboard's handful, many times over; more would cost every event its matching
CONFIG_BYTES = 16 << 20  # of a /v1/config answer, decoded: thousands of user and company rates fit many times
# The plugin's request.route: the path of the absolute uri, without the query; "/" when there is none.
_ROUTE = re.compile(r"^https?://[^/]+(/[^?]+)")


def sample_rate(value: Any) -> float:
    """A percentage from /v1/config: a finite number from 0 to 100 (`1e999` parses as infinity, `NaN` too)."""
    if type(value) is str:
        value = float(value)
    if type(value) not in (int, float) or not 0 <= value <= 100:
        raise ValueError(f"sample rate {str(value)[:40]} is not a percentage from 0 to 100")
    return float(value)


def draw(event_id: str) -> float:
    """A number in [0, 100) derived from the record: the same record always draws the same number."""
    return (int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=4).digest(), "big") % 10_000) / 100


def weight(rate: float) -> int:
    """The plugin's weight: how many events one kept event stands for (1 at 100 %; 1 at 0 %, never sent)."""
    return 1 if rate <= 0 else max(1, int(100 // rate))


RegexRule = tuple[float | None, list[tuple[str, re.Pattern[str] | None]]]


def parse_regex_config(rules: Any) -> list[RegexRule]:
    """`regex_config`: a list of {sample_rate, conditions: [{path, value}]}. Conditions of one rule are ANDed;
    a repeated path keeps its last value, as the plugin's condition table did."""
    if rules is None:
        return []
    if not isinstance(rules, list):
        raise ValueError("regex_config is not a list")
    if len(rules) > MAX_REGEX_RULES:  # every event is matched against them in turn
        raise ValueError(f"regex_config has {len(rules):,} rules, over {MAX_REGEX_RULES:,}")
    out: list[RegexRule] = []
    for rule in rules:
        if not isinstance(rule, dict):
            raise ValueError("a regex_config rule is not an object")
        rate = rule.get("sample_rate")
        rate = None if rate is None else sample_rate(rate)
        table: dict[str, str] = {}
        for condition in rule.get("conditions") or []:
            if isinstance(condition, dict) and isinstance(condition.get("path"), str):
                table[condition["path"]] = str(condition.get("value", ""))
        compiled: list[tuple[str, re.Pattern[str] | None]] = []
        for path, value in table.items():
            try:
                pattern: re.Pattern[str] | None = re.compile(value)
            except (re.error, RecursionError, OverflowError):
                pattern = None  # never matches
            if pattern is not None and not backtracks_safely(value):
                log.warning("moesif: a regex_config condition on %s (%.60r) could take exponential or polynomial time "
                            "to match: it never matches", path, value)
                pattern = None
            compiled.append((path, pattern))
        out.append((rate, compiled))
    return out


def config_mapping(event: dict[str, Any]) -> dict[str, str]:
    """The request fields regex conditions are matched against, named as the plugin names them."""
    request, response = event.get("request") or {}, event.get("response") or {}
    mapping: dict[str, str] = {}
    if request.get("verb"):
        mapping["request.verb"] = str(request["verb"])
    if request.get("uri"):
        found = _ROUTE.match(str(request["uri"]))
        mapping["request.route"] = found.group(1) if found else "/"
    if request.get("ip_address"):
        mapping["request.ip_address"] = str(request["ip_address"])
    if response.get("status") is not None:
        mapping["response.status"] = str(response["status"])
    body = request.get("body")
    if isinstance(body, dict):  # GraphQL: the plugin matched the JSON body's operationName and query
        for key in ("operationName", "query"):
            if isinstance(body.get(key), str):
                mapping["request.body." + key] = body[key]
    return mapping


def regex_rate(rules: list[RegexRule], mapping: dict[str, str]) -> float | None:
    """The sample rate of the first rule whose conditions all match, else None (no regex rate applies)."""
    for rate, conditions in rules:
        if not conditions:
            continue  # the plugin's rule with no condition never matched
        # At most MATCH_CHARS of each value: what a pattern may take time over is bounded (see below).
        if all(p is not None and path in mapping and p.search(mapping[path], 0, MATCH_CHARS) for path, p in conditions):
            return rate
    return None


@dataclass(frozen=True)
class SamplingConfig:
    """The rules of one /v1/config answer. Never changed once made (a refresh that changes anything makes
    another), so a reader takes all of it in one attribute read, and a worker process is sent it again only
    when it is another object. Pickles whole: a compiled pattern as its source and flags."""

    global_rate: float = 100.0
    user_rates: dict[str, float] = field(default_factory=dict)
    company_rates: dict[str, float] = field(default_factory=dict)
    regex_rules: list[RegexRule] = field(default_factory=list)


class _ConfigField:
    """A Sampler attribute that reads its current SamplingConfig, and sets a copy with the new value (tests set
    rates by hand)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, sampler: Sampler, owner: type | None = None) -> Any:
        return getattr(sampler.config, self.name)

    def __set__(self, sampler: Sampler, value: Any) -> None:
        sampler.config = replace(sampler.config, **{self.name: value})


class Sampler:
    """The application's sampling configuration, fetched with the sender's HTTP client and kept fresh.

    Every fetch runs on one timer thread ("moesif-config"), started when the sender hands over its client: the
    first at once, then every CONFIG_REFRESH seconds, and at once when a batch's answer carries a new config
    ETag. The reader never makes a request. It waits only while a fetch that decides the next events is in flight
    (the first one, or one after a new ETag: the plugin sampled the events after a change by the new rules), and
    no longer than one fetch's connect and read timeouts; a periodic refresh never holds it up. Without the sender's client nothing is fetched (the
    sink was built for `kong-ship parse` or a test) and every event is kept at the global rate of 100 %.
    A worker process's copy (`adopt`) samples by the configuration its parent handed it, and never waits."""

    global_rate = _ConfigField()
    user_rates = _ConfigField()
    company_rates = _ConfigField()
    regex_rules = _ConfigField()

    def __init__(self, base: str, application_id: str, timeout: httpx.Timeout, *, debug: bool = False, enabled: bool = True):
        self.url = base + "/v1/config"
        self.application_id = application_id
        self.timeout = timeout
        self.debug = debug
        self.enabled = enabled
        self._lock = threading.Lock()
        self.config = SamplingConfig()
        self.etag: str | None = None
        self._client: httpx.Client | None = None
        self._answered: str | None = None  # the last config ETag a batch's answer carried
        # Set while the rules the next events must be sampled by are in hand; clear while they are being fetched.
        self._settled = threading.Event()
        self._settled.set()
        self._wake = threading.Event()  # a new ETag: fetch now, not at the next period
        # One fetch's worst case (connect, then the answer), so a reader never waits on a hung fetch for longer.
        self._wait = (timeout.connect or 0.0) + (timeout.read or 0.0)

    def use_client(self, client: httpx.Client) -> None:
        self._client = client
        if self.enabled:
            self._settled.clear()  # the first fetch decides the first events
            threading.Thread(target=self._keep_fresh, args=(client,), name="moesif-config", daemon=True).start()

    def config_changed(self, etag: str | None) -> None:
        """An answer's `X-Moesif-Config-ETag`: a new one means the configuration changed; fetch it now."""
        # Once per new value: a configuration answered without that ETag must not be fetched on every event.
        if etag and etag != self.etag and etag != self._answered and self._client is not None and self.enabled:
            with self._lock:
                self._settled.clear()
                self._wake.set()
        self._answered = etag or self._answered

    def refresh(self) -> None:
        """GET /v1/config (conditional on the ETag held). Failures keep the last configuration: sampling errs on
        the side of sending."""
        client = self._client
        if client is None:
            return
        headers = {"X-Moesif-Application-Id": self.application_id}
        if self.etag:
            headers["If-None-Match"] = self.etag
        try:
            status, etag, body = self._fetch(client, headers)
        # RuntimeError: the sender's client closed at shutdown; ValueError, zlib.error: an encoding not understood
        except (httpx.HTTPError, RuntimeError, ValueError, zlib.error) as exc:
            log.warning("moesif: cannot fetch /v1/config (%s); sampling keeps its last settings", exc)
            return
        if status == 304:
            return
        if status != 200:
            log.warning("moesif: /v1/config answered HTTP %d; sampling keeps its last settings", status)
            return
        if body is None:
            log.warning("moesif: /v1/config is over %d bytes or took over %.0f s; sampling keeps its last settings",
                        CONFIG_BYTES, self._wait)
            return
        try:
            config = json.loads(body)
            rate = sample_rate(config.get("sample_rate", 100))
            users = {str(k): sample_rate(v) for k, v in (config.get("user_sample_rate") or {}).items()}
            companies = {str(k): sample_rate(v) for k, v in (config.get("company_sample_rate") or {}).items()}
            rules = parse_regex_config(config.get("regex_config"))
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            log.warning("moesif: /v1/config is not understood (%s); sampling keeps its last settings", exc)
            return
        fetched = SamplingConfig(rate, users, companies, rules)
        with self._lock:
            if fetched != self.config:  # the same rules again: the same object (the workers have it already)
                self.config = fetched
            self.etag = etag
        if self.debug:
            log.info("moesif: sample_rate %g%%, %d user and %d company rates, %d regex rules",
                     rate, len(users), len(companies), len(rules))

    def _fetch(self, client: httpx.Client, headers: dict[str, str]) -> tuple[int, str | None, bytes | None]:
        """(status, config ETag, body): the body None when it is over CONFIG_BYTES (decoded) or still coming
        after one fetch's timeouts. A body that never ends, or comes a byte at a time (each byte resets the read
        timeout), must neither fill memory nor hold the events that wait for this fetch."""
        deadline = time.monotonic() + self._wait
        headers = {**headers, "Accept-Encoding": "gzip"}
        # Attempt: a status line or headers trickled a byte at a time reset the timeouts at every byte.
        with Attempt(deadline), client.stream("GET", self.url, headers=headers, timeout=self.timeout) as response:
            etag = response.headers.get("x-moesif-config-etag") or response.headers.get("etag")
            if response.status_code != 200:
                return response.status_code, etag, b""
            try:
                read = response.content  # a transport's own answer (a test's), read already
                return 200, etag, read if len(read) <= CONFIG_BYTES else None
            except httpx.ResponseNotRead:
                pass
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity", "gzip", "deflate"):
                raise ValueError(f"an answer in Content-Encoding {encoding[:20]!r}")
            # Decoded here, a bounded part at a time: a small gzip answer may stand for gigabytes.
            decoder = None if encoding in ("", "identity") else zlib.decompressobj(zlib.MAX_WBITS | 32)
            kept = bytearray()
            for chunk in response.iter_raw():
                kept += decoder.decompress(chunk, CONFIG_BYTES + 1 - len(kept)) if decoder else chunk
                if len(kept) > CONFIG_BYTES or time.monotonic() > deadline:
                    return 200, etag, None
                if decoder and (decoder.unconsumed_tail or decoder.unused_data):  # over the bound; bytes after the end
                    return 200, etag, None
            return 200, etag, bytes(kept)

    def _keep_fresh(self, client: httpx.Client) -> None:
        """The timer thread: fetch, then wait for the period or a new ETag; ends when the client is closed
        (checked every second, so a finished run leaves no thread behind for long)."""
        due = 0.0
        while not client.is_closed:
            if self._wake.is_set() or time.monotonic() >= due:
                self._wake.clear()
                due = time.monotonic() + CONFIG_REFRESH
                self.refresh()
                with self._lock:
                    if not self._wake.is_set():  # else another ETag came during the fetch: fetch again first
                        self._settled.set()
                continue
            self._wake.wait(min(1.0, max(0.0, due - time.monotonic())))
        self._settled.set()  # nobody will fetch any more: never hold a reader up

    def settled_config(self) -> SamplingConfig:
        """The configuration the next events are sampled by: once a fetch that decides them is in flight (the
        first one, or one after a new ETag), its outcome, waited for no longer than one fetch's timeouts."""
        if not self._settled.is_set() and not self._settled.wait(self._wait):
            self._settled.set()  # waited one fetch's timeouts: the events after it do not wait for it again
        return self.config

    def adopt(self, config: SamplingConfig) -> None:
        """In a worker process: sample by `config`, the parent's. A forked copy has no fetch thread, and its
        locks and events are as the fork found them (possibly mid-fetch: held, clear): fresh ones, settled."""
        self._client = None
        self.enabled = False
        self._lock = threading.Lock()
        self._settled = threading.Event()
        self._settled.set()
        self._wake = threading.Event()
        self.config = config

    def rate(self, event: dict[str, Any]) -> float:
        """The event's sample rate, percent: the lowest of the user, company and regex rates that apply, else
        the global rate."""
        config = self.settled_config()
        users, companies, rules, rate = config.user_rates, config.company_rates, config.regex_rules, config.global_rate
        if not (users or companies or rules):
            return rate  # nothing else to apply (the usual configuration): the event is not looked at
        specific = []
        user, company = event.get("user_id"), event.get("company_id")
        if user is not None and user in users:
            specific.append(users[user])
        if company is not None and company in companies:
            specific.append(companies[company])
        if rules:
            found = regex_rate(rules, config_mapping(event))
            if found is not None:
                specific.append(found)
        return min(specific) if specific else rate
