"""Log formats: one line of bytes → one `Transaction`, or a `ParseError` saying why not.

`Parser` decodes the JSON (with the repairs real logs need, see `decode`), detects the format per line unless
told, and hands the object to the format's module: `kong` (HTTP records), `kong_stream` (TCP/TLS/UDP sessions,
also under `--format kong`), `nginx`, or a spooled record's. Whatever the format, a record without a usable
start time leaves here dated when the container runtime wrote it (`logged_at`, container logs) or else when it
was read (`Transaction.started_at_estimated`).

`cri` and `docker` name container log framings (`shipper/sources/container.py`), not formats: the file source
unwraps the lines, and what they hold is detected as with `auto`.
"""

from __future__ import annotations

import time
from typing import Any

from shipper.formats.decode import ParseError, decode_line
from shipper.formats.kong import looks_like_kong, parse_kong
from shipper.formats.kong_stream import looks_like_kong_stream, parse_kong_stream
from shipper.formats.nginx import looks_like_nginx, nginx_fields, parse_nginx
from shipper.formats.spooled import looks_spooled, parse_spooled
from shipper.model import Position, Transaction

FORMATS = ("auto", "kong", "nginx", "cri", "docker")
CONTAINER_FRAMINGS = ("cri", "docker")

__all__ = ["CONTAINER_FRAMINGS", "FORMATS", "ParseError", "Parser"]


class Parser:
    def __init__(self, fmt: str = "auto", nginx_field_map: dict[str, str] | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.format = "auto" if fmt in CONTAINER_FRAMINGS else fmt
        self.nginx_fields = nginx_fields(nginx_field_map)

    def parse(self, line: bytes, position: Position | None = None, logged_at: int | None = None) -> Transaction:
        """`logged_at`: when the container runtime wrote the line (epoch ms), for a record without a start time."""
        record = decode_line(line)
        fallback_id = f"{position.file_id}-{position.offset}" if position else ""
        try:
            txn = self._dispatch(record, position, fallback_id)
        except ParseError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            # A record of the right shape whose fields have the wrong types: never let data kill the shipper.
            raise ParseError("bad_fields", f"{type(exc).__name__}: {exc}"[:200]) from None
        if txn.started_at is None and logged_at is not None:
            # The runtime wrote the line when Kong logged the request, at its end: its start is that minus the
            # request's latency, when known. A real time of the call, not an estimate (--since/--until apply).
            txn.started_at = logged_at - int(txn.latency_request or 0)
        elif txn.started_at is None:
            # One rule for every format and sink: a record with no usable start time is dated when it was read,
            # and says so (vendors need a time; each sink inventing its own made the same line differ).
            txn.started_at = int(time.time() * 1000)
            txn.started_at_estimated = True
        return txn

    def _dispatch(self, record: dict[str, Any], position: Position | None, fallback_id: str) -> Transaction:
        fmt = self.format
        if fmt == "auto" and looks_spooled(record):
            return parse_spooled(record, position, fallback_id)
        if fmt == "kong" or (fmt == "auto" and looks_like_kong(record)):
            if not isinstance(record.get("request"), dict):
                if looks_like_kong_stream(record):
                    return parse_kong_stream(record, position, fallback_id)
                raise ParseError("unknown_format", "not a Kong record: no `request` or `session` object")
            return parse_kong(record, position, fallback_id)
        if fmt == "nginx" or (fmt == "auto" and looks_like_nginx(record, self.nginx_fields)):
            if not looks_like_nginx(record, self.nginx_fields):
                raise ParseError("unknown_format", "not an Nginx record: no method or request_uri field")
            return parse_nginx(record, position, fallback_id, self.nginx_fields)
        if fmt == "auto" and looks_like_kong_stream(record):
            return parse_kong_stream(record, position, fallback_id)
        raise ParseError("unknown_format", "neither a Kong file-log record (HTTP or stream) nor a mapped Nginx JSON line")
