"""Realistic Kong file-log and Nginx JSON records, each carrying a unique integer `seq` end to end.

The seq is in the query string (`?seq=N` first, so it survives in `uri`, `url`, `querystring`, Segment's
`queryObject`/`queryString`/`rawpath`) and, for Kong, in an `x-seq` header. `seq_of_segment_message` recovers it
from what reached the fake vendor, so a test can prove exactly which records were delivered, lost or
duplicated. Everything is derived from seq: the same seq always yields the same record.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Epoch ms; record seq starts at BASE_STARTED_AT + seq. Yesterday at 00:00 UTC: recent enough for every vendor
# (Moesif drops events older than 30 days), and fixed for the whole run.
BASE_STARTED_AT = (int(time.time()) // 86_400 - 1) * 86_400_000
HOST = "api.example.com"
WORKSPACE = "0da4afe7-44ad-4e81-a953-5d2923ce68ae"
SERVICE = {
    "id": "16787ed7-d805-434a-9cec-5e5a3e5c9e4f", "name": "orders-api", "host": "orders.internal", "port": 8080,
    "protocol": "http", "path": None, "retries": 5, "connect_timeout": 60000, "read_timeout": 60000,
    "write_timeout": 60000, "created_at": 1700000000, "updated_at": 1700000000, "ws_id": WORKSPACE, "enabled": True,
}  # fmt: skip
ROUTE = {
    "id": "7ebabee7-2b09-445d-bc1f-2092c4ddc4be", "name": "orders", "paths": ["/"], "protocols": ["http", "https"],
    "methods": None, "hosts": None, "strip_path": False, "preserve_host": False, "regex_priority": 0,
    "https_redirect_status_code": 426, "path_handling": "v0", "request_buffering": True, "response_buffering": True,
    "created_at": 1700000000, "updated_at": 1700000000, "ws_id": WORKSPACE, "service": {"id": SERVICE["id"]},
}  # fmt: skip
API_0X = {
    "id": "3fbbcf2b-7a4a-4ac0-9d6b-9bd0c1f5e3a1", "name": "orders", "upstream_url": "http://orders.internal:8080",
    "uris": ["/"], "strip_uri": False, "created_at": 1500000000000,
}  # fmt: skip
PATHS = [
    "/orders/{id}", "/articles/{id}/comments", "/search", "/graphql", "/health", "/v1/payments/{id}/refunds",
    "/anything/{id}/deep/nested/path/segments/here/x/y", "/users/{id}/", "/",
]  # fmt: skip
METHODS = ["GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE"]
STATUSES = [200, 200, 200, 201, 204, 301, 400, 401, 404, 429, 500, 502]
USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "python-httpx/0.27.0", "okhttp/4.12.0", "curl/8.4.0",
]  # fmt: skip


def _hex(seq: int, salt: str) -> str:
    return hashlib.md5(f"{salt}:{seq}".encode()).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any], key: bytes = b"kong-ship-test-secret") -> str:
    """An HS256 JWT (header.payload.signature, base64url without padding)."""
    signing_input = _b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64url(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64url(signature)


def jwt_for(sub: str) -> str:
    return make_jwt(
        {"sub": sub, "iss": "https://auth.example.com/", "iat": 1700000000, "exp": 1900000000, "scope": "read write"}
    )


def _consumer_entity(consumer: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(consumer, dict):
        return consumer
    h = hashlib.md5(f"consumer:{consumer}".encode()).hexdigest()
    return {
        "id": f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}",
        "username": consumer,
        "custom_id": f"cust-{consumer}",
        "created_at": 1700000000,
        "type": 0,
        "tags": None,
    }


def _request_parts(seq: int, rng: random.Random, method: str | None, path: str | None) -> tuple[str, str, dict]:
    path = path if path is not None else rng.choice(PATHS).format(id=f"a{rng.randrange(1000)}")
    query: dict[str, Any] = {"seq": str(seq)}
    if rng.random() < 0.5:
        query["page"] = str(rng.randrange(1, 10))
    if rng.random() < 0.3:
        query["apikey"] = f"k-{_hex(seq, 'apikey')}"
    uri = path + "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return method or rng.choice(METHODS), uri, query


def kong_record(
    seq: int,
    *,
    version: str = "3",
    jwt_sub: str | None = None,
    request_id: bool = True,
    consumer: str | dict[str, Any] | None = None,
    method: str | None = None,
    path: str | None = None,
    status: int | None = None,
    started_at: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Kong file-log record. version "3": numeric sizes, `request.id` (if request_id), `jwt` top-level field
    (if jwt_sub). "2": sizes as strings, `authorization: "REDACTED"`, `jwt` field if jwt_sub (custom_fields_by_lua,
    Kong 2.4+). "0": the 0.x shape (`api` entity, `request.request_uri`, sizes as strings), raw Authorization
    header if jwt_sub. `consumer`: a username (entity, authenticated_entity and x-consumer-* headers are derived)
    or a full entity dict. `extra` is merged at top level last (custom fields, or overriding anything)."""
    if version not in ("0", "2", "3"):
        raise ValueError(f"version must be '0', '2' or '3', got {version!r}")
    rng = random.Random(seq)
    method, uri, query = _request_parts(seq, rng, method, path)
    status = status if status is not None else rng.choice(STATUSES)
    started_at = started_at if started_at is not None else BASE_STARTED_AT + seq
    sized = (lambda n: n) if version == "3" else str
    token = jwt_for(jwt_sub) if jwt_sub is not None else None

    headers: dict[str, Any] = {
        "host": HOST,
        "user-agent": rng.choice(USER_AGENTS),
        "accept": "application/json",
        "x-forwarded-for": f"198.51.100.{rng.randrange(1, 255)}",
        "x-request-id": _hex(seq, "x-request-id"),
        "x-seq": str(seq),
        "cookie": f"session={_hex(seq, 'session')}; theme=dark",
    }
    if version == "0":
        if token:
            headers["authorization"] = f"Bearer {token}"
    else:
        headers["authorization"] = "REDACTED"
    if method in ("POST", "PUT", "PATCH"):
        headers["content-type"] = "application/json"
        headers["content-length"] = str(rng.randrange(50, 3000))
    consumer_entity = _consumer_entity(consumer) if consumer is not None else None
    if consumer_entity:
        headers["x-consumer-id"] = consumer_entity["id"]
        headers["x-consumer-username"] = consumer_entity.get("username") or ""
        headers["x-consumer-custom-id"] = consumer_entity.get("custom_id") or ""
        headers["x-credential-identifier"] = f"cred-{consumer_entity.get('username')}"

    request: dict[str, Any] = {"method": method, "uri": uri}
    if version != "0":
        request["url"] = f"https://{HOST}:443{uri}"
    request.update(size=sized(rng.randrange(300, 2500)), querystring=query, headers=headers)
    if version == "0":
        request["request_uri"] = f"https://{HOST}:443{uri}"
    if version == "3" and request_id:
        request["id"] = _hex(seq, "request-id")

    proxy = rng.randrange(5, 300) if status != 502 else -1
    record: dict[str, Any] = {
        "request": request,
        "response": {
            "status": status,
            "size": sized(rng.randrange(200, 90000)),
            "headers": {
                "content-type": "application/json; charset=utf-8",
                "content-length": str(rng.randrange(2, 90000)),
                "connection": "keep-alive",
                "x-kong-upstream-latency": str(max(proxy, 0)),
                "x-kong-proxy-latency": str(rng.randrange(0, 6)),
                "via": "1.1 kong/3.9.0",
            },
        },
        "latencies": {"request": max(proxy, 0) + rng.randrange(1, 40), "kong": rng.randrange(0, 6), "proxy": proxy},
        "client_ip": f"203.0.113.{rng.randrange(1, 255)}",
        "started_at": started_at,
    }
    if version == "0":
        record["api"] = dict(API_0X)
    else:
        record["tries"] = [
            {"balancer_start": started_at + 1, "ip": f"10.0.3.{rng.randrange(1, 60)}", "port": 8080, "balancer_latency": 0}
        ]
        record["upstream_uri"] = uri
        if version == "3":
            record["latencies"]["receive"] = 0
            record["upstream_status"] = str(status)
            record["source"] = "upstream" if proxy >= 0 else "kong"
            record["workspace"] = WORKSPACE
            record["workspace_name"] = "default"
        record["service"] = dict(SERVICE)
        record["route"] = dict(ROUTE)
        if token:
            record["jwt"] = token
    if consumer_entity:
        record["consumer"] = consumer_entity
        record["authenticated_entity"] = {"id": _hex(seq, "credential")[:32], "consumer_id": consumer_entity["id"]}
    record.update(extra or {})
    return record


def nginx_record(seq: int, *, jwt_sub: str | None = None, method: str | None = None, path: str | None = None,
                 status: int | None = None, started_at: int | None = None) -> dict[str, str]:  # fmt: skip
    """A record in the `kongship` escape=json log_format (every value a string), as nginx-json.jsonl."""
    rng = random.Random(seq)
    method, uri, _ = _request_parts(seq, rng, method, path)
    status = status if status is not None else rng.choice(STATUSES)
    msec = (started_at if started_at is not None else BASE_STARTED_AT + seq) / 1000
    request_time = rng.randrange(1, 400) / 1000
    upstream = status != 502 or rng.random() < 0.5
    return {
        "time": datetime.fromtimestamp(int(msec), UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        "msec": f"{msec:.3f}",
        "remote_addr": f"203.0.113.{rng.randrange(1, 255)}",
        "request_method": method,
        "request_uri": uri,
        "uri": uri.split("?")[0],
        "args": uri.partition("?")[2],
        "status": str(status),
        "body_bytes_sent": str(rng.randrange(0, 90000)),
        "request_length": str(rng.randrange(100, 3000)),
        "request_time": f"{request_time:.3f}",
        "upstream_response_time": f"{request_time * 0.9:.3f}" if upstream else "-",
        "upstream_addr": f"10.0.3.{rng.randrange(1, 60)}:8080" if upstream else "",
        "http_user_agent": rng.choice(USER_AGENTS),
        "http_referer": "",
        "http_authorization": f"Bearer {jwt_for(jwt_sub)}" if jwt_sub is not None else "",
        "host": HOST,
        "scheme": "https",
        "server_port": "443",
        "request_id": _hex(seq, "nginx-request-id"),
    }


def kong_line(record: dict[str, Any]) -> bytes:
    """One NDJSON line as Kong's encoder writes it: compact, with `/` escaped as `\\/` (valid JSON; a slash can
    only occur inside strings, so the replacement is safe)."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode().replace(b"/", b"\\/") + b"\n"


def nginx_line(record: dict[str, str]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def write_records(path: str | os.PathLike, seqs: Iterable[int], *, nginx: bool = False, **kw: Any) -> int:
    """Append one line per seq (kong_record(seq, **kw), or nginx_record with nginx=True) with a single
    O_APPEND write per line, as Kong's file-log does, so a concurrent reader sees whole lines or a partial
    last line, never interleaving. Returns the number of bytes written."""
    make, line = (nginx_record, nginx_line) if nginx else (kong_record, kong_line)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for seq in seqs:
            written += os.write(fd, line(make(seq, **kw)))
    finally:
        os.close(fd)
    return written


def seq_of_url(url_or_query: str) -> int | None:
    """The seq in a URL, path?query or bare query string, or None."""
    query = urlsplit(url_or_query).query if "?" in url_or_query else url_or_query
    values = parse_qs(query, keep_blank_values=True).get("seq")
    return int(values[0]) if values else None


def _seq_value(value: Any) -> int | None:
    if isinstance(value, list):  # a repeated argument
        value = value[0] if value else None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).isdigit():
        return int(value)
    return None


def seq_of_segment_message(msg: dict[str, Any]) -> int:
    """The seq of the record a Segment track message came from (properties.queryObject.seq, else the query in
    queryString / rawpath / uri / queryJson). ValueError if none is present."""
    props = msg.get("properties") or {}
    if isinstance(props.get("queryObject"), dict) and (seq := _seq_value(props["queryObject"].get("seq"))) is not None:
        return seq
    for key in ("queryString", "rawpath", "uri"):
        if isinstance(props.get(key), str) and (seq := seq_of_url(props[key])) is not None:
            return seq
    try:
        seq = _seq_value(json.loads(props["queryJson"]).get("seq"))
    except (KeyError, TypeError, ValueError, AttributeError):
        seq = None
    if seq is None:
        raise ValueError(f"no seq in message {msg.get('messageId')!r}")
    return seq


class Writer(threading.Thread):
    """Appends numbered records at a steady pace to whatever file `path` names at the moment of each write,
    opening it each time (as Kong's file-log with `reopen: true` does). Hold `pause` to stop it between writes."""

    def __init__(self, path, seqs, rate=2000.0):
        super().__init__(daemon=True)
        self.path, self.seqs, self.rate = path, list(seqs), rate
        self.done = threading.Event()
        self.pause = threading.Lock()

    def run(self) -> None:
        interval = 1.0 / self.rate
        for seq in self.seqs:
            with self.pause:
                write_records(self.path, [seq])
            time.sleep(interval)
        self.done.set()
