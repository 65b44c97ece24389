"""Masks for what has no structure: dead-lettered lines, our own log lines and error messages.

A dead-lettered line is kept only as far as it can be masked (`mask_line`): when it decodes as JSON, it is
masked like an event (by key at any depth, header and query rules, URLs, bodies — `masking.Masker.mask_value`)
and re-serialized; then, JSON or not, the textual rules of `mask_text` apply:
- `Bearer …`, `Basic …`, `Digest …` credentials;
- JWT-shaped strings (`eyJ….….…`);
- the userinfo of URLs (`https://user:password@host`);
- `"name": value` pairs (JSON, also escaped inside a JSON string, also cut short by truncation), `Name: value`
  header lines and `name=value` parameters, whenever the name is a secret name under the one normalisation of
  `masking.normalize` (so `%6Bey=…` and `X-API-KEY: …` are caught too).
What none of these recognises stays as it was: a secret in free text under no name is not found.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import orjson

from shipper.processors.masking import BODY_FIELDS, MASK, Masker
from shipper.processors.names import normalize

_SCHEMES = re.compile(r"(?i)\b(bearer|basic|digest)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*:(?:\\?/){2})[^/?#\s\"'<>]+@")  # also JSON's `:\/\/`
# What a cut at the text's end (a dead-lettered line kept to its first 4 KiB) leaves of a secret whose end would
# have given it away: a URL's authority before its `@` (`https://svc:PASSW`), a JWT before its first `.`, a
# credential after its scheme's name shorter than the rule above needs. Masked from where each begins.
_CUT_TAIL = re.compile(
    r"(?i)\b(?P<url>[a-z][a-z0-9+.-]*:(?:\\?/){2})[^/?#\s\"'<>@]*$"
    r"|\beyJ[A-Za-z0-9_-]*$"
    r"|\b(?P<scheme>(?:bearer|basic|digest)\s+)[A-Za-z0-9._~+/=-]*$"
)
# `"name":` or `\"name\":` — the name only: its value is consumed by _JSON_VALUE when the name is secret, and
# pairs nested inside the value of a name that is not are still found.
_JSON_NAME = re.compile(r'(\\?")((?:[^"\\]|\\[^"])*)\1\s*:\s*')
_JSON_VALUE = re.compile(
    r'\\"(?:[^"\\]|\\[^"])*(?:\\"|$)'  # a string escaped inside a JSON string
    r'|"(?:[^"\\]|\\.)*(?:"|$)'  # a string (to the end of the text when truncation cut it)
    r"|\[[^\]]*\]?"  # a flat list
    r"|[^,{}\[\]\s\"][^,}\]\s]*"  # a number, a literal (an object is left to the names inside it)
)
# `Name: value` where a header starts: at a line's start or in a string (and, in a raw line, after a space —
# not in our own messages, where `no token: export …` is prose).
_HEADER_LINE = re.compile(r"(?m)(^|[{,;|\"])([A-Za-z0-9_-]{2,64})(\s*:[ \t]+)([^\r\n\"]*)")
_HEADER_IN_LINE = re.compile(r"(?m)(^|[\s{,;|\"])([A-Za-z0-9_-]{2,64})(\s*:[ \t]+)([^\r\n\"]*)")
# `#`, `?`: `seq=1#token=…`. The look-behind starts a name only where a run of name characters starts: from
# every position inside a long run with no `=` after it, the search was quadratic (20 kB of letters: 3.5 s).
_PARAM = re.compile(r"(?<![A-Za-z0-9_.%+\[\]-])([A-Za-z0-9_.%+\[\]-]+)=([^&\s;,\"'<>#?]*)")


def mask_text(text: str, masker: Masker | None = None, raw_line: bool = False, cut: bool = False) -> str:
    """`text` with credentials, tokens and secret-named values masked (see the module's docstring). A
    `raw_line` (a log line that is not JSON) is masked harder: the string values of `body` keys too (their
    secrets could sit under any name), and `Name: value` after a space. A `cut` text (the kept start of a line
    too long to keep whole) also loses what may be the start of a secret at its end (`_CUT_TAIL`)."""
    names = (masker or _default).names
    if cut:
        text = _CUT_TAIL.sub(lambda m: (m.group("url") or m.group("scheme") or "") + MASK, text)
    if "@" in text and (":/" in text or ":\\/" in text):
        text = _USERINFO.sub(rf"\1{MASK}@", text)
    if "eyJ" in text:
        text = _JWT.sub(MASK, text)
    text = _SCHEMES.sub(rf"\1\2{MASK}", text)
    if ":" in text:
        text = _json_pairs(text, names, raw_line)
        text = (_HEADER_IN_LINE if raw_line else _HEADER_LINE).sub(
            lambda m: m.group(1) + m.group(2) + m.group(3) + MASK if names.is_secret(m.group(2)) else m.group(0), text
        )
    if "=" in text:
        # `export KONG_ADMIN_TOKEN=...` in our own messages: an ellipsis is a placeholder, never a secret.
        text = _PARAM.sub(
            lambda m: f"{m.group(1)}={MASK}" if names.is_secret(m.group(1)) and m.group(2) != "..." else m.group(0),
            text,
        )
    return text


def _json_pairs(text: str, names: Any, bodies: bool) -> str:
    out: list[str] = []
    pos = 0
    for match in _JSON_NAME.finditer(text):
        if match.start() < pos:
            continue
        name = match.group(2)
        body = bodies and normalize(name) in BODY_FIELDS
        if not body and not names.is_secret(name):
            continue
        start = match.end()
        if text.startswith("{", start):
            if body:
                continue  # a body that is an object: its pairs are masked by name like the others
            end = _object_end(text, start)  # a secret name's object (`"jwk": {…}`) goes whole
        else:
            value = _JSON_VALUE.match(text, start)
            if value is None or value.group(0) in ("null", '"*****"', '\\"*****\\"'):
                continue
            if body and not value.group(0).startswith(('"', '\\"')):
                continue
            end = value.end()
        quote = match.group(1)
        out.append(text[pos:start])
        out.append(f"{quote}{MASK}{quote}")
        pos = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _object_end(text: str, start: int) -> int:
    """Where the JSON object starting at `start` ends (braces in strings skipped); the text's end if it is cut."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            in_string = not in_string
        elif not in_string and c == "{":
            depth += 1
        elif not in_string and c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def mask_line(line: bytes, masker: Masker | None = None, cut: bool = False) -> str:
    """A dead-lettered line, masked as far as it can be (JSON by structure, then textually); `cut`: only its
    start was kept (see `mask_text`)."""
    masker = masker or _default
    text = line.decode("utf-8", "backslashreplace")
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, (dict, list)):
        return mask_text(orjson.dumps(masker.mask_value(value)).decode(), masker)
    return mask_text(text, masker, raw_line=True, cut=cut)


def url_has_userinfo(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return "@" in url


def redact_url(url: str) -> str:
    """`url` with its userinfo and secret parameters masked, for messages."""
    return _default.mask_url(url)


_default = Masker()
