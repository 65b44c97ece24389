"""Kong event-hook deliveries that `kong-ship receive` put in the spool → `Transaction(kind="event_hook")`.

What Kong's `webhook` handler POSTs (kong/enterprise_edition/event_hooks.lua) is the event's data with `event`
and `source` added: for `crud` events `{operation, entity, old_entity, schema, event, source}`, for balancer
health `{upstream_id, ip, port, hostname, health, event, source}`, for a plugin's events its own fields, and
on creating a hook a `ping` (`{source: "kong:event_hooks", event: "ping", operation, event_hooks}`). None of
them carries an id or a time, so:

- `started_at` is the event's own `timestamp`/`time` when it has one (Unix seconds, ms, µs or ns, or ISO-8601)
  and it is a date from 1970 to 9999, else the moment the receiver made it durable (the envelope's `received_at`);
- `event_id` is a UUID derived from the envelope (`received_at` and the spool sequence number): stable when the
  spool is read again after a crash, so vendors drop the resend, and distinct for two identical events (two
  balancer health flips to the same state are two events). A copy Kong itself sent twice is two events.

`details` is the event. Entity data rides along with CRUD events: the values of secret-bearing keys in it
(credentials' `key`, `secret`, `password`, the hook's own `config.secret`, an `Authorization` header in
`config.headers`, …) are masked at any depth by the masking processor, like every record's. They are masked
before the receiver writes the event to its spool too, with the run's masker (`spool_encoder`): the default
names and the user's `--mask-header`, `--mask-query`, `--mask-body-key`, as Kong's http-log records are
(`sources.intake`), so a name the user gave never reaches the disk either.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from shipper.formats.decode import ParseError
from shipper.formats.spooled import held_exactly
from shipper.formats.values import epoch_ms, iso_epoch_ms
from shipper.model import Position, Transaction

if TYPE_CHECKING:
    from shipper.processors.masking import Masker

_NAMESPACE = uuid.UUID("6d1f3b52-2a4e-5c1b-9a0e-6b6f6e672d73")  # kong-ship event hooks


def parse_event_hook(
    record: dict[str, Any], envelope: dict[str, Any], position: Position | None, fallback_id: str
) -> Transaction:
    received_at = envelope.get("received_at")
    received_ms = _time_ms(received_at)
    seq = envelope.get("seq")
    if seq is not None and isinstance(received_at, str):
        event_id = str(uuid.uuid5(_NAMESPACE, f"{received_at}/{seq}"))
    elif fallback_id:
        event_id = fallback_id
    else:
        raise ParseError("bad_fields", "event hook envelope without seq or received_at")
    own = next((t for t in (_time_ms(record.get(k)) for k in ("timestamp", "time")) if t is not None), None)
    return Transaction(
        event_id=event_id,
        source_format="event_hook",
        position=position,
        started_at=own if own is not None else received_ms,
        kind="event_hook",
        details=record,
    )


def spool_encoder(masker: Masker) -> Callable[[dict[str, Any]], bytes]:
    """How `receive` stores an event hook: masked with `masker`, the run's (the one its dead-letter file and its
    masking processor use), then encoded. An error (a record too deep to encode) fails the delivery, which is
    then refused and nothing of it stored."""

    def encode(event: dict[str, Any]) -> bytes:
        return held_exactly(orjson.dumps(masker.mask_value(event)))

    return encode


def _time_ms(value: Any) -> int | None:
    """Epoch ms from Unix seconds, ms, µs or ns, or an ISO-8601 string (no zone = UTC); None if not a time
    from 1970 to 9999 (then the time of receipt stands in: the event itself is fine)."""
    kind = type(value)
    if kind is int or kind is float:
        return epoch_ms(value)
    return iso_epoch_ms(value)
