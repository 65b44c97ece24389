"""Records that reached the spool (`shipper.sources.spool`) rather than a log file: the envelope names their
kind, and each kind has its own module turning the inner record into a `Transaction`.

`kong_log` is a Kong log-serializer record that came over the network (http-log, tcp-log, udp-log) instead of
through file-log: the same object, so the same Kong parser reads it (HTTP records, or stream sessions)."""

from __future__ import annotations

import importlib
from typing import Any

from shipper.formats.decode import ParseError
from shipper.formats.kong import parse_kong
from shipper.formats.kong_stream import looks_like_kong_stream, parse_kong_stream
from shipper.model import Position, Transaction

# kind → (module, function(record, envelope, position, fallback_id) -> Transaction)
KINDS = {
    "audit_request": ("shipper.formats.audit", "parse_audit_request"),
    "audit_object": ("shipper.formats.audit", "parse_audit_object"),
    "event_hook": ("shipper.formats.event_hook", "parse_event_hook"),
    "kong_log": ("shipper.formats.spooled", "parse_kong_log"),
}


def looks_spooled(record: dict[str, Any]) -> bool:
    return "spool" in record and "record" in record


def parse_spooled(envelope: dict[str, Any], position: Position | None, fallback_id: str) -> Transaction:
    kind = envelope.get("spool")
    target = KINDS.get(kind) if isinstance(kind, str) else None
    inner = envelope.get("record")
    if target is None or not isinstance(inner, dict):
        raise ParseError("unknown_format", f"spool envelope of unknown kind {kind!r}")
    module, function = target
    return getattr(importlib.import_module(module), function)(inner, envelope, position, fallback_id)


def parse_kong_log(
    record: dict[str, Any], envelope: dict[str, Any], position: Position | None, fallback_id: str
) -> Transaction:
    """A record as Kong's log serializer wrote it, exactly as a file-log line of `--format kong` is read.
    `fallback_id` (the spool file and offset) stays stable across restarts, so a re-read after a crash
    carries the same id for records without a request id (stream sessions)."""
    if isinstance(record.get("request"), dict):
        return parse_kong(record, position, fallback_id)
    if looks_like_kong_stream(record):
        return parse_kong_stream(record, position, fallback_id)
    raise ParseError("unknown_format", "not a Kong record: no `request` or `session` object")
