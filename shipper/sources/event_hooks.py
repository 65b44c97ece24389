"""What `kong-ship receive` serves over HTTP: Kong event-hook deliveries (`handler=webhook`) at any path, and
Kong's http-log at `/http-log` (`http_log.py`). The listener, its bounds and the spool write are
`http_server.py`'s; here, the routing and the event hooks.

An event-hook delivery is POSTed. Past the listener's bounds (`http_server.RequestHandler.body`), it is answered:

- 401 when event hooks are not configured (no secret and no --allow-unsigned: only http-log is), before the body
  is read;
- 401 when a secret is configured and the `x-kong-signature` header is missing or wrong (`sha1=<hex>` as Kong
  sends it, or a bare hex digest; constant-time comparison);
- 413 when the body holds more JSON objects and arrays, or more events, than a body may (as http-log's:
  `http_limits.crowded_json`, `too_many_records`), and 503 when it cannot take from the reading budget what it
  weighs parsed (`http_log.hold_parsing`);
- 400 when the body is not a JSON object (one event, as Kong sends it) or a non-empty array of objects (a batch,
  as `--sink webhook` sends it), or is nested too deep to be stored;
- 503 when the spool cannot be written (disk full);
- 200 `{"accepted": N}` once every event of the body is durable.

Kong's webhook handler counts any HTTP answer, a 503 included, as delivered (it retries, for up to the queue's
`max_retry_time`, 60 s by default, only when the request fails: refused, reset, timed out). With
`overload="close"` an overloaded receiver therefore closes the connection without answering, which Kong does
retry; by default it answers 503 with Retry-After, the usual way to say "later".
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from shipper.formats.event_hook import spool_encoder
from shipper.processors.masking import Masker
from shipper.sinks.webhook import SIGNATURE_HEADER, signature_ok
from shipper.sources import http_log
from shipper.sources.http_limits import crowded_json, too_many_records
from shipper.sources.http_server import HTTPReceiver, RequestHandler, Route
from shipper.sources.spool import Spool

log = logging.getLogger("kong-ship")

KIND = "event_hook"
NAME = "event-hooks"  # their requests' and records' label in the metrics


def deliver_event_hooks(handler: RequestHandler) -> None:
    receiver = handler.server.receiver
    assert isinstance(receiver, Receiver)
    if not receiver.hooks:
        receiver.warn_auth("receive: refused an event-hook delivery from %s: event hooks are not configured "
                           "(no secret, no --allow-unsigned)", handler.client_address[0])
        return handler.refuse_unread(401, "event hooks are not configured on this receiver")
    body = handler.body()
    if body is None:
        return
    if receiver.secret is not None:
        signature = handler.headers.get(SIGNATURE_HEADER)
        if not signature:
            receiver.warn_auth("receive: refused a delivery from %s: no %s header", handler.client_address[0],
                               SIGNATURE_HEADER)
            return handler.refuse(401, f"missing {SIGNATURE_HEADER}")
        if not signature_ok(receiver.secret, body, signature):
            receiver.warn_auth("receive: refused a delivery from %s: bad %s (check the secret)",
                               handler.client_address[0], SIGNATURE_HEADER)
            return handler.refuse(401, f"bad {SIGNATURE_HEADER}")
    if (crowded := crowded_json(body, receiver.max_body_bytes)) is not None:
        return handler.refuse(413, crowded)
    if not http_log.hold_parsing(handler, body):
        return
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return handler.refuse(400, "the body is not JSON")
    if isinstance(parsed, dict):
        events = [parsed]
    elif isinstance(parsed, list) and parsed and all(isinstance(e, dict) for e in parsed):
        events = parsed
    else:
        return handler.refuse(400, "expected a JSON object (an event) or a non-empty array of objects")
    if (refusal := too_many_records(len(events), receiver.max_body_bytes)) is not None:
        return handler.refuse(413, refusal)
    try:
        orjson.dumps(events)  # parsed (orjson reads 1024 levels) but perhaps too deep to write (254)
    except orjson.JSONEncodeError:
        return handler.refuse(400, "the body is nested too deep")
    # The spool is state on disk: the receiver's encoder masks each event as it is stored (`Receiver`), so it
    # keeps events as they will ship, never as Kong sent them. The signature was checked above, over the bytes
    # received.
    handler.spool(KIND, events, len(body))


class Receiver(HTTPReceiver):
    """Event hooks at any path (`hooks`: a secret is configured or unsigned deliveries allowed; `secret`: the
    one to check), Kong's http-log at `/http-log` (`http_log_auth`). Event hooks are spooled masked with
    `masker`: the run's, with the user's `--mask-*` names (the default names without one)."""

    def __init__(
        self,
        host: str,
        port: int,
        spool: Spool,
        *,
        secret: bytes | None,
        hooks: bool = True,
        http_log_auth: http_log.Auth | None = None,
        masker: Masker | None = None,
        **kw: Any,
    ):
        super().__init__(host, port, spool, **kw)
        self.committer.encoders[KIND] = spool_encoder(masker or Masker())
        self.secret = secret
        self.hooks = hooks
        self.http_log_auth = http_log_auth or http_log.Auth(None, allow_unauthenticated=False)

    @property
    def events_accepted(self) -> int:
        return self.records_accepted.get(KIND, 0)

    def route(self, path: str, method: str) -> Route:
        if path == http_log.PATH:
            return http_log.deliver if method in http_log.METHODS else self.not_allowed(path)
        return deliver_event_hooks if method == "POST" else self.not_allowed(path)

    def allowed(self, path: str) -> str:
        return ", ".join(http_log.METHODS) if path == http_log.PATH else "POST"

    def delivery(self, path: str) -> str:
        return http_log.NAME if path == http_log.PATH else NAME
