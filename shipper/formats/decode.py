"""Bytes of one log line → a JSON object, repairing what real logs break, or a `ParseError` with a reason."""

from __future__ import annotations

import re
from typing import Any

import orjson


class ParseError(Exception):
    """A line kong-ship cannot understand. `reason` is a short stable code (used in the dead-letter file and
    in metrics), `detail` a human sentence."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# A backslash and what it escapes, so that an escaped backslash (`\\x41`: escape=json's text `\x41`) is never
# read as the start of a \xHH.
_NGINX_ESCAPE = re.compile(rb"\\(?:x([0-9A-Fa-f]{2})|.)", re.DOTALL)


def _unescape_nginx(match: re.Match) -> bytes:
    # Nginx's default escaping writes `"`, `\`, control bytes and bytes >= 0x80 as \xHH. Turn each back into
    # what JSON expects: `"` and `\` escaped, control bytes as \u00HH, other bytes raw (UTF-8 sequences). Any
    # other escape is JSON's own (an escape=json line that failed for another reason), kept as it is: replacing
    # the `\x6E` of its `\\x6E` made the text `\x6E` a newline.
    if match.group(1) is None:
        return match.group(0)
    byte = int(match.group(1), 16)
    if byte == 0x22:
        return b'\\"'
    if byte == 0x5C:
        return b"\\\\"
    if byte < 0x20 or byte == 0x7F:
        return b"\\u%04x" % byte
    return bytes((byte,))


def decode_line(line: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        obj = _repair(line, exc)
    if not isinstance(obj, dict):
        raise ParseError("not_object", f"the line is JSON but a {type(obj).__name__}, not an object")
    return obj


def _repair(line: bytes, exc: Exception) -> Any:
    if b"\\x" in line:
        fixed = _NGINX_ESCAPE.sub(_unescape_nginx, line)
        try:
            return orjson.loads(fixed.decode("utf-8", "replace"))
        except orjson.JSONDecodeError:
            pass
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        # Kong writes URL-decoded query values byte for byte, so a JSON record may carry invalid UTF-8 inside
        # a string: keep the record, replace the bad bytes with U+FFFD.
        try:
            return orjson.loads(line.decode("utf-8", "replace"))
        except orjson.JSONDecodeError:
            raise ParseError("invalid_utf8", "the line is not UTF-8 and not JSON") from None
    raise ParseError("not_json", str(exc).split(":", 1)[0][:200])
