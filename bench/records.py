"""Realistic Kong 3.x file-log records of about 2 KB, fast enough to write a million of them in seconds.

What makes them realistic is what makes the shipper work: a top-level `jwt` custom field holding one of a few
hundred distinct HS256 tokens (tokens repeat, as users come back), a Kong consumer on most records, query
strings with several arguments (some secrets that the masks must catch, some repeated), full service and route
objects, response headers, latencies and balancer tries. Lines are written as Kong's encoder writes them:
compact JSON with `/` escaped as `\\/`.

Every record carries a unique `seq` as the first query argument (`?seq=N`), so a fake vendor can prove which
records arrived. Tail lines also carry `appended=<monotonic ns>`, the time the line was written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import time
from typing import Any

import orjson

GENERATOR_VERSION = 1  # bump when the records change, so cached files are regenerated
# Epoch ms of seq 0 (records are 1 ms apart): yesterday at 00:00 UTC, so no vendor drops them as too old (Moesif
# refuses events over 30 days old, and its sink counts them as filtered).
BASE_STARTED_AT = (int(time.time()) // 86_400 - 1) * 86_400_000
DISTINCT_TOKENS = 300
DISTINCT_CONSUMERS = 60
WORKSPACE = "0da4afe7-44ad-4e81-a953-5d2923ce68ae"
HOST = "api.example.com"

_USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "python-httpx/0.27.0", "okhttp/4.12.0", "curl/8.4.0", "Go-http-client/2.0", "axios/1.6.2",
]  # fmt: skip
_METHODS = ["GET"] * 6 + ["POST", "POST", "PUT", "PATCH", "DELETE"]
_STATUSES = [200] * 12 + [201, 201, 204, 301, 304, 400, 401, 403, 404, 404, 409, 429, 500, 502, 503]
_SORTS = ["created_at", "-created_at", "name", "-updated_at", "price"]
_FIELDS = ["id,name", "id,name,email,created_at", "id,status,total,items,shipping_address", "*"]
_TAGS = ["new", "sale", "eu", "us", "beta", "b2b", "mobile"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uuid(salt: str, n: int) -> str:
    h = hashlib.md5(f"{salt}:{n}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def _jwt(n: int) -> str:
    header = _b64url(b'{"alg":"HS256","typ":"JWT","kid":"kong-ship-bench"}')
    claims = {
        "sub": f"user-{n:05d}", "iss": "https://auth.example.com/", "iat": 1763700000 + n,
        "exp": 1795236000, "scope": "orders:read", "tenant": f"t{n % 17}", "sid": _uuid("sid", n),
    }  # fmt: skip
    signing_input = header + "." + _b64url(orjson.dumps(claims))
    signature = hmac.new(b"kong-ship-bench-secret", signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64url(signature)


def _consumer(n: int) -> dict[str, Any]:
    return {
        "id": _uuid("consumer", n), "username": f"partner-{n:03d}", "custom_id": f"cust-{n:05d}",
        "created_at": 1700000000 + n, "updated_at": 1700000000 + n, "type": 0, "tags": None,
    }  # fmt: skip


def _service(n: int) -> dict[str, Any]:
    name = ["orders-api", "payments-api", "catalog-api", "users-api", "search-api"][n]
    return {
        "id": _uuid("service", n), "name": name, "host": f"{name}.internal.svc.cluster.local", "port": 8080,
        "protocol": "http", "path": None, "retries": 5, "connect_timeout": 60000, "read_timeout": 60000,
        "write_timeout": 60000, "created_at": 1700000000, "updated_at": 1700000000, "ws_id": WORKSPACE,
        "enabled": True
    }  # fmt: skip


def _route(service: dict[str, Any], n: int) -> dict[str, Any]:
    prefix = "/" + service["name"].split("-")[0]
    return {
        "id": _uuid("route-" + service["name"], n), "name": f"{service['name']}-{n}",
        "paths": [f"/v{n + 1}{prefix}"], "protocols": ["http", "https"], "methods": None, "hosts": None,
        "strip_path": False, "preserve_host": False, "path_handling": "v0", "created_at": 1700000000,
        "updated_at": 1700000000, "ws_id": WORKSPACE, "service": {"id": service["id"]},
    }  # fmt: skip


class KongRecords:
    """Builds record `seq` of a deterministic log: the same seed gives the same file, byte for byte."""

    def __init__(self, seed: int = 5) -> None:
        self.rng = random.Random(seed)
        self.tokens = [_jwt(n) for n in range(DISTINCT_TOKENS)]
        self.consumers = [_consumer(n) for n in range(DISTINCT_CONSUMERS)]
        self.services = [_service(n) for n in range(5)]
        self.routes = [[_route(s, n) for n in range(3)] for s in self.services]

    def record(self, seq: int, appended: str | None = None) -> dict[str, Any]:
        rng = self.rng
        r = rng.random
        svc_i = rng.randrange(5)
        service = self.services[svc_i]
        route = self.routes[svc_i][rng.randrange(3)]
        method = rng.choice(_METHODS)
        status = rng.choice(_STATUSES)
        path = f"{route['paths'][0]}/{rng.randrange(100000)}" + ("/items" if r() < 0.3 else "")

        query: dict[str, Any] = {"seq": str(seq)}
        if appended is not None:
            query["appended"] = appended
        if r() < 0.6:
            query["page"] = str(rng.randrange(1, 40))
            query["limit"] = rng.choice(["10", "25", "50", "100"])
        if r() < 0.4:
            query["sort"] = rng.choice(_SORTS)
            query["fields"] = rng.choice(_FIELDS)
        if r() < 0.25:
            query["apikey"] = hashlib.md5(f"apikey:{seq}".encode()).hexdigest()  # a secret: masked
        if r() < 0.2:
            query["tag"] = rng.sample(_TAGS, 2)  # a repeated argument
        if r() < 0.15:
            query["utm_source"] = "newsletter"
            query["utm_campaign"] = f"winter-{rng.randrange(10)}"
        parts = []
        for k, v in query.items():
            parts.extend(f"{k}={x}" for x in v) if isinstance(v, list) else parts.append(f"{k}={v}")
        uri = path + "?" + "&".join(parts)
        started_at = BASE_STARTED_AT + seq

        headers: dict[str, Any] = {
            "host": HOST,
            "user-agent": rng.choice(_USER_AGENTS),
            "accept": "application/json",
            "x-forwarded-for": f"198.51.100.{rng.randrange(1, 255)}",
            "x-request-id": hashlib.md5(f"xrid:{seq}".encode()).hexdigest(),
            "authorization": "REDACTED",
            "cookie": f"session={hashlib.md5(f'session:{seq}'.encode()).hexdigest()}; theme=dark",
        }
        if method in ("POST", "PUT", "PATCH"):
            headers["content-type"] = "application/json"
            headers["content-length"] = str(rng.randrange(50, 3000))
        consumer = self.consumers[rng.randrange(DISTINCT_CONSUMERS)] if r() < 0.7 else None
        if consumer is not None:
            headers["x-consumer-id"] = consumer["id"]
            headers["x-consumer-username"] = consumer["username"]
            headers["x-consumer-custom-id"] = consumer["custom_id"]
            headers["x-credential-identifier"] = f"cred-{consumer['username']}"
        proxy = rng.randrange(3, 400) if status not in (502, 503) else -1
        kong = rng.randrange(0, 8)
        record: dict[str, Any] = {
            "request": {
                "method": method, "uri": uri, "url": f"https://{HOST}:443{uri}", "size": rng.randrange(300, 2500),
                "querystring": query, "headers": headers, "id": hashlib.md5(f"rid:{seq}".encode()).hexdigest(),
            },
            "response": {
                "status": status, "size": rng.randrange(200, 90000),
                "headers": {
                    "content-type": "application/json; charset=utf-8", "content-length": str(rng.randrange(2, 90000)),
                    "connection": "keep-alive", "x-kong-upstream-latency": str(max(proxy, 0)),
                    "x-kong-proxy-latency": str(kong), "via": "1.1 kong/3.9.0",
                },
            },
            "latencies": {"request": max(proxy, 0) + kong + rng.randrange(1, 20), "kong": kong, "proxy": proxy,
                          "receive": 0},
            "tries": [{"balancer_start": started_at + 1, "ip": f"10.0.3.{rng.randrange(1, 60)}", "port": 8080, "balancer_latency": 0}],
            "client_ip": f"203.0.113.{rng.randrange(1, 255)}",
            "started_at": started_at,
            "upstream_uri": uri,
            "upstream_status": str(status),
            "source": "upstream" if proxy >= 0 else "kong",
            "workspace": WORKSPACE,
            "workspace_name": "default",
            "service": service,
            "route": route,
        }  # fmt: skip
        if r() < 0.85:
            record["jwt"] = self.tokens[min(int(rng.paretovariate(1.2)) - 1, DISTINCT_TOKENS - 1)] if r() < 0.5 \
                else rng.choice(self.tokens)  # a few heavy users, a long tail
        if consumer is not None:
            record["consumer"] = consumer
            record["authenticated_entity"] = {"id": _uuid("credential", rng.randrange(DISTINCT_CONSUMERS)),
                                              "consumer_id": consumer["id"]}
        return record

    def line(self, seq: int, appended: str | None = None) -> bytes:
        # Kong's encoder escapes every `/`; a slash can only occur inside strings, so the replacement is safe.
        return orjson.dumps(self.record(seq, appended)).replace(b"/", b"\\/") + b"\n"


def write_log(path: str, count: int, seed: int = 5) -> int:
    """Write `count` records (seq 0..count-1) to `path` (replacing it); returns the bytes written."""
    gen = KongRecords(seed)
    tmp = path + ".part"
    written = 0
    with open(tmp, "wb", buffering=1 << 20) as out:
        chunk: list[bytes] = []
        for seq in range(count):
            chunk.append(gen.line(seq))
            if len(chunk) == 4096:
                data = b"".join(chunk)
                written += out.write(data)
                chunk.clear()
        written += out.write(b"".join(chunk))
    os.replace(tmp, path)
    return written
