"""Who made the call. A processor that fills `user_id` / `anonymous_id` on a Transaction.

Order of evidence (the first that yields a value wins): a JWT found at one of the configured places (decoded
without verification, as kong-segment-log did; `REDACTED` means no token), the Kong consumer (custom_id,
username, id), the authenticated credential, the user name of an HTTP Basic `Authorization` header, then the
`x-consumer-*` headers Kong's auth plugins add. With none, a stable anonymous id from the client IP and user
agent. An id Kong logged as an object (`{"uuid": "…"}`, Kong 1.x/2.x) counts by the id inside it, never by its
repr.

This runs before masking, so it is the one place that sees `Authorization` in clear: it keeps the Basic user
name (`basic_user`), never the password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

from shipper.model import Transaction
from shipper.processors.jwt_payload import unverified_claims

DEFAULT_JWT_PLACES = ("request.headers.authorization", "jwt")
IDENTIFIED = frozenset({"jwt", "consumer", "credential", "basic", "header"})  # the user_source values set here
_CONSUMER_HEADERS = ("x-consumer-custom-id", "x-consumer-username", "x-consumer-id", "x-credential-identifier")
_BASIC_FIRST = frozenset("bB")
_NO_TOKEN: tuple[None, None] = (None, None)
_SEEN_MAX = 8192  # JWT-place values remembered per processor; beyond that, work is redone, not wrong
# ... and their characters, with their claims: any client can send a distinct token a request, as large as a
# header may be (8 KiB behind nginx), and 8,192 of them held 178-282 MiB in each process that identifies.
_SEEN_CHARS = 1 << 20
# Tokens longer than this are decoded without decode_jwt's cache (which then holds at most 256 x 4 KiB, and claims).
_CACHED_TOKEN_CHARS = 4096


@lru_cache(maxsize=256)
def decode_jwt(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified; None when it is not a well-formed token or its payload could not be
    sent on (a 30-digit integer claim, nesting past 254 levels). Cached: the same few tokens
    come back on thousands of lines."""
    try:
        claims = unverified_claims(token)
    except (ValueError, TypeError, RecursionError):
        return None
    try:
        # Python's JSON keeps integers of any size and any depth; a sink cannot send those (orjson stops at 64
        # bits and 254 levels), so such a payload is as unusable as a malformed one. Once per distinct token.
        orjson.dumps(claims)
    except orjson.JSONEncodeError:
        return None
    return claims


def _lookup(record: dict[str, Any], dotted: Sequence[str]) -> Any:
    node: Any = record
    for part in dotted:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _place(dotted: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    return dotted, dotted[2] if len(dotted) == 3 and dotted[:2] == ("request", "headers") else None


def _token(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    if not value or value == "REDACTED" or value.count(".") != 2:
        return None
    return value


def _claim(claims: dict[str, Any], dotted: Sequence[str]) -> str | None:
    value = _lookup(claims, dotted)
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    return text or None


def _ident(value: Any) -> str | None:
    """An id or name as a string: a non-empty string, a number, or the `uuid`/`id` string inside an object."""
    kind = type(value)
    if kind is str:
        return value or None
    if kind is int or kind is float:
        return str(value)
    if kind is dict:
        inner = value.get("uuid") or value.get("id")
        return inner if type(inner) is str and inner else None
    return None


def basic_user(value: Any) -> str | None:
    """The user name of `Basic base64(user:password)`; None for anything else or anything malformed (bad
    base64, no colon, an empty name), and when the password is empty (the name is then a key). Kong 2.1+ logs `REDACTED`, so this sees old Kong, Nginx and custom
    fields only."""
    if type(value) is list:  # a repeated header: the first of its values that is one (as for a token)
        return next((name for item in value if type(item) is str and (name := basic_user(item))), None)
    if type(value) is not str or value[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    # An empty password: the user name is the credential itself (Stripe's `sk_live_…:`, Segment's write key, a
    # key sent with `curl -u KEY:`), no name to identify anyone by.
    if not colon or not user or not password:
        return None
    # RFC 7617: UTF-8 is what clients send today; bytes that are not are Latin-1 (the old default).
    try:
        return user.decode("utf-8")
    except UnicodeDecodeError:
        return user.decode("latin-1")


def anonymous_id(client_ip: str, user_agent: str) -> str:
    digest = hashlib.blake2b(f"{client_ip}|{user_agent}".encode("utf-8", "replace"), digest_size=10).hexdigest()
    return f"anon-{digest}"


class Identify:
    """The identity processor, configured once (the JWT places and claim split into paths); its repr is what
    `check-config` shows of it."""

    __slots__ = ("jwt_places", "jwt_claim", "_places", "_claim_path", "_seen", "_seen_chars")

    def __init__(self, jwt_places: Sequence[str] = DEFAULT_JWT_PLACES, jwt_claim: str = "sub"):
        self.jwt_places = tuple(jwt_places)
        self.jwt_claim = jwt_claim
        # (the path in the record, the header to try for Nginx lines when the path finds nothing)
        self._places = [_place(tuple(p.split("."))) for p in jwt_places]
        self._claim_path = tuple(jwt_claim.split("."))
        self._seen: dict[str, tuple[dict[str, Any] | None, str | None]] = {}  # a place's text -> (claims, user)
        self._seen_chars = 0  # the characters of the texts in _seen

    def __repr__(self) -> str:
        return f"Identify(jwt_from={list(self.jwt_places)!r}, jwt_claim={self.jwt_claim!r})"

    def __call__(self, txn: Transaction) -> Transaction:
        if txn.user_source in IDENTIFIED and txn.user_id:
            return txn  # identified before its secrets were masked (receive's Kong records: formats.spooled)
        basic, claims, user, source = self.who(txn.raw or {}, txn.request_headers, txn.consumer, txn.authenticated_entity)
        txn.basic_user = basic
        if claims is not None:
            txn.jwt_claims = claims
        if user:
            txn.user_id, txn.user_source = user, source
            return txn
        txn.anonymous_id = anonymous_id(txn.client_ip, txn.user_agent)
        return txn

    def who(
        self, raw: dict[str, Any], headers: dict[str, Any], consumer: dict[str, Any] | None,
        credential: dict[str, Any] | None,
    ) -> tuple[str | None, dict[str, Any] | None, str | None, str | None]:
        """(Basic user, the last JWT claims decoded, user id, its source) of a record's parts: what the
        processor fills in, for a sink's flat path too (issue 16), so both read the evidence one way."""
        authorization = headers.get("authorization")
        # Kong 2.1+ logs `REDACTED`: only a value starting with a b can be `Basic …`.
        basic = (
            basic_user(authorization)
            if authorization is not None and (type(authorization) is not str or authorization[:1] in _BASIC_FIRST)
            else None
        )
        found = None
        seen = self._seen
        for dotted, header in self._places:
            # `request.headers.authorization` must also work for Nginx lines, whose headers are not nested.
            if header is not None:  # `request.headers.<name>`: _lookup's three steps, inline
                value = raw.get("request") if isinstance(raw, dict) else None
                value = value.get("headers") if isinstance(value, dict) else None
                value = value.get(header) if isinstance(value, dict) else None
                if value is None:
                    value = headers.get(header)
            else:
                value = raw.get(dotted[0]) if len(dotted) == 1 and type(raw) is dict else _lookup(raw, dotted)
            if type(value) is str:
                # The same few values (tokens, `REDACTED`) come on thousands of lines: each is read once, and
                # only an identical value gets its reading (claims and user) back.
                reading = seen.get(value)
                if reading is None:
                    if len(seen) >= _SEEN_MAX or self._seen_chars >= _SEEN_CHARS:
                        seen.clear()
                        self._seen_chars = 0
                    reading = seen[value] = self._read(value)
                    self._seen_chars += len(value)
                claims, user = reading
            elif value is None:
                continue
            else:
                claims, user = self._read(value)
            if claims is None:
                continue
            found = claims
            if user:
                return basic, found, user, "jwt"
        if consumer:
            user = _ident(consumer.get("custom_id")) or _ident(consumer.get("username")) or _ident(consumer.get("id"))
            if user:
                return basic, found, user, "consumer"
        if credential:
            user = _ident(credential.get("consumer_id")) or _ident(credential.get("id"))
            if user:
                return basic, found, user, "credential"
        if basic:
            return basic, found, basic, "basic"
        for name in _CONSUMER_HEADERS:
            value = headers.get(name)
            if isinstance(value, str) and value:
                return basic, found, value, "header"
        return basic, found, None, None

    def _read(self, value: Any) -> tuple[dict[str, Any] | None, str | None]:
        """(claims, the configured claim) of a JWT place's value; (None, None) when it holds no usable token."""
        if type(value) is list:
            # A repeated header: the first of its texts that holds a token (the first text was taken, and so
            # `["REDACTED", "Bearer <token>"]` or `["Basic …", "Bearer <token>"]` named nobody).
            for item in value:
                if type(item) is str and (reading := self._read(item))[0] is not None:
                    return reading
            return _NO_TOKEN
        token = _token(value)
        if token is None:
            return _NO_TOKEN
        claims = decode_jwt(token) if len(token) <= _CACHED_TOKEN_CHARS else decode_jwt.__wrapped__(token)
        if claims is None:
            return _NO_TOKEN
        return claims, _claim(claims, self._claim_path)



def identify(jwt_places: Sequence[str] = DEFAULT_JWT_PLACES, jwt_claim: str = "sub") -> Identify:
    """The identity processor (a function name kept: the chain and the tests build it this way)."""
    return Identify(jwt_places, jwt_claim)
