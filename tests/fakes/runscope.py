"""A strict fake of Runscope's Messages API: `POST /buckets/{bucket_key}/messages` with a bearer token and one
message per request: `request` {method, absolute url, headers (string or list of strings), timestamp seconds,
optional `body` (string), `form` (object of string, true or list values), `body_encoding`} and `response`
{integer status, headers, response_time seconds, timestamp, optional `size_bytes` (integer), `body`,
`body_encoding`}. `body_encoding`, when sent, is one of the documented `plaintext` and `base64`. Stricter than
Runscope: a timestamp before 2001 (a client that sent 0 for an unknown time) is refused. 403 for a bad token,
404 for an unknown bucket, as Runscope answered."""

from __future__ import annotations

from typing import Any

import orjson

from .httpfake import FakeHTTPServer, Request, Response, json_response

EARLIEST = 978_307_200  # 2001-01-01T00:00:00Z


class FakeRunscope(FakeHTTPServer):
    def __init__(self, token: str = "runscope-token", bucket: str = "bucket1"):
        super().__init__()
        self.token = token
        self.bucket = bucket
        self.messages: list[dict[str, Any]] = []

    def respond(self, req: Request) -> Response:
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return self.refuse(403, "invalid access token")
        parts = req.path.split("?")[0].strip("/").split("/")
        if req.method != "POST" or len(parts) != 3 or parts[0] != "buckets" or parts[2] != "messages":
            return self.refuse(404, f"no route for {req.method} {req.path}")
        if parts[1] != self.bucket:
            return self.refuse(404, f"unknown bucket {parts[1]}")
        try:
            message = orjson.loads(req.body)
        except orjson.JSONDecodeError as exc:
            return self.refuse(400, f"invalid JSON: {exc}")
        problem = self._check(message)
        if problem:
            return self.refuse(400, problem)
        with self._lock:
            self.messages.append(message)
        self.notify()
        return json_response(200, {"data": [{"status": "success"}], "meta": {"error": None}})

    @staticmethod
    def _check(message: Any) -> str | None:
        if not isinstance(message, dict):
            return "one message object per request"
        request, response = message.get("request"), message.get("response")
        if not isinstance(request, dict) or not isinstance(response, dict):
            return "request and response must be objects"
        if not request.get("method") or not str(request.get("url", "")).startswith(("http://", "https://")):
            return "request.method and an absolute request.url are required"
        for part in (request, response):
            for name, value in (part.get("headers") or {}).items():
                if not isinstance(value, str) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    return f"header {name} must be a string or a list of strings"
            timestamp = part.get("timestamp")
            if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool):
                return "timestamp must be Unix seconds"
            if timestamp < EARLIEST:
                return f"timestamp {timestamp} is before 2001: an unknown time sent as 0?"
            if "body" in part and not isinstance(part["body"], str):
                return "body must be a string"
            if "body_encoding" in part and part["body_encoding"] not in ("plaintext", "base64"):
                return "body_encoding must be plaintext or base64"
        form = request.get("form")
        if form is not None:
            if not isinstance(form, dict):
                return "request.form must be an object"
            for name, value in form.items():
                values = value if isinstance(value, list) else [value]
                if not all(isinstance(v, (str, bool)) for v in values):
                    return f"form field {name} must be a string, true or a list of them"
        size = response.get("size_bytes")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            return "response.size_bytes must be a non-negative integer"
        if not isinstance(response.get("status"), int):
            return "response.status must be an integer"
        if not isinstance(response.get("response_time"), (int, float)):
            return "response.response_time must be seconds"
        return None
