"""Records that reached the spool (`shipper.sources.spool`) rather than a log file: the envelope names their
kind, and each kind has its own module turning the inner record into a `Transaction`.

`kong_log` is a Kong log-serializer record that came over the network (http-log, tcp-log, udp-log) instead of
through file-log: the same object, so the same Kong parser reads it (HTTP records, or stream sessions). `receive`
spools it masked (`shipper.sources.intake`), so the user found in its `Authorization` header is kept beside it:
the envelope's `identity` (`user_id`, `user_source`, `jwt_claims`, `basic_user`), read back here into the
Transaction; the identity processor keeps a user so found. A `kong_log` line without one (nothing to keep, or
spooled by an older kong-ship, unmasked) is identified by the processor as a log line is."""

from __future__ import annotations

import importlib
from typing import Any

from shipper.formats.decode import ParseError
from shipper.formats.kong import parse_kong
from shipper.formats.kong_stream import looks_like_kong_stream, parse_kong_stream
from shipper.model import Position, Transaction

IDENTITY = "identity"  # the envelope's member holding who made the call, found before the record was masked


def held_exactly(encoded: bytes) -> bytes:
    """A record's encoding (orjson's) copied to its exact size, to be held until its spool write: orjson's bytes
    keep their whole output buffer (4 KiB for `{}`, 32 KiB for a 3 KB record; a 300 KB body of `{}`s: +423 MiB)."""
    return bytes(memoryview(encoded))

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
        txn = parse_kong(record, position, fallback_id)
    elif looks_like_kong_stream(record):
        txn = parse_kong_stream(record, position, fallback_id)
    else:
        raise ParseError("unknown_format", "not a Kong record: no `request` or `session` object")
    identity = envelope.get(IDENTITY)
    if type(identity) is dict:
        _identified(txn, identity)
    return txn


def _identified(txn: Transaction, identity: dict[str, Any]) -> None:
    """The identity found when the record was spooled (strings and a claims object only: anything else is
    ignored, and the processor identifies the record from what is left)."""
    user_id, source = identity.get("user_id"), identity.get("user_source")
    if type(user_id) is str and user_id and type(source) is str:
        txn.user_id, txn.user_source = user_id, source
    claims = identity.get("jwt_claims")
    if type(claims) is dict and claims:
        txn.jwt_claims = claims
    basic = identity.get("basic_user")
    if type(basic) is str and basic:
        txn.basic_user = basic
