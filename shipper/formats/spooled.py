"""Records that reached the spool (`shipper.sources.spool`) rather than a log file: the envelope names their
kind, and each kind has its own module turning the inner record into a `Transaction`."""

from __future__ import annotations

import importlib
from typing import Any

from shipper.formats.decode import ParseError
from shipper.model import Position, Transaction

# kind → (module, function(record, envelope, position, fallback_id) -> Transaction)
KINDS = {
    "audit_request": ("shipper.formats.audit", "parse_audit_request"),
    "audit_object": ("shipper.formats.audit", "parse_audit_object"),
    "event_hook": ("shipper.formats.event_hook", "parse_event_hook"),
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
