"""The claims of a JSON Web Token, read without verifying it (as kong-segment-log did): identity only wants to
know who the caller said they were, never to trust it.

Not PyJWT: its `decode(..., options={"verify_signature": False})` gave the same answers, but importing it imports
`cryptography` (its algorithms), 60-90 ms of every start of kong-ship, which verifies nothing. The rules are
PyJWT 2.15's for an unverified token, so a token names the same user as before (tests/test_jwt_payload.py
compares the two on generated tokens):

- compact serialization: `header.payload.signature`, each segment base64url over its alphabet only, with no
  padding or its correct padding, and in canonical form (re-encoding gives the segment back);
- the header a JSON object whose `kid`, if any, is a string and whose `crit`, if any, is a non-empty list of the
  extensions PyJWT knows (`b64`) that the header also holds; `"b64": false` (a detached payload) is refused;
- the payload a JSON object, read by Python's `json` (which takes `NaN`, and integers of any size, as PyJWT did).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_KNOWN_CRIT = frozenset({"b64"})


class NotAToken(ValueError):
    """The text is not a token whose payload can be read."""


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of `token` as a dict; NotAToken (or another ValueError, RecursionError) when it has none."""
    raw = token.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    signing_input, _, signature = raw.rpartition(b".")
    header_segment, dot, payload_segment = signing_input.partition(b".")
    if not dot:
        raise NotAToken("not enough segments")
    header = json.loads(_segment(header_segment))
    if not isinstance(header, dict):
        raise NotAToken("the header is not a JSON object")
    _check_header(header)
    if header.get("b64", True) is False:
        raise NotAToken("a detached payload (b64: false)")
    payload = _segment(payload_segment)
    _segment(signature)
    claims = json.loads(payload)
    if not isinstance(claims, dict):
        raise NotAToken("the payload is not a JSON object")
    return claims


def _segment(segment: bytes) -> bytes:
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1:
        raise NotAToken("bad padding")
    if not _ALPHABET.issuperset(stripped):
        raise NotAToken("not base64url")
    try:
        decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except binascii.Error as exc:
        raise NotAToken("not base64url") from exc
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
        raise NotAToken("not in canonical form")  # trailing bits set: another text of the same bytes
    return decoded


def _check_header(header: dict[str, Any]) -> None:
    if "kid" in header and not isinstance(header["kid"], str):
        raise NotAToken("kid is not a string")
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit:
            raise NotAToken("crit is not a non-empty list")
        for extension in crit:
            if not isinstance(extension, str) or extension not in _KNOWN_CRIT or extension not in header:
                raise NotAToken("an unknown or missing critical extension")
