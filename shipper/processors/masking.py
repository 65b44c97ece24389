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
- dead letters and our own log lines: `mask_line` and `mask_text` (below).

The normalisation: percent-decoded until stable (`%6Bey`, `api%255Fkey`), `+` as a space, case-folded, `-` as
`_`; `user[password]` matches on `password`, and Nginx's `http_` / `sent_http_` prefixes are ignored. So
`X-Api-Key`, `x_api_key`, `http_X_API_KEY` and `x%2Dapi%2Dkey` are one name. One set of secret names serves
every place (the defaults plus `--mask-header`, `--mask-query`, `--mask-body-key`): a name that carries a
secret in a header carries one in a body too.

Speed: masking runs for every line at ~30k lines/s, and most records carry no secret. Header and query names
repeat from record to record, so each name is classified once and remembered (`_Names`, bounded); a record's
names are then checked with set operations done in C, and a string is only taken apart when a cheap
substring test (`=`, `?`, `#`, `@`) says it could hold a parameter. Entities repeat too: their masked form is
remembered (`mask_entity`; the masked dict is shared between records: sinks only read it).
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

import orjson

from shipper.model import Transaction

MASK = "*****"
DEFAULT_HEADERS = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "apikey", "api-key", "x-api-key",
    "x-auth-token", "x-access-token",
)  # fmt: skip
DEFAULT_QUERY = ("apikey", "api_key", "key", "token", "access_token")
DEFAULT_BODY_KEYS = (
    "password", "passwd", "pwd", "secret", "client_secret", "token", "access_token", "refresh_token", "id_token",
    "auth_token", "api_key", "apikey", "jwt", "private_key", "jwk", "authorization", "cookie", "set-cookie",
)  # fmt: skip


def normalize(name: str) -> str:
    """The one form names are compared in: percent-decoded until stable, case-folded, `-` as `_`."""
    if "%" in name or "+" in name:
        for _ in range(4):  # `api%25255Fkey` is three decodings deep; nobody encodes deeper by accident
            decoded = unquote_plus(name)
            if decoded == name:
                break
            name = decoded
    return name.strip().casefold().replace("-", "_")


# The one set of secret names, normalized: `key`, `secret`, `password` and the rest are secrets wherever they
# appear (Kong entities in audit records and event hooks use it too).
SECRET_KEYS = frozenset(normalize(n) for n in (*DEFAULT_HEADERS, *DEFAULT_QUERY, *DEFAULT_BODY_KEYS))
JWT_KEPT_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid"})
URL_HEADERS = ("referer", "location", "content-location")
_URL_HEADERS = frozenset(URL_HEADERS)
BODY_FIELDS = frozenset({"body", "request_body", "response_body"})  # keys whose value is a body (dead letters)
WITHHELD = "body withheld by kong-ship: {size} bytes, neither JSON nor form-encoded (--ship-raw-bodies sends it)"
_MAX_DEPTH = 64
_CACHE_MAX = 4096  # names remembered per verdict, entities remembered; beyond that, work is redone, not wrong
_MAX_INFLATE = 10 << 20  # a gzip body is inspected up to this size; larger ones are withheld

_PARAM_KEYS = re.compile(r"(?:^|[&;?])([^&;=?]*)=")  # the names of `a=1&b=2`, `/cb?token=x` (after the `?`)
_SEPARATORS = re.compile(r"([&;])")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s\"'<>]+@")
_NOT_JSON = object()


def _is_secret(name: Any, secrets: frozenset[str]) -> bool:
    if not isinstance(name, str) or not name:
        return False
    norm = normalize(name)
    if norm in secrets:
        return True
    for prefix in ("http_", "sent_http_"):  # Nginx variables: `http_x_api_key` is the header `X-Api-Key`
        if norm.startswith(prefix) and norm[len(prefix) :] in secrets:
            return True
    if "[" in norm:  # `user[password]`, `a[b][token]`
        return any(part in secrets for part in re.split(r"[\[\]]+", norm) if part)
    return False


class _Names:
    """Which names are secret, remembered: after the first records, a record's names are checked against the
    ones already classified with set operations done in C, and only a new name is normalized."""

    __slots__ = ("secrets", "clean", "hit", "known")

    def __init__(self, secrets: frozenset[str]):
        self.secrets = secrets
        self.clean: set[Any] = set()
        self.hit: set[Any] = set()
        self.known: set[Any] = set()  # clean | hit

    def is_secret(self, name: Any) -> bool:
        if name in self.hit:
            return True
        if name in self.clean:
            return False
        found = _is_secret(name, self.secrets)
        if len(self.known) < _CACHE_MAX:
            (self.hit if found else self.clean).add(name)
            self.known.add(name)
        return found

    def secrets_in(self, keys: Any) -> set[Any] | frozenset[Any]:
        """The secret names among `keys` (a dict's keys or a set)."""
        if keys <= self.known:  # the usual case: every name was seen before
            return keys & self.hit
        return {k for k in keys if self.is_secret(k)}


class Masker:
    """The masks, configured once: call it on a Transaction (the processor), or use its parts on anything."""

    def __init__(self, extra_names: Iterable[str] = (), ship_raw_bodies: bool = False):
        self.secrets = SECRET_KEYS | frozenset(normalize(n) for n in extra_names)
        self.names = _Names(self.secrets)
        self.ship_raw_bodies = ship_raw_bodies
        self._entities: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    # -- the processor -------------------------------------------------------------------------------------
    def __call__(self, txn: Transaction) -> Transaction:
        txn.request_headers = self.mask_headers(txn.request_headers)
        txn.response_headers = self.mask_headers(txn.response_headers)
        query = txn.query
        if query:
            hits = self.names.secrets_in(query.keys())
            if hits:
                txn.query = {k: (MASK if k in hits else v) for k, v in query.items()}
        qs = txn.query_string
        masked_qs = self.mask_params(qs) if qs else qs
        txn.query_string = masked_qs
        if txn.fragment:
            txn.fragment = self.mask_params(txn.fragment)
        txn.raw_path = self._with_query(txn.raw_path, qs, masked_qs)
        if txn.upstream_uri:
            txn.upstream_uri = self._with_query(txn.upstream_uri, qs, masked_qs)
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
        claims = txn.jwt_claims
        if claims and not claims.keys() <= JWT_KEPT_CLAIMS:
            txn.jwt_claims = {k: v for k, v in claims.items() if k in JWT_KEPT_CLAIMS}
        if txn.details:
            txn.details = self.mask_value(txn.details)
        return txn

    def _with_query(self, target: str, qs: str, masked_qs: str) -> str:
        # The raw path and the upstream URI usually carry the very query string just masked: reuse it.
        if "#" in target or "@" in target:
            return self.mask_url(target, (qs, masked_qs))
        mark = target.find("?")
        if mark < 0:
            return target
        query = target[mark + 1 :]
        if query == qs:
            return target if masked_qs is qs else target[: mark + 1] + masked_qs
        masked = self.mask_params(query)
        return target if masked is query else target[: mark + 1] + masked

    # -- the parts -----------------------------------------------------------------------------------------
    def mask_headers(self, headers: dict[str, Any]) -> dict[str, Any]:
        if not headers:
            return headers
        hits = self.names.secrets_in(headers.keys())
        masked = dict(headers) if hits else headers
        for k in hits:
            value = masked[k]
            masked[k] = [MASK] * len(value) if isinstance(value, list) else MASK
        if _URL_HEADERS.isdisjoint(headers):
            return masked
        for name in URL_HEADERS:
            value = headers.get(name)
            if type(value) is str and ("?" in value or "#" in value or "@" in value):
                url = self.mask_url(value)
                if url is not value:
                    if masked is headers:
                        masked = dict(headers)
                    masked[name] = url
        return masked

    def mask_params(self, text: str) -> str:
        """`a=1&token=x` → `a=1&token=*****` (also `;` separators, and a name after a `?`)."""
        if "=" not in text:
            return text
        names = self.names
        if names.clean.issuperset(_PARAM_KEYS.findall(text)):
            return text
        parts = _SEPARATORS.split(text)
        changed = False
        for i in range(0, len(parts), 2):
            key, eq, value = parts[i].partition("=")
            if not eq:
                continue
            if names.is_secret(key.rpartition("?")[2]):
                parts[i] = f"{key}={MASK}"
                changed = True
            elif "?" in value or "#" in value:  # a URL as a value: `next=/cb?token=x`
                inner = self.mask_target(value)
                if inner is not value:
                    parts[i] = f"{key}={inner}"
                    changed = True
        return "".join(parts) if changed else text

    def mask_target(self, target: str, known: tuple[str, str] | None = None) -> str:
        """A path with `?query` and `#fragment`: both masked. `known` is a (query, masked query) already done."""
        if "?" not in target and "#" not in target:
            return target
        rest, hash_, fragment = target.partition("#")
        base, mark, query = rest.partition("?")
        if known is not None and query == known[0]:
            masked_query = known[1]
        else:
            masked_query = self.mask_params(query) if query else query
        masked_fragment = self.mask_params(fragment) if fragment else fragment
        if masked_query is query and masked_fragment is fragment:
            return target
        return base + mark + masked_query + hash_ + masked_fragment

    def mask_url(self, url: str, known: tuple[str, str] | None = None) -> str:
        """A URL (or text holding URLs): userinfo masked, and the parameters of its query and fragment."""
        if "@" in url and "://" in url:
            url = _USERINFO.sub(rf"\1{MASK}@", url)
        return self.mask_target(url, known)

    def mask_body(self, body: Any) -> Any:
        """A body by key, in the form it came in (dict, list, JSON text, form text, base64) when nothing is
        secret; masked JSON/form text when something was; a placeholder when its keys cannot be inspected."""
        if isinstance(body, (dict, list)):
            return self.mask_value(body)
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        if not isinstance(body, str):
            return body  # a number or a boolean holds no key
        masked = self._text_body(body, decode_base64=True)
        if masked is None:
            return body if self.ship_raw_bodies else {"msg": WITHHELD.format(size=len(body.encode("utf-8", "replace")))}
        return masked

    def _text_body(self, text: str, decode_base64: bool) -> Any:
        """`text` masked (itself when nothing is secret), or None when its keys cannot be inspected."""
        stripped = text.strip()
        if not stripped:
            return text
        try:
            value = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            value = _NOT_JSON
        if value is not _NOT_JSON:
            masked = self.mask_value(value)
            return text if masked is value else orjson.dumps(masked).decode()
        if decode_base64 and len(stripped) % 4 == 0 and _BASE64.fullmatch(stripped):
            # Base64 before form: `cGFzc3dvcmQ9eA==` would pass for a form with one odd name.
            inner = _decode_base64(stripped)
            if inner is None:
                return None
            masked = self._text_body(inner, decode_base64=False)
            return text if masked is inner else masked
        if "=" in stripped and not any(c.isspace() for c in stripped):
            return self.mask_params(text)
        return None

    def mask_value(self, value: Any, depth: int = 0) -> Any:
        """A dict/list/string with the values of secret keys masked at any depth, strings holding parameters
        or URLs masked, and bodies (`body` keys) masked as bodies. The input is never changed: an unchanged
        part is returned as it is, a changed one is copied."""
        if depth > _MAX_DEPTH:
            return MASK  # a pathological nesting is not worth the recursion
        kind = type(value)
        if kind is str:
            return self._mask_string(value, depth)
        if kind is dict:
            hits = self.names.secrets_in(value.keys())
            out = None
            for k, v in value.items():
                if k in hits:
                    new = v if v is None else MASK
                elif k in BODY_FIELDS and v is not None:
                    new = self.mask_body(v)
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
        if "=" not in text and "@" not in text:
            return text
        if "://" in text:
            return self.mask_url(text)
        if "?" in text or "#" in text:
            return self.mask_target(text)
        if "=" in text and not any(c.isspace() for c in text):
            return self.mask_params(text)
        return text

    def mask_entity(self, entity: dict[str, Any]) -> dict[str, Any]:
        # Kong logs the same few services and routes on every line: their masked form is remembered by id,
        # and used only when the entity is still equal to the one it was made from (a C-level comparison).
        ident = entity.get("id")
        if type(ident) is not str:
            return self.mask_value(entity)
        cached = self._entities.get(ident)
        if cached is not None and cached[0] == entity:
            return cached[1]
        masked = self.mask_value(entity)
        if len(self._entities) >= _CACHE_MAX:
            self._entities.clear()
        self._entities[ident] = (entity, masked)
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


def mask_secret_keys(value: Any) -> Any:
    """A copy of `value` with the default masks applied at any depth (for records that are not transactions:
    Kong entities in audit records and event hooks)."""
    return _default.mask_value(value)


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
