"""Defensive coercions shared by the formats: real logs write numbers as strings, in exponent form, or as `-`."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus


def to_int(value: Any) -> int | None:
    """An integer from an int, a float (`1.7638e+12`), or a numeric string; None for anything else."""
    if type(value) is int:
        return value
    if isinstance(value, float):
        return int(value) if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, str) and value:
        try:
            return int(value)
        except ValueError:
            try:
                return to_int(float(value))
            except ValueError:
                return None
    return None


def to_float(value: Any) -> float | None:
    kind = type(value)
    if kind is int or kind is float:
        return float(value)
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (dict, list)):
        return ""
    return str(value)


def split_target(target: str) -> tuple[str, str, str]:
    """`/p/a?x=1#frag` → (`/p/a`, `x=1`, `frag`)."""
    rest, _, fragment = target.partition("#")
    path, _, query = rest.partition("?")
    return path, query, fragment


def parse_query(query: str) -> dict[str, Any]:
    """Decode a query string the way Kong fills `request.querystring`: a repeated argument becomes a list,
    a bare `flag` is True, `a=` is "". Invalid UTF-8 after percent-decoding is replaced, not fatal."""
    out: dict[str, Any] = {}
    if not query:
        return out
    for part in query.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = unquote_plus(key, errors="replace")
        item: Any = unquote_plus(value, errors="replace") if eq else True
        if key in out:
            prev = out[key]
            if isinstance(prev, list):
                prev.append(item)
            else:
                out[key] = [prev, item]
        else:
            out[key] = item
    return out


def split_url(url: str) -> tuple[str, str, int | None, str]:
    """`https://host:443/p?q` → (`https`, `host`, 443, `/p?q`) without urllib's overhead; IPv6 hosts keep
    their brackets."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", None, url
    hostport, slash, target = rest.partition("/")
    target = slash + target
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        host += "]"
        port = to_int(tail[1:]) if tail.startswith(":") else None
    else:
        host, colon, port_s = hostport.rpartition(":")
        if not colon:
            host, port_s = port_s, ""
        port = to_int(port_s)
    return scheme.lower(), host, port, target or "/"
