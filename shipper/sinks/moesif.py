"""Moesif's Collector API: each Transaction becomes a Moesif event as kong-plugin-moesif builds it, sent in gzip
batches to `POST {endpoint}/v1/events/batch`, with the plugin's options under `--moesif-*` names.

Where the plugin was weak this sink does better: any 2xx is success (the plugin wanted 201), retries back off
and honour Retry-After (the plugin retried at once, forever), every event carries a `transaction_id` derived
from its record (the plugin sent none, so its retries made duplicates), a full queue pauses reading instead of
dropping, Authorization and the other default secrets are masked in headers, query and bodies (JSON and
form-encoded, by key; `processors.masking`), bodies whose keys cannot be inspected are not sent at all, JWTs
are decoded as base64url, and milliseconds are zero-padded.

The event is built in `moesif_event` (the plugin's ip_address, user_id, company_id, session_token and
metadata rules), sampling in `moesif_sampling` (the plugin 2.1.2 rule: the lowest applicable rate, weight on
every event); this module is the sink: options, Moesif's 30-day window, batches and answers.
"""

from __future__ import annotations

import gzip
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from os import PathLike
from typing import TYPE_CHECKING, Any, ClassVar

import click
import httpx
import orjson

from shipper.model import Transaction
from shipper.processors.names import normalize
from shipper.settings import MAX_MILLISECONDS
from shipper.sinks.base import (
    DEFAULT_KEEPALIVE_EXPIRY, FATAL, SPLIT, EventFiltered, EventSkipped, FlatEncode, HttpSink, OptionList, Sink, SinkLimits,
    Verdict, judge_common,
)
from shipper.sinks.compression import PreparedBody, gzip_body
from shipper.sinks.config import config_from_options, option, options_of
from shipper.sinks.credentials import read_secret
from shipper.sinks.moesif_event import EventBuilder, transaction_id
from shipper.sinks.moesif_flat import moesif_flat_path
from shipper.sinks.moesif_sampling import Sampler, SamplingConfig, draw, weight

if TYPE_CHECKING:  # only types: the sinks need neither the formats nor the processors at run time
    from shipper.formats import Parser
    from shipper.processors import Processor

__all__ = ["MoesifConfig", "MoesifSink", "OPTIONS", "count_outside_window", "transaction_id"]

log = logging.getLogger("kong-ship")

DEFAULT_ENDPOINT = "https://api.moesif.net"
# Kinds of Transaction that are HTTP calls: proxied ones, and Kong Admin API requests (audit records). Stream
# sessions (TCP/TLS/UDP) and config changes have no request/response pair a Moesif API event could hold.
API_KINDS = frozenset({"api", "admin_request"})
# Moesif drops events whose request.time is more than 30 days old: not sent, counted as filtered.
MAX_AGE_MS = 30 * 86_400_000
TOO_OLD = "older than Moesif's 30-day window"


DEFAULT_BATCH_EVENTS = 200  # events per batch without --batch-size


def _list(values: Iterable[str] | None) -> list[str]:
    """Mask names as given: each value may hold several, comma-separated (the plugin's lists)."""
    out: list[str] = []
    for value in values or ():
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


@dataclass(frozen=True, slots=True)
class MoesifConfig:
    """kong-plugin-moesif's options under `--moesif-*` names (the TOML keys under [sinks.moesif] are the field
    names), with the plugin's defaults."""

    application_id_file: str | None = option(
        "--moesif-application-id-file", type=click.Path(dir_okay=False),
        help="File holding the Moesif application id (default: env MOESIF_APPLICATION_ID).")
    api_version: str = option("--moesif-api-version", default="1.0", blank_is_default=True,
                              help="Moesif: api_version of every event.")
    user_id_header: str | None = option(
        "--moesif-user-id-header", default="X-Consumer-Custom-Id",
        help="Moesif: header holding the user id (request first; then x-consumer-*, the token, "
             "the Basic user, then this response header).")
    company_id_header: str | None = option(
        "--moesif-company-id-header", help="Moesif: request (then response) header holding the company id.")
    authorization_user_id_field: str | None = option(
        "--moesif-authorization-user-id-field", metavar="CLAIM",
        help="Moesif: token claim holding the user id (default: --jwt-claim, itself `sub`). "
             "The token is read from --jwt-from (the plugin's authorization_header_name).")
    authorization_company_id_field: str | None = option(
        "--moesif-authorization-company-id-field", metavar="CLAIM", help="Moesif: token claim holding the company id.")
    client_ip_from_kong: bool = option(
        "--moesif-client-ip-from-kong", default=False, is_flag=True,
        help="Moesif: ip_address is the client_ip Kong logged (its trusted_ips rules), "
             "never X-Forwarded-For and the like, which any client can forge.")
    disable_capture_request_body: bool = option(
        "--moesif-disable-capture-request-body", default=False, is_flag=True, help="Moesif: never send request bodies.")
    disable_capture_response_body: bool = option(
        "--moesif-disable-capture-response-body", default=False, is_flag=True, help="Moesif: never send response bodies.")
    request_header_masks: tuple[str, ...] = option(
        "--moesif-request-header-masks", default=(), multiple=True, metavar="NAMES",
        help="Moesif: request headers to remove (comma-separated, repeatable).")
    request_query_masks: tuple[str, ...] = option(
        "--moesif-request-query-masks", default=(), multiple=True, metavar="NAMES", help="Moesif: query arguments to mask.")
    request_body_masks: tuple[str, ...] = option(
        "--moesif-request-body-masks", default=(), multiple=True, metavar="NAMES",
        help="Moesif: JSON body keys to remove, at any depth.")
    response_header_masks: tuple[str, ...] = option(
        "--moesif-response-header-masks", default=(), multiple=True, metavar="NAMES",
        help="Moesif: response headers to remove.")
    response_body_masks: tuple[str, ...] = option(
        "--moesif-response-body-masks", default=(), multiple=True, metavar="NAMES",
        help="Moesif: response JSON body keys to remove.")
    event_queue_size: int = option(
        "--moesif-event-queue-size", default=5000, type=click.IntRange(min=1),
        help="Moesif: events queued before reading pauses (the plugin dropped them).")
    request_max_body_size_limit: int = option(
        "--moesif-request-max-body-size-limit", default=100_000, type=click.IntRange(min=0),
        help="Moesif: larger request bodies are replaced by a marker.")
    response_max_body_size_limit: int = option(
        "--moesif-response-max-body-size-limit", default=100_000, type=click.IntRange(min=0),
        help="Moesif: larger response bodies are replaced by a marker.")
    disable_gzip_payload_decompression: bool = option(
        "--moesif-disable-gzip-payload-decompression", default=False, is_flag=True,
        help="Moesif: send gzip-encoded bodies as they are (base64) instead of decompressing them.")
    connect_timeout: int = option("--moesif-connect-timeout", default=1000, type=click.IntRange(min=1, max=MAX_MILLISECONDS),
                                  help="Moesif: connect timeout, ms.")
    send_timeout: int = option("--moesif-send-timeout", default=2000, type=click.IntRange(min=1, max=MAX_MILLISECONDS),
                               help="Moesif: send and read timeout, ms.")
    keepalive: int = option("--moesif-keepalive", default=5000, type=click.IntRange(min=0, max=MAX_MILLISECONDS),
                            help="Moesif: idle connection keep-alive, ms.")
    debug: bool = option("--moesif-debug", default=False, is_flag=True,
                         help="Moesif: log every batch sent and the configuration fetched.")


class MoesifSink(EventBuilder, HttpSink):
    name: ClassVar[str] = "moesif"
    # The sampling configuration is fetched and refreshed in the parent; the workers get it (worker_state).
    parallel_safe: ClassVar[bool] = True
    Config: ClassVar[type[MoesifConfig]] = MoesifConfig
    OPTIONS: ClassVar[OptionList] = options_of(MoesifConfig)
    limits: SinkLimits

    def __init__(
        self,
        application_id: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        config: MoesifConfig | None = None,
        batch_size: int = DEFAULT_BATCH_EVENTS,
        fetch_config: bool = True,
        max_age_days: float | None = None,
        **options: Any,
    ):
        """`options` set fields of the configuration by name (user_id_header=…), over `config`."""
        self.config = config = replace(config or MoesifConfig(), **options)
        self.base = endpoint.rstrip("/")
        self.url = self.base + "/v1/events/batch"
        self.credentials = (application_id,)
        self._headers = {
            "X-Moesif-Application-Id": application_id,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        self.api_version = config.api_version
        self.user_id_header = config.user_id_header.lower() if config.user_id_header else None
        self.company_id_header = config.company_id_header.lower() if config.company_id_header else None
        self.authorization_user_id_field = config.authorization_user_id_field or None
        self.authorization_company_id_field = config.authorization_company_id_field or None
        self.client_ip_from_kong = config.client_ip_from_kong
        self.capture_request_body = not config.disable_capture_request_body
        self.capture_response_body = not config.disable_capture_response_body
        self.request_header_masks = frozenset(h.lower() for h in _list(config.request_header_masks))
        self.request_query_masks = frozenset(q.lower() for q in _list(config.request_query_masks))
        self.request_body_masks = frozenset(normalize(k) for k in _list(config.request_body_masks))
        self.response_header_masks = frozenset(h.lower() for h in _list(config.response_header_masks))
        self.response_body_masks = frozenset(normalize(k) for k in _list(config.response_body_masks))
        self.request_body_limit = config.request_max_body_size_limit
        self.response_body_limit = config.response_max_body_size_limit
        self.decompress = not config.disable_gzip_payload_decompression
        self.debug = config.debug
        timeout = httpx.Timeout(config.send_timeout / 1000, connect=config.connect_timeout / 1000)
        self.limits = SinkLimits(
            max_batch_events=1000,
            max_batch_bytes=10_000_000,  # Moesif takes 50 MB per batch; smaller batches retry cheaper
            envelope_bytes=2,  # "[" and "]"
            default_batch_events=batch_size,
            queue_events=config.event_queue_size,
            http_timeout=timeout,
            # 0 is OpenResty's "never expire": an idle connection is then kept for the shipper's usual time.
            keepalive_expiry=config.keepalive / 1000 or DEFAULT_KEEPALIVE_EXPIRY,
        )
        # Moesif's window (from_options sets it: every CLI-built sink has it); None sends whatever the age.
        self.max_age_ms = None if max_age_days is None else max_age_days * 86_400_000
        self.sampler = Sampler(self.base, application_id, timeout, debug=config.debug, enabled=fetch_config)

    @classmethod
    def from_options(cls, opts: Mapping[str, Any], endpoint: str | None) -> MoesifSink:
        config = config_from_options(MoesifConfig, opts)
        app_id = read_secret("MOESIF_APPLICATION_ID", config.application_id_file, "--moesif-application-id-file")
        return cls(app_id, endpoint or DEFAULT_ENDPOINT, config=config, max_age_days=MAX_AGE_MS / 86_400_000)

    def encode(self, txn: Transaction) -> bytes:
        if txn.kind not in API_KINDS:
            # Not a request/response pair (a stream session, a Kong config change, an event hook). The Admin API
            # request behind a config change is sent (kind admin_request), with the same request_id.
            raise EventSkipped()
        if (self.max_age_ms is not None and txn.started_at is not None and not txn.started_at_estimated
                and txn.started_at < time.time() * 1000 - self.max_age_ms):
            raise EventFiltered(TOO_OLD)  # Moesif would drop it: say so instead of counting it as shipped
        return self.sampled(self.event(txn), txn.event_id, txn.sample_rate)

    def sampled(self, event: dict[str, Any], event_id: str, kept_at: float = 1.0) -> bytes:
        """The event's bytes with its weight, or EventSkipped when sampling leaves it out (the flat path too).
        `kept_at`: the rate kong-ship's own sampling kept the record at (processors.sampling); its draw is
        independent of this one, so the event stands for 1/(rate × kept_at) calls: the weights multiply."""
        rate = self.sampler.rate(event)
        # Deterministic per record (the plugin drew math.random()): a resend after a crash decides the same.
        # Every draw is below 100: at 100 % (no sampling configured) the id is not hashed at all.
        if rate < 100.0 and not rate > draw(event_id):
            raise EventSkipped()
        # On every event, as the plugin: 1 at 100 %. Rounded: 100 // 20.000000000000004 would be 4, not 5.
        if kept_at == 1.0:
            event["weight"] = 1 if rate == 100.0 else weight(rate)
        else:
            event["weight"] = weight(round(rate * kept_at, 9))
        return orjson.dumps(event)

    def flat_path(self, parser: Parser, chain: Sequence[Processor]) -> FlatEncode | None:
        """Kong HTTP records under the default chain straight to event bytes (`moesif_flat`)."""
        return moesif_flat_path(self, parser, chain)

    # -- a batch ---------------------------------------------------------------------------------------------
    def request(self, events: list[bytes]) -> httpx.Request:
        body = b"[" + b",".join(events) + b"]"
        return httpx.Request("POST", self.url, headers=self._headers, content=gzip_body(body))

    def prepare(self, events: list[bytes]) -> PreparedBody | None:
        """The whole body deflated in a worker (Moesif's has no per-attempt stamp)."""
        return PreparedBody.make(b"[", events, b"]")

    def prepared_request(self, body: PreparedBody) -> httpx.Request:
        return httpx.Request("POST", self.url, headers=self._headers, content=body.gzip(b""))

    def verdict(self, response: httpx.Response) -> Verdict:
        status = response.status_code
        self.sampler.config_changed(response.headers.get("x-moesif-config-etag"))
        if self.debug:
            log.info("moesif: batch answered HTTP %d", status)
        if status == 402:
            return Verdict(FATAL, "Moesif answered 402 Payment Required: check the Moesif account's plan")
        if status == 413:
            return Verdict(SPLIT, "Moesif answered 413: batch too large")
        return judge_common(response, "Moesif", "check MOESIF_APPLICATION_ID (or --moesif-application-id-file)")

    def use_client(self, client: httpx.Client) -> None:
        """The sender's HTTP client, for the configuration requests: the same TLS trust (--ca-file) and pool."""
        self.sampler.use_client(client)

    def worker_state(self) -> SamplingConfig:
        """The sampling configuration the next events are sampled by (once a fetch that decides them is done, as
        `sampled` waits for it); the same object until a refresh changes it."""
        return self.sampler.settled_config()

    def adopt_worker_state(self, state: object) -> None:
        """In a worker process: sample by the parent's configuration, never fetching, never waiting."""
        if not isinstance(state, SamplingConfig):
            raise TypeError(f"a Moesif worker was handed {type(state).__name__}, not a SamplingConfig")
        self.sampler.adopt(state)


OPTIONS = MoesifSink.OPTIONS  # the CLI reads each sink module's OPTIONS
_CONTRACT: type[Sink] = MoesifSink  # mypy checks the class against the sink contract here


# -- before a backfill --------------------------------------------------------------------------------------------
_STARTED_AT = re.compile(rb'"started_at"\s*:\s*(\d+(?:\.\d+)?)')
_CHUNK = 1 << 20


def count_outside_window(paths: Iterable[str | PathLike[str]], now: float | None = None) -> str | None:
    """One line telling how many records of these files Moesif would refuse as older than 30 days, or None when
    none is. A fast scan of `"started_at":N` (Kong's logs; gzip files too), not a parse: records without it
    (Nginx lines, audit records) are not counted. Unreadable files are passed over: the backfill reports them."""
    cutoff = (time.time() if now is None else now) * 1000 - MAX_AGE_MS
    old = seen = 0
    for path in paths:
        name = str(path)
        try:
            with (gzip.open(name, "rb") if _is_gzip(name) else open(name, "rb")) as handle:
                tail = b""
                while chunk := handle.read(_CHUNK):
                    data = tail + chunk
                    cut = data.rfind(b"\n") + 1  # a record split across chunks is scanned with the next one
                    data, tail = data[:cut], data[cut:]
                    for found in _STARTED_AT.finditer(data):
                        seen += 1
                        old += _millis(found.group(1)) < cutoff
                for found in _STARTED_AT.finditer(tail):
                    seen += 1
                    old += _millis(found.group(1)) < cutoff
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
    if not old:
        return None
    since = datetime.fromtimestamp(cutoff / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"moesif: {old:,} of {seen:,} records started before {since}, {TOO_OLD}: "
            "they will be counted as filtered, not sent")


def _is_gzip(name: str) -> bool:
    with open(name, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _millis(raw: bytes) -> float:
    value = float(raw)
    return value * 1000 if value < 100_000_000_000 else value  # seconds (a few custom logs) or Kong's ms
