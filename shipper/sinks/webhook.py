"""`--sink webhook`: the normalized transactions as JSON POSTs to any HTTP endpoint (`--endpoint`, required),
batched as a JSON array, with custom headers (`--webhook-header 'Name: value'`) and, when a secret is given,
the signature Kong's own event hooks use.

The signature: `x-kong-signature: sha1=<hex HMAC-SHA1 of the body>`, keyed with the secret (env
`KONG_SHIP_WEBHOOK_SECRET` or `--webhook-secret-file`). Kong Enterprise builds it so in
`kong/enterprise_edition/event_hooks.lua` (`sign_body` returns "sha1" and `to_hex(hmac_sha1(secret, body))`) and
`kong/enterprise_edition/utils.lua` (`request` sets the header to `alg .. "=" .. hmac`). A receiver that
already checks Kong's event hooks checks these requests unchanged. `signature_ok` is the receiving side (used by
`kong-ship receive`): it takes the `sha1=` form and a bare hex digest, compared in constant time.

Each event is the transaction as `kong-ship parse` prints it (`Transaction.to_dict()`), masks applied.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from urllib.parse import urlsplit

import click
import httpx
import orjson

from shipper.errors import ConfigError
from shipper.model import Transaction
from shipper.sinks.base import (
    FATAL, OK, REJECT, RETRY, SPLIT, HttpSink, OptionList, Sink, SinkLimits, Verdict, retry_after_seconds, snippet,
)
from shipper.sinks.config import config_from_options, option, options_of
from shipper.sinks.credentials import read_secret

SECRET_ENV = "KONG_SHIP_WEBHOOK_SECRET"
SIGNATURE_HEADER = "x-kong-signature"

@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """The webhook sink's options (TOML keys under [sinks.webhook]: the field names)."""

    header: tuple[str, ...] = option(
        "--webhook-header", default=(), multiple=True, metavar="'NAME: VALUE'",
        help="Webhook: an HTTP header sent with every request (repeatable).")
    secret_file: str | None = option(
        "--webhook-secret-file", type=click.Path(dir_okay=False),
        help=f"Webhook: file holding the secret that signs each body (x-kong-signature, HMAC-SHA1, as Kong's event "
             f"hooks) [default: env {SECRET_ENV}; unsigned if neither].")


# RFC 9110 token characters: what a header name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers the sink sets itself (or the HTTP layer does): a --webhook-header may not replace them.
_RESERVED = {"content-type", "content-length", "transfer-encoding", "host", "connection", SIGNATURE_HEADER}


def sign(secret: bytes, body: bytes) -> str:
    """The `x-kong-signature` value for `body`, as Kong computes it."""
    return "sha1=" + hmac.new(secret, body, hashlib.sha1).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` (`sha1=<hex>` or bare hex, any case) is the HMAC-SHA1 of `body` under `secret`."""
    if not header:
        return False
    value = header.strip()
    if value[:5].lower() == "sha1=":
        value = value[5:]
    expected = hmac.new(secret, body, hashlib.sha1).hexdigest()
    return hmac.compare_digest(value.lower().encode("ascii", "replace"), expected.encode())


def parse_headers(values: Iterable[str]) -> list[tuple[str, str]]:
    """`'Name: value'` strings as (name, value) pairs; ConfigError names the header, never its value."""
    out = []
    for raw in values:
        name, colon, value = raw.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name:
            raise ConfigError("--webhook-header: expected 'Name: value', got one without a colon or name")
        if not _TOKEN.match(name):
            raise ConfigError(f"--webhook-header {name!r}: not a valid header name")
        if "\r" in value or "\n" in value:
            raise ConfigError(f"--webhook-header {name}: the value may not contain a line break")
        if name.lower() in _RESERVED:
            raise ConfigError(f"--webhook-header {name}: kong-ship sets this header itself")
        out.append((name, value))
    return out


class WebhookSink(HttpSink):
    name: ClassVar[str] = "webhook"
    parallel_safe: ClassVar[bool] = True  # encode is a pure function of the transaction
    Config: ClassVar[type[WebhookConfig]] = WebhookConfig
    OPTIONS: ClassVar[OptionList] = options_of(WebhookConfig)
    limits = SinkLimits(
        max_batch_events=10_000,
        default_batch_events=500,
        max_batch_bytes=1_000_000,  # of the body; under `kong-ship receive`'s default 1 MiB request limit
        envelope_bytes=2,  # "[" and "]"; the batcher counts one comma per event
    )

    def __init__(self, endpoint: str, *, secret: str | None = None, headers: list[tuple[str, str]] | None = None):
        self.url = endpoint
        self._secret = secret.encode() if secret else None
        self._headers = [("Content-Type", "application/json"), *(headers or [])]
        # The headers' values may be credentials (X-Api-Key), and the signing secret is one; so is what
        # `shown_endpoint` hides of the URL (a Slack or Discord webhook's path), which an answer may quote back.
        self.credentials = (
            tuple(value for _, value in self._headers[1:]) + ((secret,) if secret else ()) + hidden_parts(endpoint)
        )

    @classmethod
    def from_options(cls, opts: Mapping[str, Any], endpoint: str | None) -> WebhookSink:
        if not endpoint:
            raise ConfigError("--sink webhook needs --endpoint URL: where to POST the events")
        config = config_from_options(WebhookConfig, opts)
        if config.secret_file or os.environ.get(SECRET_ENV, "").strip():
            secret: str | None = read_secret(SECRET_ENV, config.secret_file, "--webhook-secret-file")
        else:
            secret = None
        return cls(endpoint, secret=secret, headers=parse_headers(config.header))

    @property
    def signed(self) -> bool:
        return self._secret is not None

    def encode(self, txn: Transaction) -> bytes:
        return orjson.dumps(txn.to_dict(), option=orjson.OPT_NON_STR_KEYS)

    def request(self, events: list[bytes]) -> httpx.Request:
        body = b"[" + b",".join(events) + b"]"
        headers = list(self._headers)
        if self._secret is not None:
            headers.append((SIGNATURE_HEADER, sign(self._secret, body)))
        return httpx.Request("POST", self.url, headers=headers, content=body)

    def verdict(self, response: httpx.Response) -> Verdict:
        status = response.status_code
        if 200 <= status < 300:
            return Verdict(OK)
        if status in (401, 403):
            hint = "check the signing secret (KONG_SHIP_WEBHOOK_SECRET or --webhook-secret-file) and --webhook-header"
            shown = shown_endpoint(self.url)
            return Verdict(FATAL, f"the webhook endpoint {shown} refused the request (HTTP {status}): {hint}")
        if status in (404, 405, 410, 501, 505):
            return Verdict(FATAL, f"the webhook endpoint answered HTTP {status} for {shown_endpoint(self.url)}: "
                                  "check --endpoint")
        if 300 <= status < 400:
            where = response.headers.get("location", "?")
            return Verdict(FATAL, f"the webhook endpoint redirects (HTTP {status}) to {where}: set --endpoint to it")
        if status in (408, 429) or status >= 500:
            return Verdict(RETRY, f"the webhook endpoint answered HTTP {status}", retry_after_seconds(response))
        if status == 413:
            return Verdict(SPLIT, "the webhook endpoint answered HTTP 413 (body too large)")
        return Verdict(REJECT, f"the webhook endpoint answered HTTP {status}: {snippet(response)}")


OPTIONS = WebhookSink.OPTIONS  # the CLI reads each sink module's OPTIONS
_CONTRACT: type[Sink] = WebhookSink  # mypy checks the class against the sink contract here


def hidden_parts(url: str) -> tuple[str, ...]:
    """What `shown_endpoint` leaves out of `url` (the path after its first segment, the query, the fragment, the
    userinfo), as the texts a vendor's answer would quote: longest first, so that a part is masked whole."""
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    hidden = ["/".join(segments[1:]), *segments[1:], parts.query, parts.fragment, parts.netloc.rpartition("@")[0]]
    for text in (parts.query, parts.fragment):
        hidden += [value for _, _, value in (item.partition("=") for item in text.split("&"))]
    return tuple(sorted({part for part in hidden if part}, key=len, reverse=True))


def shown_endpoint(url: str) -> str:
    """The endpoint as our messages show it: its origin and first path segment (`https://hooks.slack.com/services/…`).
    Slack, Discord, Zapier and the like put the secret in the path; the user knows the rest of their URL."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # userinfo is a credential too
    segments = [segment for segment in parts.path.split("/") if segment]
    rest = "/…" if len(segments) > 1 or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}" + (f"/{segments[0]}" if segments else "") + rest
