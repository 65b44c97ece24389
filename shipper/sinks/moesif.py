"""Moesif's Collector API: each Transaction becomes a Moesif event as kong-plugin-moesif builds it, sent in gzip
batches to `POST {endpoint}/v1/events/batch`, with the plugin's options under `--moesif-*` names.

Where the plugin was weak this sink does better: any 2xx is success (the plugin wanted 201), retries back off
and honour Retry-After (the plugin retried at once, forever), every event carries a `transaction_id` derived
from its record (the plugin sent none, so its retries made duplicates), a full queue pauses reading instead of
dropping, Authorization and the other default secrets are masked in headers, query and bodies (JSON and
form-encoded, by key; `processors.masking`), bodies whose keys cannot be inspected are not sent at all, JWTs
are decoded as base64url, and milliseconds are zero-padded.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import logging
import threading
import time
import uuid
import zlib
from typing import Any, ClassVar

import click
import httpx
import orjson

from shipper.model import Transaction
from shipper.processors.masking import MASK, mask_query_string
from shipper.processors.names import normalize
from shipper.sinks.base import FATAL, SPLIT, EventSkipped, Verdict, absolute_url, judge_common
from shipper.sinks.credentials import read_secret
from shipper.sinks.segment import iso_ms

log = logging.getLogger("kong-ship")

DEFAULT_ENDPOINT = "https://api.moesif.net"
NAMESPACE = uuid.UUID("6f9c5e0a-3c1d-4a8e-9b5e-6b6f6e6b5368")  # kong-ship's namespace for transaction ids
CONFIG_REFRESH = 300.0  # seconds between /v1/config fetches (sooner when an answer's config ETag changes)
BODY_LIMIT_MARKER = "body size exceeded {which}_max_body_size_limit ({limit} bytes): not captured"
GZIP_LEVEL = 1
# Kinds of Transaction that are HTTP calls: proxied ones, and Kong Admin API requests (audit records).
API_KINDS = frozenset({"api", "admin_request"})


def _list(values: tuple[str, ...] | list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or ():
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


OPTIONS = [
    (("--moesif-application-id-file",), {"type": click.Path(dir_okay=False),
                                          "help": "File holding the Moesif application id (default: env MOESIF_APPLICATION_ID)."}),
    (("--moesif-api-version",), {"default": "1.0", "show_default": True, "help": "Moesif: api_version of every event."}),
    (("--moesif-user-id-header",), {"default": "X-Consumer-Custom-Id", "show_default": True,
                                     "help": "Moesif: request header holding the user id (then the JWT / consumer)."}),
    (("--moesif-company-id-header",), {"default": None, "help": "Moesif: request header holding the company id."}),
    (("--moesif-disable-capture-request-body",), {"is_flag": True, "help": "Moesif: never send request bodies."}),
    (("--moesif-disable-capture-response-body",), {"is_flag": True, "help": "Moesif: never send response bodies."}),
    (("--moesif-request-header-masks",), {"multiple": True, "metavar": "NAMES", "help": "Moesif: request headers to remove (comma-separated, repeatable)."}),
    (("--moesif-request-query-masks",), {"multiple": True, "metavar": "NAMES", "help": "Moesif: query arguments to mask."}),
    (("--moesif-request-body-masks",), {"multiple": True, "metavar": "NAMES", "help": "Moesif: JSON body keys to remove, at any depth."}),
    (("--moesif-response-header-masks",), {"multiple": True, "metavar": "NAMES", "help": "Moesif: response headers to remove."}),
    (("--moesif-response-body-masks",), {"multiple": True, "metavar": "NAMES", "help": "Moesif: response JSON body keys to remove."}),
    (("--moesif-event-queue-size",), {"type": click.IntRange(min=1), "default": 5000, "show_default": True,
                                       "help": "Moesif: events queued before reading pauses (the plugin dropped them)."}),
    (("--moesif-request-max-body-size-limit",), {"type": click.IntRange(min=0), "default": 100_000, "show_default": True,
                                                  "help": "Moesif: larger request bodies are replaced by a marker."}),
    (("--moesif-response-max-body-size-limit",), {"type": click.IntRange(min=0), "default": 100_000, "show_default": True,
                                                   "help": "Moesif: larger response bodies are replaced by a marker."}),
    (("--moesif-disable-gzip-payload-decompression",), {"is_flag": True,
                                                         "help": "Moesif: send gzip-encoded bodies as they are (base64) instead of decompressing them."}),
    (("--moesif-connect-timeout",), {"type": click.IntRange(min=1), "default": 1000, "show_default": True, "help": "Moesif: connect timeout, ms."}),
    (("--moesif-send-timeout",), {"type": click.IntRange(min=1), "default": 2000, "show_default": True, "help": "Moesif: send and read timeout, ms."}),
    (("--moesif-keepalive",), {"type": click.IntRange(min=0), "default": 5000, "show_default": True, "help": "Moesif: idle connection keep-alive, ms."}),
    (("--moesif-debug",), {"is_flag": True, "help": "Moesif: log every batch sent and the configuration fetched."}),
]


def transaction_id(event_id: str) -> str:
    """A UUID derived from the record (36 characters): a resend is the same transaction to Moesif."""
    return str(uuid.uuid5(NAMESPACE, event_id))


def _sample_rate(value: Any) -> int:
    """A percentage from /v1/config: a finite number from 0 to 100 (`1e999` parses as infinity, `NaN` too)."""
    if type(value) is str:
        value = float(value)
    if type(value) not in (int, float) or not 0 <= value <= 100:
        raise ValueError(f"sample rate {str(value)[:40]} is not a percentage from 0 to 100")
    return int(value)


def _strip_keys(value: Any, names: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip_keys(v, names) for k, v in value.items() if normalize(str(k)) not in names}
    if isinstance(value, list):
        return [_strip_keys(v, names) for v in value]
    return value


class MoesifSink:
    name: ClassVar[str] = "moesif"
    parallel_safe = False  # the sampling configuration is fetched and refreshed in this process
    max_batch_events = 1000
    max_batch_bytes = 10_000_000  # Moesif takes 50 MB per batch; smaller batches retry cheaper
    envelope_bytes = 2

    def __init__(
        self,
        application_id: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        api_version: str = "1.0",
        user_id_header: str | None = "X-Consumer-Custom-Id",
        company_id_header: str | None = None,
        disable_capture_request_body: bool = False,
        disable_capture_response_body: bool = False,
        request_header_masks: list[str] | None = None,
        request_query_masks: list[str] | None = None,
        request_body_masks: list[str] | None = None,
        response_header_masks: list[str] | None = None,
        response_body_masks: list[str] | None = None,
        event_queue_size: int = 5000,
        request_max_body_size_limit: int = 100_000,
        response_max_body_size_limit: int = 100_000,
        disable_gzip_payload_decompression: bool = False,
        connect_timeout: int = 1000,
        send_timeout: int = 2000,
        keepalive: int = 5000,
        debug: bool = False,
        batch_size: int = 200,
        fetch_config: bool = True,
    ):
        self.base = endpoint.rstrip("/")
        self.url = self.base + "/v1/events/batch"
        self._headers = {
            "X-Moesif-Application-Id": application_id,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        self.api_version = api_version
        self.user_id_header = user_id_header.lower() if user_id_header else None
        self.company_id_header = company_id_header.lower() if company_id_header else None
        self.capture_request_body = not disable_capture_request_body
        self.capture_response_body = not disable_capture_response_body
        self.request_header_masks = frozenset(h.lower() for h in request_header_masks or ())
        self.request_query_masks = frozenset(q.lower() for q in request_query_masks or ())
        self.request_body_masks = frozenset(normalize(k) for k in request_body_masks or ())
        self.response_header_masks = frozenset(h.lower() for h in response_header_masks or ())
        self.response_body_masks = frozenset(normalize(k) for k in response_body_masks or ())
        self.request_body_limit = request_max_body_size_limit
        self.response_body_limit = response_max_body_size_limit
        self.decompress = not disable_gzip_payload_decompression
        self.debug = debug
        self.queue_events = event_queue_size
        self.default_batch_events = batch_size
        self.http_timeout = httpx.Timeout(send_timeout / 1000, connect=connect_timeout / 1000)
        self.keepalive_expiry = keepalive / 1000
        # Sampling, as the plugin does it: /v1/config at start and when it changes.
        self._config_lock = threading.Lock()
        self._sample_rate = 100
        self._user_rates: dict[str, int] = {}
        self._company_rates: dict[str, int] = {}
        self._etag: str | None = None
        self._client: httpx.Client | None = None  # the sender's (its --ca-file), once it has one
        self._config_due = 0.0 if fetch_config else float("inf")

    @classmethod
    def from_options(cls, opts: dict[str, Any], endpoint: str | None) -> MoesifSink:
        app_id = read_secret("MOESIF_APPLICATION_ID", opts.get("moesif_application_id_file"), "--moesif-application-id-file")
        return cls(
            app_id,
            endpoint or DEFAULT_ENDPOINT,
            api_version=opts.get("moesif_api_version") or "1.0",
            user_id_header=opts.get("moesif_user_id_header"),
            company_id_header=opts.get("moesif_company_id_header"),
            disable_capture_request_body=bool(opts.get("moesif_disable_capture_request_body")),
            disable_capture_response_body=bool(opts.get("moesif_disable_capture_response_body")),
            request_header_masks=_list(opts.get("moesif_request_header_masks")),
            request_query_masks=_list(opts.get("moesif_request_query_masks")),
            request_body_masks=_list(opts.get("moesif_request_body_masks")),
            response_header_masks=_list(opts.get("moesif_response_header_masks")),
            response_body_masks=_list(opts.get("moesif_response_body_masks")),
            event_queue_size=opts.get("moesif_event_queue_size") or 5000,
            request_max_body_size_limit=opts.get("moesif_request_max_body_size_limit", 100_000),
            response_max_body_size_limit=opts.get("moesif_response_max_body_size_limit", 100_000),
            disable_gzip_payload_decompression=bool(opts.get("moesif_disable_gzip_payload_decompression")),
            connect_timeout=opts.get("moesif_connect_timeout") or 1000,
            send_timeout=opts.get("moesif_send_timeout") or 2000,
            keepalive=opts.get("moesif_keepalive", 5000),
            debug=bool(opts.get("moesif_debug")),
        )

    # -- sampling ------------------------------------------------------------------------------------------
    def refresh_config(self) -> None:
        """GET /v1/config (conditional on the ETag we hold). Failures keep the last configuration: sampling
        errs on the side of sending."""
        headers = {"X-Moesif-Application-Id": self._headers["X-Moesif-Application-Id"]}
        if self._etag:
            headers["If-None-Match"] = self._etag
        try:
            get = self._client.get if self._client is not None else httpx.get
            response = get(self.base + "/v1/config", headers=headers, timeout=self.http_timeout)
        except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: the sender's client closed at shutdown
            log.warning("moesif: cannot fetch /v1/config (%s); sampling keeps its last settings", exc)
            return
        if response.status_code == 304:
            return
        if response.status_code != 200:
            log.warning("moesif: /v1/config answered HTTP %d; sampling keeps its last settings", response.status_code)
            return
        try:
            config = response.json()
            rate = _sample_rate(config.get("sample_rate", 100))
            users = {str(k): _sample_rate(v) for k, v in (config.get("user_sample_rate") or {}).items()}
            companies = {str(k): _sample_rate(v) for k, v in (config.get("company_sample_rate") or {}).items()}
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            log.warning("moesif: /v1/config is not understood (%s); sampling keeps its last settings", exc)
            return
        with self._config_lock:
            self._sample_rate, self._user_rates, self._company_rates = rate, users, companies
            self._etag = response.headers.get("etag") or response.headers.get("x-moesif-config-etag")
        if self.debug:
            log.info("moesif: sample_rate %d%%, %d user and %d company rates", rate, len(users), len(companies))

    def _rate(self, user_id: str | None, company_id: str | None) -> int:
        if time.monotonic() >= self._config_due:
            self._config_due = time.monotonic() + CONFIG_REFRESH
            self.refresh_config()
        with self._config_lock:
            if user_id is not None and user_id in self._user_rates:
                return self._user_rates[user_id]
            if company_id is not None and company_id in self._company_rates:
                return self._company_rates[company_id]
            return self._sample_rate

    # -- one event -------------------------------------------------------------------------------------------
    def _body(self, body: Any, headers: dict[str, Any], which: str, limit: int, masks: frozenset[str]) -> dict[str, Any]:
        if isinstance(body, str) and str(headers.get("content-encoding", "")).lower() == "gzip":
            try:
                packed = base64.b64decode(body, validate=True)
            except binascii.Error:
                packed = None  # the masks found secrets in it and left it decoded
            if packed is not None and not self.decompress:
                return {"body": body, "transfer_encoding": "base64"}
            if packed is not None:
                try:
                    body = gzip.decompress(packed).decode("utf-8", "replace")
                except (OSError, EOFError, zlib.error):
                    pass
        raw = body if isinstance(body, str) else orjson.dumps(body).decode()
        if len(raw.encode("utf-8", "replace")) > limit:
            return {"body": {"msg": BODY_LIMIT_MARKER.format(which=which, limit=limit)}}
        if isinstance(body, str):
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError:
                # Not JSON: form-encoded (the default masks are applied already; the plugin's are applied here),
                # or raw with --ship-raw-bodies. Sent base64-encoded, as Moesif expects.
                if masks:
                    body = mask_query_string(body, masks)
                return {"body": base64.b64encode(body.encode("utf-8", "replace")).decode(), "transfer_encoding": "base64"}
        if masks:
            body = _strip_keys(body, masks)
        return {"body": body}

    @staticmethod
    def _headers_without(headers: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
        if not names or not names.intersection(headers):
            return headers
        return {k: v for k, v in headers.items() if k not in names}

    def event(self, txn: Transaction) -> dict[str, Any]:
        request_headers = txn.request_headers
        user_id = None
        if self.user_id_header:
            value = request_headers.get(self.user_id_header)
            user_id = value if isinstance(value, str) and value and value != MASK else None
        user_id = user_id or txn.user_id
        company_id = None
        if self.company_id_header:
            value = request_headers.get(self.company_id_header)
            company_id = value if isinstance(value, str) and value and value != MASK else None

        raw_path = txn.raw_path
        if self.request_query_masks and txn.query_string:
            raw_path = raw_path.replace("?" + txn.query_string, "?" + mask_query_string(txn.query_string, self.request_query_masks), 1)
        started = txn.started_at if txn.started_at is not None else int(time.time() * 1000)

        request: dict[str, Any] = {
            "time": iso_ms(started),
            "uri": absolute_url(txn, raw_path),
            "verb": txn.method,
            "headers": self._headers_without(request_headers, self.request_header_masks),
            "ip_address": txn.client_ip or None,
            "api_version": self.api_version,
        }
        if self.capture_request_body and txn.request_body is not None:
            request.update(self._body(txn.request_body, request_headers, "request", self.request_body_limit,
                                      self.request_body_masks))
        response: dict[str, Any] = {
            "time": iso_ms(started + int(txn.latency_request or 0)),
            "status": txn.status if txn.status is not None else 0,
            "headers": self._headers_without(txn.response_headers, self.response_header_masks),
        }
        if self.capture_response_body and txn.response_body is not None:
            response.update(self._body(txn.response_body, txn.response_headers, "response", self.response_body_limit,
                                       self.response_body_masks))
        metadata: dict[str, Any] = {}
        for key, entity in (("service", txn.service), ("route", txn.route), ("consumer", txn.consumer)):
            if entity:
                metadata[key] = {k: entity[k] for k in ("id", "name", "username", "custom_id") if entity.get(k) is not None}
        if txn.workspace or txn.workspace_name:
            metadata["workspace"] = {"id": txn.workspace, "name": txn.workspace_name}
        metadata["latencies"] = {"request": txn.latency_request, "kong": txn.latency_kong, "proxy": txn.latency_proxy}
        if txn.upstream_status is not None:
            metadata["upstream_status"] = txn.upstream_status
        if txn.kind == "admin_request" and txn.details:
            metadata["audit"] = txn.details  # the Kong audit record (signature result, payload masked)
        event: dict[str, Any] = {
            "request": request,
            "response": response,
            "direction": "Incoming",
            "metadata": {"kong": metadata},
            "transaction_id": transaction_id(txn.event_id),
        }
        if user_id:
            event["user_id"] = user_id
        if company_id:
            event["company_id"] = company_id
        session = (txn.jwt_claims or {}).get("sid")
        if isinstance(session, str) and session:
            event["session_token"] = session
        return event

    def encode(self, txn: Transaction) -> bytes:
        if txn.kind not in API_KINDS:
            # Not a request/response pair (a Kong config change, an event hook): no Moesif API event fits.
            # The Admin API request behind a config change is sent (kind admin_request), with the same request_id.
            raise EventSkipped()
        event = self.event(txn)
        rate = self._rate(event.get("user_id"), event.get("company_id"))
        if rate < 100:
            # Deterministic per record: a resend after a crash makes the same decision.
            draw = int.from_bytes(hashlib.blake2b(txn.event_id.encode(), digest_size=4).digest(), "big") % 10_000
            if rate <= 0 or draw >= rate * 100:
                raise EventSkipped()
            event["weight"] = max(1, 100 // rate)
        return orjson.dumps(event)

    # -- a batch ---------------------------------------------------------------------------------------------
    def request(self, events: list[bytes]) -> httpx.Request:
        body = b"[" + b",".join(events) + b"]"
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        return httpx.Request("POST", self.url, headers=self._headers, content=compressor.compress(body) + compressor.flush())

    def judge(self, response: httpx.Response) -> Verdict:
        status = response.status_code
        etag = response.headers.get("x-moesif-config-etag")
        if etag and etag != self._etag:
            self._config_due = 0.0  # the configuration changed: fetch it before the next event
        if self.debug:
            log.info("moesif: batch answered HTTP %d", status)
        if status == 402:
            return Verdict(FATAL, "Moesif answered 402 Payment Required: check the Moesif account's plan")
        if status == 413:
            return Verdict(SPLIT, "Moesif answered 413: batch too large")
        return judge_common(response, "Moesif", "check MOESIF_APPLICATION_ID (or --moesif-application-id-file)")

    def use_client(self, client: httpx.Client) -> None:
        """The sender's HTTP client, for the configuration requests: the same TLS trust (--ca-file) and pool."""
        self._client = client

    def transport(self) -> httpx.BaseTransport | None:
        return None
