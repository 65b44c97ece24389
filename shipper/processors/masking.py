"""Masks applied before anything leaves the process. The default denies: Kong itself redacts only
Authorization, so cookies, API keys in headers and tokens in query strings are masked here, in every place
they appear (request and response headers, the query object, the query string and the raw path)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_plus

from shipper.model import Transaction

MASK = "*****"
DEFAULT_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "apikey", "x-api-key")
DEFAULT_QUERY = ("apikey", "api_key", "key", "token", "access_token")
# Keys whose values are secrets wherever they appear in a structured record (a Kong entity in an audit record or
# an event hook, a request body): credentials' `key`, `secret`, `password`, tokens, private keys, auth headers.
SECRET_KEYS = frozenset({
    "secret", "client_secret", "password", "key", "api_key", "apikey", "x-api-key", "token", "access_token",
    "refresh_token", "private_key", "jwk", "authorization", "proxy-authorization", "cookie", "set-cookie",
})  # fmt: skip
_MAX_DEPTH = 64


def mask_secret_keys(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with the values of SECRET_KEYS masked at any depth (case-insensitive keys)."""
    if depth > _MAX_DEPTH:
        return MASK  # a pathological nesting is not worth the recursion
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and k.lower() in SECRET_KEYS and v is not None else mask_secret_keys(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secret_keys(v, depth + 1) for v in value]
    return value


def _mask_headers(headers: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    # Header names are lower-case (Kong writes them so, the Nginx format makes them so): a set
    # intersection finds the secrets without a Python-level loop over every header of every record.
    hits = names.intersection(headers)
    if not hits:
        return headers
    masked = dict(headers)
    for k in hits:
        value = masked[k]
        masked[k] = [MASK] * len(value) if isinstance(value, list) else MASK
    return masked


def mask_query_string(query: str, names: frozenset[str]) -> str:
    parts = query.split("&")
    changed = False
    for i, part in enumerate(parts):
        key, eq, _ = part.partition("=")
        if not eq:
            continue
        name = unquote_plus(key) if ("%" in key or "+" in key) else key
        if name.lower() in names:
            parts[i] = f"{key}={MASK}"
            changed = True
    return "&".join(parts) if changed else query


def mask_secrets(
    header_names: Iterable[str] = DEFAULT_HEADERS, query_names: Iterable[str] = DEFAULT_QUERY
) -> Callable[[Transaction], Transaction]:
    headers = frozenset(h.lower() for h in header_names)
    queries = frozenset(q.lower() for q in query_names)

    def mask(txn: Transaction) -> Transaction:
        txn.request_headers = _mask_headers(txn.request_headers, headers)
        txn.response_headers = _mask_headers(txn.response_headers, headers)
        query = txn.query
        # Query argument names keep their case (`API_KEY`), so they are compared lower-cased.
        if query and any(k.lower() in queries for k in query):
            txn.query = {k: (MASK if k.lower() in queries else v) for k, v in query.items()}
        qs = txn.query_string
        if qs and "=" in qs:
            lowered = qs.lower()
            if any(name in lowered for name in queries):
                masked = mask_query_string(qs, queries)
                if masked is not qs:
                    txn.raw_path = txn.raw_path.replace("?" + qs, "?" + masked, 1)
                    txn.query_string = masked
        upstream = txn.upstream_uri
        if upstream and "?" in upstream:
            lowered = upstream.lower()
            if any(name in lowered for name in queries):
                base, _, uq = upstream.partition("?")
                txn.upstream_uri = base + "?" + mask_query_string(uq, queries)
        return txn

    return mask


def drop_raw(txn: Transaction) -> Transaction:
    """Last in the chain: the raw record holds everything unmasked (custom fields, tokens), so it must not
    travel further than the processors."""
    txn.raw = None
    return txn
