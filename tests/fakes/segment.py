"""A strict fake of Segment's HTTP Tracking API (`POST /v1/batch`).

Stricter than Segment itself: the real API answers 200 to a wrong write key, to > 2,500 messages and to messages
without a user id (silent drops, see vendors.md); here each of those is an error, so a test proves the client
never sends them. A rejected batch is rejected whole: nothing from it is kept.
"""

from __future__ import annotations

import base64
import gzip
import zlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import orjson

from .httpfake import FakeHTTPServer, Request, Response, json_response

MAX_BODY_BYTES = 500_000  # the uncompressed body must be smaller than this
MAX_MESSAGES = 2_500
MAX_MESSAGE_BYTES = 32_768
MAX_MESSAGE_ID_CHARS = 100


class BatchRejected(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def decode_body(req: Request) -> Any:
    """The JSON body of a recorded request, gunzipped if needed (e.g. to read `sentAt` of a failed attempt)."""
    body = req.body
    if req.headers.get("content-encoding", "").lower() == "gzip":
        body = gzip.decompress(body)
    return orjson.loads(body)


def _is_iso(value: Any, *, utc: bool = True) -> bool:
    """An ISO-8601 date-time with an explicit offset: UTC for `timestamp`; any zone for `sentAt`."""
    if not isinstance(value, str) or "T" not in value:
        return False
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return False
    return when.utcoffset() is not None and (not utc or when.utcoffset() == timedelta(0))


def _check_message(i: int, msg: Any, reject_ids: frozenset[str]) -> None:
    def bad(problem: str) -> BatchRejected:
        return BatchRejected(400, f"batch[{i}]: {problem}")

    if not isinstance(msg, dict):
        raise bad("message is not an object")
    if msg.get("type") != "track":
        raise bad(f"type must be 'track', got {msg.get('type')!r}")
    if not isinstance(msg.get("event"), str) or not msg["event"].strip():
        raise bad("event must be a non-empty string")
    for key in ("userId", "anonymousId"):
        if key in msg and not isinstance(msg[key], str):
            raise bad(f"{key} must be a string, got {type(msg[key]).__name__}")
    if not (msg.get("userId") or msg.get("anonymousId")):
        raise bad("userId or anonymousId is required")
    for key in ("properties", "context"):
        if not isinstance(msg.get(key), dict):
            raise bad(f"{key} must be an object")
    if not _is_iso(msg.get("timestamp")):
        raise bad(f"timestamp must be an ISO-8601 UTC string, got {msg.get('timestamp')!r}")
    message_id = msg.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise bad("messageId must be a non-empty string")
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise bad(f"messageId longer than {MAX_MESSAGE_ID_CHARS} characters")
    size = len(orjson.dumps(msg))
    if size > MAX_MESSAGE_BYTES:
        raise bad(f"message is {size} bytes, over {MAX_MESSAGE_BYTES}")
    if message_id in reject_ids:
        raise bad(f"messageId {message_id!r} rejected (scripted)")


def example_message(seq: int, **overrides: Any) -> dict[str, Any]:
    """A minimal valid track message (for tests of the fake, or of code that only forwards messages)."""
    msg = {
        "type": "track",
        "event": "API Request: GET",
        "userId": f"u{seq}",
        "properties": {"queryObject": {"seq": str(seq)}, "queryString": f"seq={seq}"},
        "context": {"library": {"name": "kong-ship-tests", "version": "0"}},
        "timestamp": "2025-11-22T10:15:30.123Z",
        "messageId": f"msg-{seq}",
    }
    msg.update(overrides)
    return {k: v for k, v in msg.items() if v is not None}  # an override of None removes the key


class FakeSegment(FakeHTTPServer):
    """`store=False` counts accepted messages (`message_count`, `batch_count`) without keeping them or the
    requests, for benchmarks. `reject_message_ids`: a batch holding any of them answers 400 (to exercise
    split-and-isolate); it may be changed while running via `reject(ids)`."""

    def __init__(
        self,
        write_key: str = "test-key",
        *,
        store: bool = True,
        reject_message_ids: Iterable[str] = (),
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__(record=store)
        self.write_key = write_key
        self.store = store
        self.max_body_bytes = max_body_bytes
        self._auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self._reject_ids = frozenset(reject_message_ids)
        self.messages: list[dict[str, Any]] = []
        self.batches: list[dict[str, Any]] = []
        self.sent_ats: list[str] = []
        self.message_count = 0
        self.batch_count = 0

    def reject(self, message_ids: Iterable[str]) -> None:
        with self._lock:
            self._reject_ids = frozenset(message_ids)

    def message_ids(self) -> list[str]:
        with self._lock:
            return [m["messageId"] for m in self.messages]

    def respond(self, req: Request) -> Response:
        try:
            batch = self._validate(req)
        except BatchRejected as e:
            return self.refuse(e.status, e.error)
        with self._lock:
            self.batch_count += 1
            self.message_count += len(batch["batch"])
            if self.store:
                self.batches.append(batch)
                self.messages.extend(batch["batch"])
                self.sent_ats.append(batch["sentAt"])
        self.notify()
        return json_response(200, {"success": True})

    def _validate(self, req: Request) -> dict[str, Any]:
        if req.method != "POST" or req.path.split("?")[0] != "/v1/batch":
            raise BatchRejected(404, f"no route for {req.method} {req.path}")
        if req.headers.get("authorization") != self._auth:
            raise BatchRejected(401, "invalid write key (expected HTTP Basic base64('KEY:'))")
        content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise BatchRejected(400, f"Content-Type must be application/json, got {content_type!r}")
        body = req.body
        encoding = req.headers.get("content-encoding", "identity").lower()
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as e:
                raise BatchRejected(400, f"bad gzip body: {e}") from None
        elif encoding != "identity":
            raise BatchRejected(400, f"unsupported Content-Encoding {encoding!r}")
        if len(body) >= self.max_body_bytes:
            raise BatchRejected(413, f"body is {len(body)} bytes uncompressed, limit is < {self.max_body_bytes}")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise BatchRejected(400, f"invalid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BatchRejected(400, "body must be a JSON object")
        batch = data.get("batch")
        if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_MESSAGES:
            n = len(batch) if isinstance(batch, list) else type(batch).__name__
            raise BatchRejected(400, f"batch must be a list of 1..{MAX_MESSAGES} messages, got {n}")
        if not _is_iso(data.get("sentAt"), utc=False):
            raise BatchRejected(400, f"sentAt must be an ISO-8601 string, got {data.get('sentAt')!r}")
        with self._lock:
            reject_ids = self._reject_ids
        for i, msg in enumerate(batch):
            _check_message(i, msg, reject_ids)
        return data

