"""Kong's http-log plugin, received at `/http-log` by `kong-ship receive`.

What Kong sends (kong/plugins/http-log/handler.lua): the `method` configured (POST, PUT or PATCH), with
`Content-Type` its `content_type` (`application/json`, or the same with `; charset=utf-8`) and a Content-Length;
the body is one serializer record when `queue.max_batch_size` is 1 (the default), else a JSON array of them.
It adds the `headers` configured, and `Authorization: Basic …` from userinfo in `http_endpoint` (which a
configured Authorization header does not override). It retries any answer that is not 2xx.

So a request is answered, in order:

- 401 when no token is configured and not `--allow-unauthenticated`, or when the token (`Authorization: Bearer
  TOKEN`, or the password of Basic credentials, any user) is missing or wrong (constant-time comparison);
- 415 when the Content-Type is not `application/json` (a charset, if given, must be UTF-8);
- then the listener's bounds (411, 413, 503: `http_server.RequestHandler.body`);
- 413 when the body holds more JSON objects and arrays, or more records, than a body may (`http_limits.crowded_json`,
  `too_many_records`: one per 32 and per 256 bytes of --max-body-bytes; Kong's batches that fit it stay far
  under both): tiny records would otherwise weigh a hundred times their bytes in memory;
- 503 with Retry-After when the body, denser in small values than Kong's records, cannot take from the reading
  budget what it weighs parsed beyond its length (`hold_parsing`);
- 400 when the body is not JSON, or is an array with an element that is not an object (the whole request is
  refused and nothing of it stored: Kong's serializer only writes objects, so such a body is not Kong's, and a
  partial acceptance would turn the sender's retry into duplicates), or is nested too deep to be stored;
- 200 `{"accepted": N}` once all N records are fsynced in the spool (an empty array: `{"accepted": 0}`).

Records are spooled (kind `kong_log`) identified and masked (`receive` gives the receiver's committer the
run's `intake.KongRecords` as the kind's encoder): the spool never holds Kong's Authorization headers, cookies or
API keys. A record that cannot be masked is dead-lettered, and the others of its request stored. The pipeline
then parses them with the Kong parser, as the lines file-log writes, and ships them as it ships a log file's.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from shipper.sources.http_limits import crowded_json, parsing_charge, too_many_records

if TYPE_CHECKING:
    from shipper.sources.http_server import RequestHandler

KIND = "kong_log"
PATH = "/http-log"
NAME = "http-log"  # its requests' and records' label in the metrics
METHODS = ("POST", "PUT", "PATCH")


@dataclass(frozen=True)
class Auth:
    """`token`: what the sender must present (None: none configured); `allow_unauthenticated`: accept anyone
    (only when no token is configured)."""

    token: bytes | None
    allow_unauthenticated: bool

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.allow_unauthenticated

    def refusal(self, authorization: str | None) -> str | None:
        """Why a request with this Authorization header is refused; None when it is not."""
        if self.token is None:
            return None if self.allow_unauthenticated else "http-log is not configured on this receiver"
        presented = presented_token(authorization or "")
        if presented is None:
            return "missing token (Authorization: Bearer TOKEN, or Basic with TOKEN as the password)"
        # compare_digest over bytes: its time does not depend on where the first difference is.
        if not hmac.compare_digest(presented, self.token):
            return "bad token"
        return None


def presented_token(authorization: str) -> bytes | None:
    """The token of `Bearer TOKEN`, or the password of `Basic base64(user:password)`; None otherwise."""
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    if scheme.lower() == "bearer":
        return credentials.encode()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return None
        user, colon, password = decoded.partition(b":")
        return password if colon else None
    return None


def content_type_refusal(value: str | None) -> str | None:
    media, *params = (value or "").split(";")
    if media.strip().lower() != "application/json":
        return f"Content-Type must be application/json, got {value!r}"
    for param in params:
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"JSON is read as UTF-8, not {charset.strip()!r}"
    return None


def records_of(parsed: Any) -> tuple[list[dict[str, Any]] | None, str]:
    """The records of a parsed body, or None and why not."""
    if isinstance(parsed, dict):
        return [parsed], ""
    if isinstance(parsed, list):
        for i, element in enumerate(parsed):
            if not isinstance(element, dict):
                return None, (f"element {i} of the array is not a JSON object but {type(element).__name__}: "
                              "nothing of this request was stored")
        return parsed, ""
    return None, f"expected a JSON object (a record) or an array of them, got {type(parsed).__name__}"


def hold_parsing(handler: RequestHandler, body: bytes) -> bool:
    """Before parsing a body (http-log's, an event hook's): take the part of the reading budget its JSON weighs
    parsed beyond its length (`http_limits.parsing_charge`), held with the body until the route returns; else
    answer 503 (or close, as for any overload), and False. 16 bodies of tiny values at once weighed 300 MiB,
    where 16 of Kong's weigh ~115 MiB; such bodies now take up to ~3 places each."""
    extra = parsing_charge(body)
    if extra == 0 or handler.held is None:
        return True
    budget, held = handler.held
    if budget.take(extra):
        handler.held = (budget, held + extra)
        return True
    handler.over_budget(budget)
    return False


def deliver(handler: RequestHandler) -> None:
    receiver = handler.server.receiver
    auth: Auth = getattr(receiver, "http_log_auth")  # the route's owner (event_hooks.Receiver) holds it
    refusal = auth.refusal(handler.headers.get("Authorization"))
    if refusal is not None:
        receiver.warn_auth("receive: refused an http-log request from %s: %s", handler.client_address[0], refusal)
        return handler.refuse_unread(401, refusal, headers={"WWW-Authenticate": 'Bearer realm="kong-ship"'})
    refusal = content_type_refusal(handler.headers.get("Content-Type"))
    if refusal is not None:
        return handler.refuse_unread(415, refusal)
    body = handler.body(authenticated=auth.token is not None)  # the token was checked above
    if body is None:
        return
    if (crowded := crowded_json(body, receiver.max_body_bytes)) is not None:
        return handler.refuse(413, crowded)
    if not hold_parsing(handler, body):
        return
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return handler.refuse(400, f"the body is not JSON: {exc}")
    records, why = records_of(parsed)
    if records is None:
        return handler.refuse(400, why)
    if (refusal := too_many_records(len(records), receiver.max_body_bytes)) is not None:
        return handler.refuse(413, refusal)
    if not records:
        receiver.count(200, handler.delivery)
        return handler.reply(200, {"accepted": 0})
    handler.spool(KIND, records, len(body))
