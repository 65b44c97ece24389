"""Masks applied before anything leaves the process — to a vendor, stdout, the state directory or our own logs.
One mechanism (`Masker`) and one normalisation of names (`normalize`) for every place a secret can sit.

What is masked (values replaced by `*****`), for every record:
- headers, request and response, whose name is a secret name; the userinfo and secret parameters of URL-valued
  headers (Referer, Location, Content-Location);
- query arguments: in the query object, the query string, the raw path and the upstream URI; and the
  parameters of a `#fragment` (`#access_token=…`, `#/callback?token=…`);
- bodies, by key at any depth: a dict or list, JSON text, form-encoded text (`password=…&x=1`,
  `user[password]=…`), base64 (gzip or not) of either, and JSON text nested in a JSON string. A body whose keys
  cannot be inspected (plain text, binary) is replaced by `{"msg": "body withheld by kong-ship: N bytes, …"}`
  unless `ship_raw_bodies`;
- Kong entities (service, route, consumer, credential) and `details` (audit records, event hooks): secret keys at
  any depth, and the userinfo (`user:password@`) and secret parameters of any URL in them (0.x
  `api.upstream_url`);
- JWT claims: only the registered ones (`iss sub aud exp nbf iat jti`) and `sid` are kept: private claims are
  the token owner's data and may be secrets;
- dead letters, our own log lines and error messages: `redact.mask_line` and `redact.mask_text`.

The names: one set of secret names serves every place (the defaults plus `--mask-header`, `--mask-query`,
`--mask-body-key`: a name that carries a secret in a header carries one in a body too), compared in one normal
form (`names.normalize`: case-folded, percent-decoded until stable, `-` as `_`; see `names`).

Speed: masking runs for every line at ~30k lines/s, and most records carry no secret. Header and query names
repeat from record to record, so each name is classified once and remembered (`names.NameSet`, bounded); a
record's names are then checked with set operations done in C, and a string is only taken apart when a cheap
substring test (`=`, `?`, `#`, `@`) says it could hold a parameter; a plain query string whose names were all
seen before is checked, and masked, by patterns of those names in one C call each (`params`). Entities and JWT
claims repeat too: their masked form is remembered (shared between records: sinks only read it).
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterable
from typing import Any

import orjson

from shipper.model import Transaction
from shipper.processors.names import (  # noqa: F401 - DEFAULT_* and normalize are part of this module's API
    DEFAULT_BODY_KEYS,
    DEFAULT_HEADERS,
    DEFAULT_QUERY,
    SECRET_KEYS,
    NameSet,
    normalize,
)
from shipper.processors.params import MASK, ParamMasks, mask_jwts

JWT_KEPT_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid"})
URL_HEADERS = frozenset({"referer", "location", "content_location"})  # masked as URLs, normalized names
# Kong's transformer plugins take headers, query arguments and body fields as lists of "name:value" texts
# (`config.add.headers = ["x-api-key:…"]`): a credential for the upstream under a secret name.
PAIR_LISTS = frozenset({"headers", "querystring", "body"})
BODY_FIELDS = frozenset({"body", "request_body", "response_body"})  # keys whose value is a body (dead letters)
# The keys of a transaction's `details` that hold a body, by kind (`mask_value`'s `bodies` at the top level): an
# Admin API request's `payload` (Kong's audit record) is the request body, masked as one (JSON and form by key,
# base64 looked into, anything else withheld unless --ship-raw-bodies): a multipart upload of a certificate's
# private key is neither JSON nor a form.
DETAIL_BODIES: dict[str, frozenset[str]] = {"admin_request": BODY_FIELDS | {"payload"}}
WITHHELD = "body withheld by kong-ship: {size} bytes, neither JSON nor form-encoded (--ship-raw-bodies sends it)"
_MAX_DEPTH = 64
_CACHE_MAX = 4096  # entities and JWT claims remembered; beyond that, work is redone, not wrong
_CLAIMS_BYTES = 1 << 20  # ... and the JWT claims remembered weigh at most this, as JSON
_MAX_INFLATE = 10 << 20  # a gzip body is inspected up to this size; larger ones are withheld

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_BRACKETED = re.compile(r"<([^<>]*)>")  # the URLs of a `Link` header
# A GraphQL argument or input field (`password: "…"`, `token: $t` is a variable and left: its value is masked by
# name in `variables`), its name, and its value: a string (block strings too) or a bare literal.
_ARGUMENT = re.compile(r'((?<![\w$])([A-Za-z_]\w*)\s*:\s*)(?:"""(?:[^"\\]|\\.|"(?!""))*(?:"""|$)|"(?:[^"\\]|\\.)*"?|[^\s,(){}\[\]$"][^\s,(){}\[\]]*)')
_NOT_JSON = object()


class Masker(ParamMasks):
    """The masks, configured once: call it on a Transaction (the processor), or use its parts on anything
    (the parameter masks, `mask_query` `mask_params` `mask_targets` `mask_url`, are in `params.ParamMasks`)."""

    def __init__(self, extra_names: Iterable[str] = (), ship_raw_bodies: bool = False):
        super().__init__()
        self.secrets = SECRET_KEYS | frozenset(normalize(n) for n in extra_names)
        self.names = NameSet(self.secrets)
        self.header_names = NameSet(self.secrets | URL_HEADERS)
        self.ship_raw_bodies = ship_raw_bodies
        self.entities: dict[str, tuple[Any, dict[str, Any]]] = {}  # id -> (version, masked): read by the flat paths too
        self._claims: dict[int, tuple[Any, Any]] = {}  # id(claims) -> (claims, their kept part)
        self._claims_bytes = 0  # what the remembered claims weigh as JSON: bounded too (_CLAIMS_BYTES)
        self._extra = tuple(sorted(frozenset(normalize(n) for n in extra_names)))

    def __repr__(self) -> str:
        # Names only (never values): what check-config shows of the masks beyond the default secret names.
        return f"Masker(extra={list(self._extra)!r}, ship_raw_bodies={self.ship_raw_bodies})"

    # -- the processor -------------------------------------------------------------------------------------
    def __call__(self, txn: Transaction) -> Transaction:
        # Written for the common case, a record with no secret: set operations against names seen clean before
        # and substring tests; the helpers that copy and mask run only where there may be something to mask.
        txn.request_headers = self.mask_headers(txn.request_headers)
        txn.response_headers = self.mask_headers(txn.response_headers)
        if txn.query and not self.query_is_clean(txn.query):
            txn.query = self.mask_query(txn.query)
        if txn.fragment:
            txn.fragment = self.mask_params(txn.fragment)
        txn.query_string, txn.raw_path, txn.upstream_uri = self.mask_targets(txn.query_string, txn.raw_path, txn.upstream_uri)
        if ";" in txn.path:  # `/x;token=…/y`: the path's own parameters, as in the raw path
            txn.path = self.mask_target(txn.path)
        if "@" in txn.host:
            txn.host = txn.host.rpartition("@")[2]
        if txn.request_body is not None:
            txn.request_body = self.mask_body(txn.request_body)
        if txn.response_body is not None:
            txn.response_body = self.mask_body(txn.response_body)
        if txn.service:
            txn.service = self.mask_entity(txn.service)
        if txn.route:
            txn.route = self.mask_entity(txn.route)
        if txn.consumer:
            txn.consumer = self.mask_entity(txn.consumer)
        if txn.authenticated_entity:
            txn.authenticated_entity = self.mask_entity(txn.authenticated_entity)
        txn.jwt_claims = self.kept_claims(txn.jwt_claims)
        if txn.details:
            txn.details = self.mask_value(txn.details, bodies=DETAIL_BODIES.get(txn.kind, BODY_FIELDS))
        return txn

    def kept_claims(self, claims: dict[str, Any] | None) -> dict[str, Any] | None:
        """The JWT claims that may leave the process (JWT_KEPT_CLAIMS, each a number, a text, a boolean or null,
        `aud` also a list of texts: an object or list under a registered name may hold anything), `claims` itself
        when that is all."""
        if not claims:
            return claims
        # identify decodes each token once (a cache): the same claims object comes again and again. A token it
        # does not remember (a large one) brings new claims each time: what is remembered is bounded by weight
        # as well as number, or distinct large tokens would each be held here.
        cached = self._claims.get(id(claims))
        if cached is None or cached[0] is not claims:
            kept = {k: v for k, v in claims.items() if k in JWT_KEPT_CLAIMS and _plain_claim(k, v)}
            # A kept claim's text is masked as any text is (`iss` with a password in its URL).
            kept = self.mask_value(kept)
            answer = claims if len(kept) == len(claims) and all(kept[k] is v for k, v in claims.items()) else kept
            try:
                weight = len(orjson.dumps(claims))
            except orjson.JSONEncodeError:
                return answer
            if len(self._claims) >= _CACHE_MAX or self._claims_bytes + weight > _CLAIMS_BYTES:
                self._claims.clear()
                self._claims_bytes = 0
            if weight <= _CLAIMS_BYTES // 16:
                self._claims[id(claims)] = (claims, answer)
                self._claims_bytes += weight
            return answer
        return cached[1]

    # -- the parts -----------------------------------------------------------------------------------------
    def mask_headers(self, headers: dict[str, Any]) -> dict[str, Any]:
        if not headers:
            return headers
        # One classification for both kinds of header worth a look: secrets, and URLs (Referer, Location).
        names = self.header_names
        keys = headers.keys()
        hits = keys & names.hit if keys <= names.known else names.secrets_in(keys)
        masked = self._mask_header_values(headers, hits) if hits else headers
        # Under any other name: a JSON Web Token (`X-Goog-Iap-Jwt-Assertion`), a URL or target with a query or
        # userinfo (`X-Forwarded-Uri: /x?token=…` from a proxy in front of Kong, `Link: <…?api_key=…>; rel="next"`),
        # userinfo in Host. Most records have none: the values (secret ones masked by now) are looked at in one C
        # call first.
        try:
            text = "\n".join(masked.values())
        except TypeError:  # a repeated header's list
            pass
        else:
            if "eyJ" not in text and "@" not in text and not ("=" in text and ("?" in text or "#" in text)):
                return masked
        host = masked.get("host")
        if type(host) is str and "@" in host:  # `Host: user:password@api…` from a hostile or broken client
            masked = dict(masked) if masked is headers else masked
            masked["host"] = host.rpartition("@")[2]
        for k, value in masked.items():
            if k in hits:
                continue
            if type(value) is str:
                new: Any = self._mask_header_text(value)
            elif type(value) is list:
                items = [self._mask_header_text(v) if type(v) is str else v for v in value]
                new = value if all(a is b for a, b in zip(items, value)) else items
            else:
                continue
            if new is not value:
                masked = dict(masked) if masked is headers else masked
                masked[k] = new
        return masked

    def _mask_header_text(self, value: str) -> str:
        if "eyJ" in value:
            value = mask_jwts(value)
        if ("=" in value and ("?" in value or "#" in value)) or ("@" in value and "://" in value):
            if "<" in value:  # `Link: <url>; rel="next"`: each URL between its brackets
                masked = _BRACKETED.sub(lambda m: "<" + self.mask_url(m.group(1)) + ">", value)
                return value if masked == value else masked
            return self.mask_url(value)
        return value

    def _mask_header_values(self, headers: dict[str, Any], hits: Any) -> dict[str, Any]:
        masked = dict(headers)
        secret = self.names.hit
        for k in hits:
            value = masked[k]
            if k in secret or self.names.is_secret(k):
                masked[k] = [MASK] * len(value) if type(value) is list else MASK
            elif type(value) is str:
                masked[k] = self.mask_url(value)
        return masked

    def mask_body(self, body: Any, depth: int = 0) -> Any:
        """A body by key, in the form it came in (dict, list, JSON text, form text, base64) when nothing is
        secret; masked JSON/form text when something was; a placeholder when its keys cannot be inspected.
        `depth`: the nesting around it (a `body` inside a body's value is not a fresh start: `{"body":{"body":...`
        500 deep would recurse until Python's limit)."""
        if isinstance(body, (dict, list)):
            return self.mask_value(body, depth)
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        if not isinstance(body, str):
            return body  # a number or a boolean holds no key
        masked = self._text_body(body, True, depth)
        if masked is None:
            if self.ship_raw_bodies:
                return body
            return {"msg": WITHHELD.format(size=len(body.encode("utf-8", "replace")))}
        return masked

    def _text_body(self, text: str, decode_base64: bool, depth: int = 0) -> Any:
        """`text` masked (itself when nothing is secret), or None when its keys cannot be inspected."""
        stripped = text.strip()
        if not stripped:
            return text
        try:
            value = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            value = _NOT_JSON
        if value is not _NOT_JSON:
            masked = self.mask_value(value, depth + 1)
            return text if masked is value else orjson.dumps(masked).decode()
        if decode_base64 and len(stripped) % 4 == 0 and _BASE64.fullmatch(stripped):
            # Base64 before form: `cGFzc3dvcmQ9eA==` would pass for a form with one odd name.
            inner = _decode_base64(stripped)
            if inner is None:
                return None
            masked = self._text_body(inner, False, depth)
            return text if masked is inner else masked
        if "=" in stripped and not any(c.isspace() for c in stripped):
            return self.mask_params(text)
        return None

    def mask_value(self, value: Any, depth: int = 0, bodies: frozenset[str] = BODY_FIELDS) -> Any:
        """A dict/list/string with the values of secret keys masked at any depth, strings holding parameters
        or URLs masked, and bodies (`body` keys) masked as bodies. The input is never changed: an unchanged
        part is returned as it is, a changed one is copied. `bodies`: the keys of `value` itself that hold a body
        (DETAIL_BODIES: an audit request's `payload`); deeper, `body` keys."""
        if depth > _MAX_DEPTH:
            return MASK  # a pathological nesting is not worth the recursion
        kind = type(value)
        if kind is str:
            return self._mask_string(value, depth)
        if kind is dict:
            hits = self.names.secrets_in(value.keys())
            out = None
            for k, v in value.items():
                new: Any
                if k in hits:
                    new = v if v is None else MASK
                elif k in PAIR_LISTS and type(v) is list:
                    new = self._mask_pairs(v, depth + 1)
                elif k in bodies and v is not None:
                    new = self.mask_body(v, depth + 1)
                elif k == "host" and type(v) is str and "@" in v:  # a Host header with userinfo, as mask_headers
                    new = v.rpartition("@")[2]
                else:
                    new = self.mask_value(v, depth + 1)
                if new is not v:
                    if out is None:
                        out = dict(value)
                    out[k] = new
            return value if out is None else out
        if kind is list:
            out_list = None
            for i, v in enumerate(value):
                new = self.mask_value(v, depth + 1)
                if new is not v:
                    if out_list is None:
                        out_list = list(value)
                    out_list[i] = new
            return value if out_list is None else out_list
        return value

    def _mask_pairs(self, items: list[Any], depth: int) -> list[Any]:
        """A list under a PAIR_LISTS key: its "name:value" texts with a secret name masked (`x-api-key:*****`),
        the rest as any value."""
        out = None
        for i, item in enumerate(items):
            name, _, rest = item.partition(":") if type(item) is str else ("", "", "")
            if rest and self.names.is_secret(name.strip()):
                new = f"{name}:{MASK}"
            else:
                new = self.mask_value(item, depth)
            if new is not item:
                if out is None:
                    out = list(items)
                out[i] = new
        return items if out is None else out

    def _mask_string(self, text: str, depth: int) -> str:
        if len(text) < 3:
            return text
        first = text[0]
        if first == "{" or first == "[":
            try:
                inner = orjson.loads(text)
            except orjson.JSONDecodeError:
                pass
            else:
                masked = self.mask_value(inner, depth + 1)
                return text if masked is inner else orjson.dumps(masked).decode()
        if "eyJ" in text:  # a JSON Web Token under any name (`{"assertion": "eyJ…"}`)
            text = mask_jwts(text)
        if "(" in text and ":" in text:  # a GraphQL document: `login(email: "a", password: "…")`
            text = self._mask_arguments(text)
        if "=" not in text and "@" not in text and "%" not in text:
            return text
        if "://" in text:
            return self.mask_url(text)
        if "?" in text or "#" in text:
            return self.mask_target(text)
        if "=" in text and not any(c.isspace() for c in text):
            return self.mask_params(text)
        return self.mask_in_value(text)  # `https%3A%2F%2Fapp%2Fcb%23access_token%3Dx`: a target encoded

    def _mask_arguments(self, text: str) -> str:
        """The values of secret-named arguments and input fields of a GraphQL document (a body's `query` text);
        `text` itself when there are none."""
        is_secret = self.names.is_secret
        masked = _ARGUMENT.sub(lambda m: m.group(1) + '"' + MASK + '"' if is_secret(m.group(2)) else m.group(0), text)
        return text if masked == text else masked

    def mask_entity(self, entity: dict[str, Any]) -> dict[str, Any]:
        # Kong logs the same few services and routes on every line: each is masked once per id and version.
        # A record with a known id and version but other content gets the masked copy made first: possibly
        # stale (a 0.x `api` has no `updated_at`), never unmasked.
        ident = entity.get("id")
        if type(ident) is not str:
            return self.mask_value(entity)
        version = entity.get("updated_at") or entity.get("created_at")
        cached = self.entities.get(ident)
        if cached is not None and cached[0] == version:
            return cached[1]
        masked = self.mask_value(entity)
        if len(self.entities) >= _CACHE_MAX:
            self.entities.clear()
        self.entities[ident] = (version, masked)
        return masked


def _decode_base64(text: str) -> str | None:
    """The text inside a base64 body (gunzipped if it is gzip), or None for binary."""
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    if raw[:2] == b"\x1f\x8b":
        try:
            inflater = zlib.decompressobj(31)
            raw = inflater.decompress(raw, _MAX_INFLATE)
            if inflater.unconsumed_tail:
                return None
        except zlib.error:
            return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


_default = Masker()


def mask_query_string(query: str, names: Iterable[str] = SECRET_KEYS) -> str:
    """`a=1&token=x` with the parameters named in `names` (and the default secret names) masked."""
    masker = _default if names is SECRET_KEYS else _masker_for(frozenset(names))
    return masker.mask_params(query)


_extra_maskers: dict[frozenset[str], Masker] = {}


def _masker_for(names: frozenset[str]) -> Masker:
    masker = _extra_maskers.get(names)
    if masker is None:
        if len(_extra_maskers) >= 64:
            _extra_maskers.clear()
        masker = _extra_maskers[names] = Masker(names)
    return masker


def mask_secrets(
    header_names: Iterable[str] = (), query_names: Iterable[str] = (), body_keys: Iterable[str] = (),
    ship_raw_bodies: bool = False,
) -> Masker:
    """The masking processor: the default secret names plus these."""
    return Masker((*header_names, *query_names, *body_keys), ship_raw_bodies)


def drop_raw(txn: Transaction) -> Transaction:
    """Last in the chain: the raw record holds everything unmasked (custom fields, tokens), so it must not
    travel further than the processors."""
    txn.raw = None
    return txn


def _plain_claim(name: str, value: Any) -> bool:
    """Whether a registered claim's value has the shape RFC 7519 gives it (`aud`: a text or a list of texts)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return True
    return name == "aud" and kind is list and all(type(item) is str for item in value)
