"""A strict receiver of `--sink webhook` requests: a JSON array of objects, `Content-Type: application/json`,
the `x-kong-signature` Kong's event hooks send (`sha1=` + hex HMAC-SHA1 of the body) when built with a secret,
and any headers it is told to require. A refused request keeps nothing."""

from __future__ import annotations

import hashlib
import hmac
import threading
from typing import Any

import orjson

from .httpfake import FakeHTTPServer, Request, Response, json_response


def kong_signature(secret: bytes, body: bytes) -> str:
    """Computed here independently of kong-ship's code: what Kong's `sign_body` produces."""
    return "sha1=" + hmac.new(secret, body, hashlib.sha1).hexdigest()


class FakeWebhook(FakeHTTPServer):
    def __init__(self, *, secret: bytes | None = None, require_headers: dict[str, str] | None = None, **kw: Any):
        super().__init__(**kw)
        self.secret = secret
        self.require_headers = {k.lower(): v for k, v in (require_headers or {}).items()}
        self.events: list[dict[str, Any]] = []
        self.batches = 0
        self._events_lock = threading.Lock()

    def respond(self, req: Request) -> Response:
        if req.method != "POST":
            return self.refuse(405, f"method {req.method}")
        if not req.headers.get("content-type", "").startswith("application/json"):
            return self.refuse(400, "content-type is not application/json")
        if self.secret is not None:
            signature = req.headers.get("x-kong-signature")
            if signature is None:
                return self.refuse(401, "no x-kong-signature")
            if not hmac.compare_digest(signature, kong_signature(self.secret, req.body)):
                return self.refuse(401, "bad x-kong-signature")
        for name, value in self.require_headers.items():
            if req.headers.get(name) != value:
                return self.refuse(401, f"header {name} missing or wrong")
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return self.refuse(400, "body is not JSON")
        if not isinstance(body, list) or not body or not all(isinstance(e, dict) for e in body):
            return self.refuse(400, "body is not a non-empty array of objects")
        with self._events_lock:
            self.events.extend(body)
            self.batches += 1
        self.notify()
        return json_response(200, {"ok": True})

    def snapshot(self) -> list[dict[str, Any]]:
        with self._events_lock:
            return list(self.events)
