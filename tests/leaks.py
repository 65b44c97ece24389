"""Marker secrets in every shape a secret takes in a Kong or Nginx log line, for the tests that prove none leaves
the process (test_masking.py, test_no_secret_leaves.py).

A marker is a unique string of letters and digits (`ZQ…QZ`), so it is found verbatim wherever it lands: in JSON,
in a URL, in a form body. `SHAPES` maps a shape's name to a function that plants one marker in a record in that
shape, with variations chosen by `pick` (a function `pick(options) -> one of them`: hypothesis' draw, or a fixed
choice for the process-level test).
"""

from __future__ import annotations

import base64
import gzip
import json
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import gen

Pick = Callable[[list], Any]

HEADERS = ["authorization", "proxy-authorization", "cookie", "x-api-key", "apikey", "api-key", "x-auth-token"]
RESPONSE_HEADERS = ["set-cookie", "authorization", "x-api-key"]
QUERY = ["key", "apikey", "api_key", "token", "access_token", "refresh_token", "id_token", "password"]
BODY_KEYS = ["password", "passwd", "secret", "client_secret", "token", "access_token", "refresh_token",
             "id_token", "api_key", "apikey", "authorization", "cookie", "jwt", "private_key"]  # fmt: skip


def marker(n: int) -> str:
    return f"ZQ{n:07d}MRK{(n * 7919) % 10_000:04d}QZ"


def vary(name: str, pick: Pick) -> str:
    """The same name as a log might write it: another case, `-` and `_` swapped."""
    sep = pick(["-", "_", None])
    if sep is not None:
        name = name.replace("-", sep).replace("_", sep)
    case = pick(["lower", "upper", "title", "camel"])
    if case == "upper":
        return name.upper()
    if case == "title":
        return "-".join(p.capitalize() for p in name.split("-")) if "-" in name else name.capitalize()
    if case == "camel":
        return "".join(c.upper() if i % 2 else c for i, c in enumerate(name))
    return name


def encode(name: str, pick: Pick) -> str:
    """The name in a URL: as it is, one character percent-encoded, all of them, or double-encoded."""
    how = pick(["plain", "one", "all", "double"])
    if how == "plain":
        return name
    if how == "all":
        return "".join(f"%{ord(c):02X}" for c in name)
    i = pick(list(range(len(name))))
    quoted = f"%{ord(name[i]):02X}" if how == "one" else f"%25{ord(name[i]):02X}"
    return name[:i] + quoted + name[i + 1 :]


def _add_query(rec: dict[str, Any], part: str) -> None:
    request = rec["request"]
    request["uri"] += "&" + part
    if "url" in request:
        request["url"] += "&" + part
    key, _, value = part.partition("=")
    request["querystring"][unquote_plus(key)] = unquote_plus(value)  # decoded once, as Kong does


def _nested(key: str, value: str, depth: int) -> Any:
    body: Any = {key: value, "amount": 5}
    for level in range(depth):
        body = {"data": [body], "level": level} if level % 2 else {"item": body}
    return body


def _body_place(rec: dict[str, Any], pick: Pick) -> dict[str, Any]:
    return rec["request"] if pick(["request", "response"]) == "request" else rec["response"]


# -- the shapes ----------------------------------------------------------------------------------------------
def request_header(rec: dict[str, Any], m: str, pick: Pick) -> None:
    rec["request"]["headers"][vary(pick(HEADERS), pick)] = pick([m, f"Bearer {m}", f"session={m}; theme=dark"])


def response_header(rec: dict[str, Any], m: str, pick: Pick) -> None:
    rec["response"]["headers"][vary(pick(RESPONSE_HEADERS), pick)] = pick([m, f"sid={m}; Path=/; HttpOnly"])


def repeated_header(rec: dict[str, Any], m: str, pick: Pick) -> None:
    rec["request"]["headers"][vary(pick(HEADERS), pick)] = ["x", m]


def query(rec: dict[str, Any], m: str, pick: Pick) -> None:
    _add_query(rec, f"{encode(vary(pick(QUERY), pick), pick)}={m}")


def upstream_uri(rec: dict[str, Any], m: str, pick: Pick) -> None:
    rec["upstream_uri"] = f"/up/path?a=1&{encode(vary(pick(QUERY), pick), pick)}={m}"


def fragment(rec: dict[str, Any], m: str, pick: Pick) -> None:
    name = encode(vary(pick(QUERY), pick), pick)
    frag = pick([f"{name}={m}&state=1", f"/callback?{name}={m}", f"state=2&{name}={m}"])
    rec["request"]["uri"] += "#" + frag
    if "url" in rec["request"]:
        rec["request"]["url"] += "#" + frag


def referer(rec: dict[str, Any], m: str, pick: Pick) -> None:
    rec["request"]["headers"]["referer"] = pick([f"https://app.example.com/cb?{pick(QUERY)}={m}",
                                                 f"https://app.example.com/cb#access_token={m}",
                                                 f"https://user:{m}@app.example.com/"])  # fmt: skip


def json_body(rec: dict[str, Any], m: str, pick: Pick) -> None:
    body = _nested(vary(pick(BODY_KEYS), pick), m, pick([0, 1, 2, 5]))
    as_text = pick(["dict", "text", "nested-text"])
    if as_text == "text":
        body = json.dumps(body)
    elif as_text == "nested-text":
        body = {"payload": json.dumps(body), "n": 1}
    _body_place(rec, pick)["body"] = body


def form_body(rec: dict[str, Any], m: str, pick: Pick) -> None:
    name = encode(vary(pick(BODY_KEYS), pick), pick)
    name = pick([name, f"user[{name}]"])
    _body_place(rec, pick)["body"] = pick([f"a=1&{name}={m}&b=2", f"{name}={m}"])


def base64_body(rec: dict[str, Any], m: str, pick: Pick) -> None:
    key = vary(pick(BODY_KEYS), pick)
    inner = pick([json.dumps({"user": "u", key: m}), f"x=1&{key}={m}"]).encode()
    if pick([True, False]):
        inner = gzip.compress(inner, mtime=0)
    place = _body_place(rec, pick)
    place["body"] = base64.b64encode(inner).decode()


def text_body(rec: dict[str, Any], m: str, pick: Pick) -> None:
    # Nothing names the secret: it cannot be masked by key, so the body must not be shipped at all.
    _body_place(rec, pick)["body"] = pick([f"hello {m} world", f"<xml><pw>{m}</pw></xml>", f"{m}"])


def jwt_private_claims(rec: dict[str, Any], m: str, pick: Pick) -> None:
    claims = {"sub": "user-1", "iat": 1700000000, pick(["email", "ssn", "secret_note", "data"]): m,
              "profile": {"phone": m}}  # fmt: skip
    rec["jwt"] = gen.make_jwt(claims)


def entity_url(rec: dict[str, Any], m: str, pick: Pick) -> None:
    where = pick(["api", "service", "route"])
    if where == "api":
        rec["api"] = dict(gen.API_0X, upstream_url=f"http://svc:{m}@orders.internal:8080/p")
    elif where == "service":
        rec["service"] = dict(gen.SERVICE, url=pick([f"https://u:{m}@orders.internal/", f"http://h/p?apikey={m}"]))
    else:
        rec["route"] = dict(gen.ROUTE, headers={vary("x-api-key", pick): [m]})


def entity_secret_key(rec: dict[str, Any], m: str, pick: Pick) -> None:
    consumer = {"id": "c0ffee00-0000-4000-8000-000000000001", "username": "alice",
                "credentials": {vary(pick(["key", "secret", "password"]), pick): m}}  # fmt: skip
    rec["consumer"] = consumer


SHAPES: dict[str, Callable[[dict[str, Any], str, Pick], None]] = {
    f.__name__: f
    for f in (request_header, response_header, repeated_header, query, upstream_uri, fragment, referer, json_body,
              form_body, base64_body, text_body, jwt_private_claims, entity_url, entity_secret_key)
}  # fmt: skip

NGINX_HEADERS = ["http_X_API_KEY", "http_Cookie", "http_authorization", "http_apikey", "sent_http_set_cookie",
                 "http_Proxy_Authorization", "http_x_auth_token"]  # fmt: skip


def nginx_record(seq: int, markers: list[str], pick: Pick) -> dict[str, str]:
    """An Nginx line with a marker in an `http_*` header key, in the query and in the request body."""
    rec = gen.nginx_record(seq)
    rec[pick(NGINX_HEADERS)] = markers[0]
    rec["request_uri"] += f"&{encode(vary(pick(QUERY), pick), pick)}={markers[1]}"
    rec["request_body"] = pick([json.dumps({"login": {"Password": markers[2]}}), f"a=1&token={markers[2]}"])
    return rec


def fixed_pick(seed: int) -> Pick:
    """A deterministic `pick` for tests that are not property-based."""
    rng = random.Random(seed)
    return lambda options: options[rng.randrange(len(options))]
