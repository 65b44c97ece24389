"""A strict fake of Moesif's Collector API: `POST /v1/events/batch` and `GET /v1/config`.

Checks what Moesif checks: the `X-Moesif-Application-Id` header (401 otherwise), a gzip or plain JSON array of
events, each with `request.time` (ISO-8601), an absolute `request.uri`, `request.verb`, `response.time`, an
integer `response.status`, `direction`, a `transaction_id` of at most 36 characters, `weight` ≥ 1 when given,
string `user_id`, `company_id`, `session_token` and `request.ip_address` when given, an object `metadata`, and
`transfer_encoding: base64` bodies that really are base64. Answers 201 like Moesif's own API. Like Moesif, it
keeps no event whose `request.time` is more than 30 days old: such events are accepted and dropped (listed in
`too_old`), so a test sees what a shipper that sent them would have lost.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .httpfake import FakeHTTPServer, Request, Response, json_response


class FakeMoesif(FakeHTTPServer):
    def __init__(self, application_id: str = "moesif-app", *, config: dict[str, Any] | None = None, etag: str = "v1"):
        super().__init__()
        self.application_id = application_id
        self.config = config or {"sample_rate": 100, "user_sample_rate": {}, "company_sample_rate": {}}
        self.etag = etag
        self.events: list[dict[str, Any]] = []
        self.too_old: list[dict[str, Any]] = []
        self.config_requests = 0

    def set_config(self, config: dict[str, Any], etag: str) -> None:
        with self._lock:
            self.config, self.etag = config, etag

    def respond(self, req: Request) -> Response:
        if req.headers.get("x-moesif-application-id") != self.application_id:
            return self.refuse(401, "invalid X-Moesif-Application-Id")
        path = req.path.split("?")[0]
        if req.method == "GET" and path == "/v1/config":
            with self._lock:
                self.config_requests += 1
                if req.headers.get("if-none-match") == self.etag:
                    return Response(304, {"ETag": self.etag}, b"")
                return json_response(200, self.config, {"ETag": self.etag, "X-Moesif-Config-ETag": self.etag})
        if req.method != "POST" or path != "/v1/events/batch":
            return self.refuse(404, f"no route for {req.method} {path}")
        body = req.body
        if req.headers.get("content-encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                return self.refuse(400, f"bad gzip: {exc}")
        try:
            events = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self.refuse(400, f"invalid JSON: {exc}")
        if not isinstance(events, list) or not events:
            return self.refuse(400, "body must be a non-empty JSON array of events")
        for i, event in enumerate(events):
            problem = self._check(event)
            if problem:
                return self.refuse(400, f"events[{i}]: {problem}")
        oldest = datetime.now(UTC) - timedelta(days=30)
        with self._lock:
            for event in events:
                when = datetime.fromisoformat(str(event["request"]["time"]).replace("Z", "+00:00"))
                (self.too_old if when.tzinfo and when < oldest else self.events).append(event)
        self.notify()
        return json_response(201, {}, {"X-Moesif-Config-ETag": self.etag})

    @staticmethod
    def _check(event: Any) -> str | None:
        if not isinstance(event, dict):
            return "not an object"
        request, response = event.get("request"), event.get("response")
        if not isinstance(request, dict) or not isinstance(response, dict):
            return "request and response must be objects"
        for part, name in ((request, "request"), (response, "response")):
            try:
                datetime.fromisoformat(str(part.get("time")).replace("Z", "+00:00"))
            except ValueError:
                return f"{name}.time is not ISO-8601: {part.get('time')!r}"
            if part.get("transfer_encoding") == "base64":
                try:
                    base64.b64decode(part.get("body", ""), validate=True)
                except (binascii.Error, TypeError):
                    return f"{name}.body is not base64"
            if not isinstance(part.get("headers", {}), dict):
                return f"{name}.headers must be an object"
        if not str(request.get("uri", "")).startswith(("http://", "https://")):
            return f"request.uri must be absolute: {request.get('uri')!r}"
        if not request.get("verb"):
            return "request.verb is required"
        if not isinstance(response.get("status"), int):
            return "response.status must be an integer"
        if event.get("direction") not in (None, "Incoming", "Outgoing", "Internal"):
            return "bad direction"
        tid = event.get("transaction_id")
        if tid is not None and (not isinstance(tid, str) or len(tid) > 36):
            return "transaction_id must be a string of at most 36 characters"
        for key in ("user_id", "company_id", "session_token"):
            if key in event and not isinstance(event[key], str):
                return f"{key} must be a string"
        if request.get("ip_address") is not None and not isinstance(request["ip_address"], str):
            return "request.ip_address must be a string"
        if "metadata" in event and not isinstance(event["metadata"], dict):
            return "metadata must be an object"
        weight = event.get("weight")
        if weight is not None and (not isinstance(weight, int) or weight < 1):
            return "weight must be an integer >= 1"
        return None
