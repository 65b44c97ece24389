"""Runscope's Messages API (legacy): one message per request to `POST {endpoint}/buckets/{bucket}/messages`,
as Kong's Runscope plugin sent them, several in flight.

Runscope's Traffic Inspector reached end of life in 2018 and Kong removed its plugin in 0.14: there is no live
public target. This sink is for endpoints that speak the same API (`--endpoint`), and keeps the plugin's
options for those migrating old setups. Whether the API accepted an array of messages is unknown, so each
request carries one message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import click
import httpx
import orjson

from shipper.errors import ConfigError
from shipper.formats.values import parse_query
from shipper.model import Transaction
from shipper.settings import MAX_MILLISECONDS
from shipper.sinks.base import (
    DEFAULT_KEEPALIVE_EXPIRY, FATAL, REJECT, EventSkipped, FlatEncode, HttpSink, OptionList, Sink, SinkLimits, Verdict,
    absolute_url, judge_common, snippet,
)
from shipper.sinks.config import config_from_options, option, options_of
from shipper.sinks.credentials import read_secret
from shipper.sinks.runscope_flat import runscope_flat_path

if TYPE_CHECKING:  # only types: the sinks need neither the formats nor the processors at run time
    from shipper.formats import Parser
    from shipper.processors import Processor

DEFAULT_ENDPOINT = "https://api.runscope.com"

@dataclass(frozen=True, slots=True)
class RunscopeConfig:
    """The Runscope plugin's options under `--runscope-*` names (TOML keys: the field names)."""

    access_token_file: str | None = option(
        "--runscope-access-token-file", type=click.Path(dir_okay=False),
        help="File holding the Runscope access token (default: env RUNSCOPE_ACCESS_TOKEN).")
    bucket_key: str | None = option("--runscope-bucket-key", envvar="RUNSCOPE_BUCKET_KEY",
                                    help="Runscope bucket key [env RUNSCOPE_BUCKET_KEY].")
    log_body: bool = option("--runscope-log-body", default=False, is_flag=True,
                            help="Runscope: include request and response bodies (when the log has them).")
    timeout: int = option("--runscope-timeout", default=10_000, type=click.IntRange(min=1, max=MAX_MILLISECONDS),
                          help="Runscope: request timeout, ms.")
    keepalive: int = option("--runscope-keepalive", default=30_000, type=click.IntRange(min=0, max=MAX_MILLISECONDS),
                            help="Runscope: idle connection keep-alive, ms.")


def _headers(headers: dict[str, Any]) -> dict[str, Any]:
    # Runscope takes a string or a list of strings per header name; Kong may log other JSON values.
    out: dict[str, Any] = {}
    for name, value in headers.items():
        if isinstance(value, list):
            out[name] = [str(v) for v in value]
        elif value is not None:
            out[name] = str(value)
    return out


def _body(body: Any) -> str | None:
    # The plugin sent the body as the text nginx read (`ngx.req.get_body_data()`, the response chunks joined)
    # and no `body_encoding`: every body a log carries is text, which is what Runscope assumed without one.
    if body is None:
        return None
    if isinstance(body, str):
        return body
    return orjson.dumps(body).decode()


def _is_form(headers: dict[str, Any]) -> bool:
    content_type = headers.get("content-type")
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else None
    return isinstance(content_type, str) and "application/x-www-form-urlencoded" in content_type.lower()


class RunscopeSink(HttpSink):
    name: ClassVar[str] = "runscope"
    parallel_safe: ClassVar[bool] = True  # encode is a pure function of the transaction
    Config: ClassVar[type[RunscopeConfig]] = RunscopeConfig
    OPTIONS: ClassVar[OptionList] = options_of(RunscopeConfig)
    limits: SinkLimits

    def __init__(
        self,
        access_token: str,
        bucket_key: str | None,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        config: RunscopeConfig | None = None,
        **options: Any,
    ):
        """`options` set fields of the configuration by name (log_body=…), over `config`; the bucket key is
        `bucket_key`, whatever the configuration says."""
        bucket_key = (bucket_key or "").strip() or None  # blank is unset, as for every credential (credentials.py)
        self.config = config = replace(config or RunscopeConfig(), bucket_key=bucket_key, **options)
        if not bucket_key:
            raise ConfigError("RUNSCOPE_BUCKET_KEY is not set: export RUNSCOPE_BUCKET_KEY=... or pass --runscope-bucket-key")
        self.url = f"{endpoint.rstrip('/')}/buckets/{bucket_key}/messages"
        self.credentials = (access_token,)
        self._headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
        self.log_body = config.log_body
        self.limits = SinkLimits(
            max_batch_events=1,  # one message per request, as the plugin sent them
            max_batch_bytes=10_000_000,
            http_timeout=httpx.Timeout(config.timeout / 1000),
            # 0 is OpenResty's "never expire": an idle connection is then kept for the shipper's usual time.
            keepalive_expiry=config.keepalive / 1000 or DEFAULT_KEEPALIVE_EXPIRY,
        )

    @classmethod
    def from_options(cls, opts: Mapping[str, Any], endpoint: str | None) -> RunscopeSink:
        config = config_from_options(RunscopeConfig, opts)
        token = read_secret("RUNSCOPE_ACCESS_TOKEN", config.access_token_file, "--runscope-access-token-file")
        return cls(token, config.bucket_key, endpoint or DEFAULT_ENDPOINT, config=config)

    def message(self, txn: Transaction) -> dict[str, Any]:
        # A record without a start time is dated when it is sent, as Segment's events are (never 1970): the
        # parsers already date an undated line at read time, so this is the last resort for hand-made ones.
        started = txn.started_at / 1000 if txn.started_at is not None else time.time()
        elapsed = (txn.latency_request or 0) / 1000
        request: dict[str, Any] = {
            "method": txn.method,
            "url": absolute_url(txn),  # scheme://host:port + target, as the plugin built it from nginx's vars
            "headers": _headers(txn.request_headers),
            "timestamp": started,
        }
        response: dict[str, Any] = {
            "status": txn.status if txn.status is not None else 0,
            "headers": _headers(txn.response_headers),
            "response_time": elapsed,
            "timestamp": started + elapsed,  # the plugin's ngx.now() at log time: the end of the response
        }
        if txn.response_size is not None:
            response["size_bytes"] = txn.response_size
        if self.log_body:
            body = _body(txn.request_body)
            if body is not None:
                request["body"] = body
                # The plugin sent the decoded fields of a form-encoded request body as `form` (nginx's
                # get_post_args: a repeated field is a list, a bare one true), read after masking here.
                if type(txn.request_body) is str and _is_form(txn.request_headers):
                    request["form"] = parse_query(txn.request_body)
            body = _body(txn.response_body)
            if body is not None:
                response["body"] = body
        return {"request": request, "response": response}

    def encode(self, txn: Transaction) -> bytes:
        if txn.kind not in ("api", "admin_request"):
            # Runscope shows request/response pairs: a Kong config change, an event hook or a stream (TCP, TLS,
            # UDP) session is none. The Admin API request behind a config change is sent (kind admin_request).
            raise EventSkipped()
        return orjson.dumps(self.message(txn))

    def flat_path(self, parser: Parser, chain: Sequence[Processor]) -> FlatEncode | None:
        """Kong HTTP records under the default chain straight to message bytes (`runscope_flat`)."""
        return runscope_flat_path(self, parser, chain)

    def request(self, events: list[bytes]) -> httpx.Request:
        return httpx.Request("POST", self.url, headers=self._headers, content=events[0])

    def verdict(self, response: httpx.Response) -> Verdict:
        status = response.status_code
        if status == 404:
            return Verdict(FATAL, "Runscope answered 404: unknown bucket (check --runscope-bucket-key and --endpoint)")
        if status == 400:
            return Verdict(REJECT, f"Runscope answered 400: {snippet(response)}")
        return judge_common(response, "Runscope", "check RUNSCOPE_ACCESS_TOKEN (or --runscope-access-token-file)")


OPTIONS = RunscopeSink.OPTIONS  # the CLI reads each sink module's OPTIONS
_CONTRACT: type[Sink] = RunscopeSink  # mypy checks the class against the sink contract here
