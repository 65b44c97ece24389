"""The sink seam. A sink knows its vendor's wire format and nothing about files; the delivery layer knows
batching, retries and acknowledgements and nothing about vendors.

A sink turns one Transaction into the bytes of one vendor event (`encode`), a list of those into an HTTP
request (`request`, called afresh for every attempt so time stamps such as Segment's `sentAt` are current),
and judges the vendor's answer (`judge`) as one of the `Verdict` kinds below.
"""

from __future__ import annotations

import email.utils
import enum
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

import httpx

from shipper.model import Transaction
from shipper.sinks.compression import PreparedBody

if TYPE_CHECKING:  # only types: the formats and the processors never need the sinks, nor the sinks them at run time
    from shipper.formats import Parser
    from shipper.processors import Processor


class VerdictKind(enum.StrEnum):
    """What the sender does with a batch after the vendor's answer. A StrEnum: the values stay the strings
    they were, so a log line or a comparison with "retry" reads the same."""

    OK = "ok"  # delivered: acknowledge every event of the batch
    RETRY = "retry"  # try the same events again later (after `retry_after` seconds if the vendor said so)
    SPLIT = "split"  # the vendor refused the batch as a whole: halve it to find the offending event
    REJECT = "reject"  # this event can never be delivered: dead-letter it with the reason, then acknowledge
    FATAL = "fatal"  # configuration is wrong (credentials, endpoint): stop the shipper with the reason


# The kinds by their short names, as every sink and the sender import them.
OK, RETRY, SPLIT = VerdictKind.OK, VerdictKind.RETRY, VerdictKind.SPLIT
REJECT, FATAL = VerdictKind.REJECT, VerdictKind.FATAL


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reason: str = ""
    retry_after: float | None = None


class EventRejected(Exception):
    """Raised by `Sink.encode` for a transaction that cannot become a valid event (e.g. over the size limit
    even after shrinking). The record is dead-lettered with this reason and acknowledged."""


class EventSkipped(Exception):
    """Raised by `Sink.encode` for an event the sink deliberately does not send (e.g. Moesif sampling). The
    record counts as delivered for the checkpoint."""


class EventFiltered(Exception):
    """Raised by `Sink.encode` for an event a vendor rule says must not be sent (e.g. older than Moesif accepts):
    counted as filtered, with this reason, and acknowledged. Unlike EventSkipped, the record was not chosen away
    by sampling but could never arrive."""


class RecordDropped(Exception):
    """Raised by a flat path for a record a processor of the chain would drop (outside --since/--until): the
    same outcome as the Transaction path's (filtered, no reason)."""


class FlatEncode(Protocol):
    """A sink's flat path: from a line's bytes straight to the bytes of its vendor event, reading only the
    fields the sink ships and masking only what it ships (issue 16).

    It returns `(event, anonymous)` exactly as `encode(run_chain(chain, parse(line)))` would make them, or None
    when the record needs the Transaction path (anything the flat path does not handle: another kind, a value
    out of the ordinary, a record the sink would skip or reject). It raises `RecordDropped` for a record the
    chain drops. Any other exception also sends the line down the Transaction path, so a flat path can cost
    speed, never a line; `tests/test_flat_paths.py` proves the bytes identical."""

    def __call__(
        self, data: bytes, file_id: str, offset: int, end: int, logged_at: int | None
    ) -> tuple[bytes, bool] | None: ...


DEFAULT_KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's own default)


@dataclass(frozen=True, slots=True)
class SinkLimits:
    """What a sink asks of the delivery layer around it (as httpx's `Limits`): batch bounds from the vendor's
    documentation, and the plugin's own queue, timeouts and keep-alive where the sink keeps them. None means
    "the shipper's setting" (--queue-size, --batch-size, --timeout)."""

    max_batch_events: int
    max_batch_bytes: int  # of the uncompressed body, envelope included
    envelope_bytes: int = 0  # bytes the body adds around the events
    default_batch_events: int | None = None  # without --batch-size; None: max_batch_events
    queue_events: int | None = None  # events queued before reading pauses; None: --queue-size
    http_timeout: httpx.Timeout | None = None  # None: --timeout
    keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY

    def batch_events(self, asked: int | None) -> int:
        """Events per batch: --batch-size if given, else the sink's default, never above the vendor's bound."""
        return min(asked or self.default_batch_events or self.max_batch_events, self.max_batch_events)


# (flag declarations, click keyword arguments) for each option a sink declares; the CLI turns them into options
# of every shipping command and into TOML keys under [sinks.NAME].
OptionList = list[tuple[tuple[str, ...], dict[str, Any]]]


@runtime_checkable  # so the contract test can ask isinstance(sink, Sink) of every sink as the CLI builds it
class Sink(Protocol):
    """What the lane, the sender and the command line use of a sink; nothing is read with a fallback, so a
    misspelt attribute fails when the sink is built or type-checked, not silently at run time."""

    name: ClassVar[str]
    parallel_safe: ClassVar[bool]  # encode is a pure function of the transaction: it may run in worker processes
    OPTIONS: ClassVar[OptionList]
    limits: SinkLimits
    url: str  # where the batches go (check-config shows it)

    @classmethod
    def from_options(cls, opts: Mapping[str, Any], endpoint: str | None) -> Self:
        """The sink as the command line configures it: its options by name (click's), and its --endpoint."""
        ...

    def encode(self, txn: Transaction) -> bytes: ...

    def request(self, events: list[bytes]) -> httpx.Request: ...

    def judge(self, response: httpx.Response) -> Verdict: ...

    def transport(self) -> httpx.BaseTransport | None:
        """A transport of the sink's own (the stdout sink prints instead of sending), or None for HTTP."""
        ...

    def use_client(self, client: httpx.Client) -> None:
        """The sender's HTTP client, for requests of the sink's own (Moesif's /v1/config): the same TLS trust
        (--ca-file) and pool. Most sinks have none and ignore it."""
        ...

    def flat_path(self, parser: Parser, chain: Sequence[Processor]) -> FlatEncode | None:
        """This sink's flat path for lines read by `parser` and run through `chain`, or None when it has none
        for them (then every line takes the Transaction path)."""
        ...

    def worker_state(self) -> object | None:
        """Called in the parent before each job it hands a worker process: what the sink's encoding depends on
        that changes during a run (Moesif's sampling configuration), or None when nothing does. The same object
        while it is unchanged: a worker is sent it again only when it is another object (`adopt_worker_state`)."""
        ...

    def adopt_worker_state(self, state: object) -> None:
        """Called in a worker process with the parent's `worker_state`, before the jobs handed over after it."""
        ...

    def prepare(self, events: list[bytes]) -> PreparedBody | None:
        """A closed batch's request body, made in a worker process (issue 16: the parent only sends it), or None
        when the sink makes its bodies at each attempt only (`request`). `prepared_request` turns it into the
        request of an attempt, with the same bytes `request(events)` would send (time stamps aside)."""
        ...

    def prepared_request(self, body: PreparedBody) -> httpx.Request:
        """The request of one attempt for a body `prepare` made (stamped afresh, as `request` is)."""
        ...


class HttpSink:
    """The parts of the contract most sinks share: they send over the sender's HTTP client (no transport of
    their own) and make no requests of their own (nothing to do with the client); they judge an answer by their
    `verdict`, with their own `credentials` masked in its reason."""

    credentials: tuple[str, ...] = ()  # the sink's own secrets (its key, token, signing secret, header values)

    def judge(self, response: httpx.Response) -> Verdict:
        return without_secrets(self.verdict(response), self.credentials)

    def verdict(self, response: httpx.Response) -> Verdict:
        """The vendor's answer judged: OK, RETRY, SPLIT, REJECT or FATAL with its reason."""
        raise NotImplementedError

    def transport(self) -> httpx.BaseTransport | None:
        return None

    def use_client(self, client: httpx.Client) -> None:
        pass

    def flat_path(self, parser: Parser, chain: Sequence[Processor]) -> FlatEncode | None:
        return None

    def worker_state(self) -> object | None:
        return None

    def adopt_worker_state(self, state: object) -> None:
        pass

    def prepare(self, events: list[bytes]) -> PreparedBody | None:
        return None

    def prepared_request(self, body: PreparedBody) -> httpx.Request:
        raise NotImplementedError(f"{type(self).__name__} prepares no bodies")


class WrappedSink:
    """A sink around another one (`inner`), the Sink contract delegated to it: a routed lane's sink under its
    lane's name (routing.RoutedSink), a dry run's (delivery/dry_run.DryRunSink). Subclasses override what they
    change."""

    def __init__(self, inner: Sink, name: str):
        self.inner = inner
        self.name = name
        self.parallel_safe = inner.parallel_safe
        self.OPTIONS = inner.OPTIONS
        self.limits = inner.limits
        self.url = inner.url

    @classmethod
    def from_options(cls, opts: Mapping[str, Any], endpoint: str | None) -> Self:
        raise TypeError(f"a {cls.__name__} wraps a sink built by its own class")

    def encode(self, txn: Transaction) -> bytes:
        return self.inner.encode(txn)

    def request(self, events: list[bytes]) -> httpx.Request:
        return self.inner.request(events)

    def judge(self, response: httpx.Response) -> Verdict:
        return self.inner.judge(response)

    def transport(self) -> httpx.BaseTransport | None:
        return self.inner.transport()

    def use_client(self, client: httpx.Client) -> None:
        self.inner.use_client(client)

    def flat_path(self, parser: Parser, chain: Sequence[Processor]) -> FlatEncode | None:
        return self.inner.flat_path(parser, chain)

    def worker_state(self) -> object | None:
        return self.inner.worker_state()

    def adopt_worker_state(self, state: object) -> None:
        self.inner.adopt_worker_state(state)

    def prepare(self, events: list[bytes]) -> PreparedBody | None:
        return self.inner.prepare(events)

    def prepared_request(self, body: PreparedBody) -> httpx.Request:
        return self.inner.prepared_request(body)


def absolute_url(txn: Transaction, raw_path: str | None = None) -> str:
    """The URL the client asked for, `scheme://host:port/path?query`, with the port whenever it is known.

    Kong's own serializer (`request.url`), the Runscope plugin (`scheme://host:server_port` + request_uri),
    kong-segment-log (Kong 0.x `request.request_uri`) and kong-plugin-moesif all wrote the port, default
    ports included, so a dashboard built on the plugins' URLs keeps matching after the migration. A log that
    did not say which port (Nginx without `$server_port`) gets none: a guessed port would be a made-up fact."""
    target = txn.raw_path if raw_path is None else raw_path
    if not txn.host:
        return target
    if txn.port is None:
        return f"{txn.scheme or 'http'}://{txn.host}{target}"
    return f"{txn.scheme or 'http'}://{txn.host}:{txn.port}{target}"


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """`Retry-After` as seconds (delta or HTTP date), else `X-RateLimit-Reset` (delta or epoch seconds); at least 1.

    None when there is no usable value: absent, garbage, not finite, zero, negative or a date already past. A
    value of "now" from a vendor that is refusing us is a mistake, not an invitation to hammer it, so the
    caller then falls back to its ordinary exponential backoff."""
    now = time.time() if now is None else now
    value = (response.headers.get("retry-after") or "").strip()
    if value:
        try:
            return _usable(float(value))
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(value)
                return _usable(parsed.timestamp() - now)
            except (TypeError, ValueError, OverflowError, IndexError):
                pass
    value = (response.headers.get("x-ratelimit-reset") or "").strip()
    if value:
        try:
            number = float(value)
        except ValueError:
            return None
        return _usable(number - now if number > 1_000_000_000 else number)
    return None


def _usable(seconds: float) -> float | None:
    # At least a second (RFC 9110's delay is whole seconds): honoured as said, `0.001` had a refusing vendor retried a
    # request a millisecond, the backoff bypassed.
    return max(seconds, 1.0) if math.isfinite(seconds) and seconds > 0 else None


# C0 and C1 controls and DEL: a vendor's answer quoted in a fatal line reaches a terminal (escapes, a carriage return
# that writes another line over ours).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def snippet(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")[:limit]
    return _CONTROLS.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def without_secrets(verdict: Verdict, secrets: Iterable[str]) -> Verdict:
    """`verdict` with the sink's own credentials (those of 6 characters or more) masked in its reason: a vendor's
    answer, quoted in a dead letter's detail or a fatal line, may quote them back under names no mask knows
    (`{"headers": {"x-moesif-application-id": …}}`, "invalid token …")."""
    reason = verdict.reason
    for secret in secrets:
        if len(secret) >= 6 and secret in reason:
            reason = reason.replace(secret, "*****")
    return verdict if reason is verdict.reason else replace(verdict, reason=reason)


def judge_common(response: httpx.Response, vendor: str, credential_hint: str) -> Verdict:
    """The answer rules every HTTP vendor shares; sinks call this after their own special cases."""
    status = response.status_code
    if 200 <= status < 300:
        return Verdict(OK)
    if status in (401, 403):
        return Verdict(FATAL, f"{vendor} refused the credentials (HTTP {status}): {credential_hint}")
    if status == 404:
        return Verdict(FATAL, f"{vendor} answered 404 for {response.request.url}: check --endpoint")
    if 300 <= status < 400:
        # A redirect means a wrong --endpoint (another region, http for https), never a bad event: following it
        # would send credentials to wherever it points, and rejecting would dead-letter every event.
        where = response.headers.get("location") or "(no Location header)"
        return Verdict(
            FATAL, f"{vendor} redirects {response.request.url} (HTTP {status}) to {where}: set --endpoint to the right URL"
        )
    if status == 429 or status == 408 or (status >= 500 and status not in (501, 505)):
        return Verdict(RETRY, f"{vendor} answered HTTP {status}", retry_after_seconds(response))
    if status in (501, 505):
        return Verdict(FATAL, f"{vendor} answered HTTP {status}: {snippet(response)}")
    return Verdict(SPLIT, f"{vendor} answered HTTP {status}: {snippet(response)}")
