"""Poison lines: one of each kind of value that once stopped a reader for good (found by a mutation fuzzer over
the example logs), each built from a numbered `gen` record, with what must become of it.

`KINDS` maps a name to (make(seq) -> line bytes, expected) where expected is, per sink, `None` (the record is
shipped: a recognisable unit was made sane, or the bad part is ignored) or the dead-letter reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gen

SHIPPED = None


def _kong(seq: int, **changes: Any) -> dict[str, Any]:
    record = gen.kong_record(seq, consumer=f"user-{seq}")
    for dotted, value in changes.items():
        node = record
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return record


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def nested(depth: int) -> str:
    """JSON text of `depth` nested arrays, around a 1 (json.dumps would recurse as deep as Python allows)."""
    return "[" * depth + "1" + "]" * depth


def _with_raw(record: dict[str, Any], dotted: str, raw_json: str) -> bytes:
    """The record's line with the value at `dotted` replaced by raw JSON text (for values Python cannot dump)."""
    marker = "__kong_ship_raw__"
    node = record
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = marker
    return _line(record).replace(f'"{marker}"'.encode(), raw_json.encode())


def _nginx(seq: int, **changes: str) -> bytes:
    record = gen.nginx_record(seq)
    record.update(changes)
    return gen.nginx_line(record)


def _started(seq: int) -> int:
    return gen.BASE_STARTED_AT + seq


Make = Callable[[int], bytes]
KINDS: dict[str, tuple[Make, dict[str, str | None]]] = {}


def _kind(name: str, make: Make, segment: str | None, webhook: str | None = "same") -> None:
    KINDS[name] = (make, {"segment": segment, "webhook": segment if webhook == "same" else webhook})


# Time stamps in another unit: recognised and made milliseconds, shipped.
_kind("started_at_us", lambda s: _line(_kong(s, started_at=_started(s) * 1000)), SHIPPED)
_kind("started_at_ns", lambda s: _line(_kong(s, started_at=_started(s) * 1_000_000)), SHIPPED)
_kind("started_at_s", lambda s: _line(_kong(s, started_at=_started(s) / 1000)), SHIPPED)
_kind("nginx_msec_in_ms", lambda s: _nginx(s, msec=str(_started(s))), SHIPPED)
# Numbers no unit makes sane: dead-lettered, naming the field.
_kind("started_at_1e300", lambda s: _with_raw(_kong(s), "started_at", "1e300"), "bad_value")
_kind("status_1e300", lambda s: _with_raw(_kong(s), "response.status", "1e300"), "bad_value")
_kind("status_str_1e30", lambda s: _line(_kong(s, **{"response.status": "1e30"})), "bad_value")
_kind("size_25_digits", lambda s: _with_raw(_kong(s), "response.size", "1234567890123456789012345"), "bad_value")
_kind("port_25_digits", lambda s: _line(_kong(s, **{"request.url": "https://api.example.com:1234567890123456789012345/x?seq=%d" % s})), "bad_value")
_kind("latency_nan", lambda s: _line(_kong(s, **{"latencies.request": "nan"})), "bad_value")
_kind("latency_inf", lambda s: _line(_kong(s, **{"latencies.kong": "inf"})), "bad_value")
_kind("nginx_status_1e30", lambda s: _nginx(s, status="1e30"), "bad_value")
_kind("nginx_msec_1e300", lambda s: _nginx(s, msec="1e300"), "bad_value")
# Nesting orjson reads (up to 1,024 levels) but cannot write (254). In the query object (which Kong never nests)
# it is masked whole past params.MAX_NESTING levels, as anything the masks cannot walk: every sink ships it. In a
# header, which the webhook sends as it is: the webhook dead-letters the event it cannot encode, and Segment,
# which sends no headers, ships it.
_kind("query_nested_300", lambda s: _with_raw(_kong(s), "request.querystring.deep", nested(300)), SHIPPED)
_kind("query_nested_1000", lambda s: _with_raw(_kong(s), "request.querystring.deep", nested(1000)), SHIPPED)
_kind("header_nested_300", lambda s: _with_raw(_kong(s), "request.headers.x-deep", nested(300)), SHIPPED, "too_deep")
# A Bearer JWT whose payload carries a 30-digit integer claim: the token is ignored, the call is shipped.
_kind(
    "jwt_30_digit_claim",
    lambda s: _line(_kong(s, jwt=gen.make_jwt({"sub": "mallory", "n": 123456789012345678901234567890}))),
    SHIPPED,
)
# Past orjson's reading depth: not JSON at all.
_kind("nested_1100", lambda s: _with_raw(_kong(s), "request.body", nested(1100)), "not_json")
