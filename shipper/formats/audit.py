"""Kong Enterprise audit records that `kong-ship audit tail` put in the spool → Transactions.

The poller spools each record wrapped: `{"entry": <the record as the Admin API returned it>, "signature_check":
"verified" | "unsigned" | "invalid" | null, "admin_url": "https://kong:8444", "workspace": NAME | null}`
(`signature_check` is null when no `--verify-key` was given and the record is signed). A bare record (no
`entry`) is accepted too.

- `/audit/requests` records become `kind="admin_request"`: method, path, status, client IP and time from the
  record; scheme, host and port from the Admin API's URL (so vendors that want an absolute URL get one).
- `/audit/objects` records become `kind="config_change"`.

Both: `user_id` is the RBAC user (`rbac_user_id`) when Kong recorded one; `started_at` is `request_timestamp`;
`event_id` is derived from the record's own id (`request_id` for a request, `id` for an object), so a resend is
the same event to the vendors. `details` is the record without its `signature`, with `signature` set to the
verification result instead (`verified`, `unsigned`, `invalid`, or `not_checked`). An object's `entity` and a
request's `payload` are JSON text in the record; they are decoded (when they are JSON). Secrets in `details` (a
credential's `key`, a `password`, `apikey` in `path`, …) are masked by the masking processor, like every record's;
`payload`, the request's body, is masked as a body (processors.masking.DETAIL_BODIES).

A record whose signature was found invalid raises `ParseError("bad_signature")`: the pipeline dead-letters it
(the whole spooled line is kept in the dead-letter file) instead of shipping it.

For `sources.kong_audit`, which reads the Admin API and spools the records: answers orjson refuses that are JSON
all the same (`lenient_json`, `storable`); the masks audit records need beyond every record's, applied before they
are spooled (`audit_masker`: Kong's secret fields; `mask_credential_path`; `mask_kong_conventions`: dotted form
names and "name:value" strings); and a record as the cursor and our messages see it (`placed_at`, `content_key`,
`shown_id`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import orjson

from shipper.formats.decode import ParseError
from shipper.formats.values import (
    epoch_ms, iso_epoch_ms, parse_query, port_field, split_target, split_url, status_field, to_int, to_number,
    to_str,
)
from shipper.model import Position, Transaction
from shipper.output import printable
from shipper.processors.masking import PAIR_LISTS, Masker, normalize
from shipper.processors.names import NAME_PARTS
from shipper.processors.params import MASK

NOT_CHECKED = "not_checked"


def parse_audit_request(
    record: dict[str, Any], envelope: dict[str, Any], position: Position | None, fallback_id: str
) -> Transaction:
    entry, admin_url, shared = _shared_fields(record, envelope, position, fallback_id, "request", "request_id")
    raw_path = to_str(entry.get("path"))
    path, query_string, fragment = split_target(raw_path)
    scheme, host, port, _ = split_url(admin_url) if admin_url else ("", "", None, "")
    return Transaction(
        **shared,
        kind="admin_request",
        method=to_str(entry.get("method")).upper(),
        scheme=scheme,
        host=host,
        port=port_field(port, "admin_url"),
        raw_path=raw_path,
        path=path,
        query_string=query_string,
        query=parse_query(query_string),
        fragment=fragment,
        client_ip=to_str(entry.get("client_ip")),
        status=status_field(entry.get("status"), "status"),
    )


def parse_audit_object(
    record: dict[str, Any], envelope: dict[str, Any], position: Position | None, fallback_id: str
) -> Transaction:
    _, _, shared = _shared_fields(record, envelope, position, fallback_id, "object", "id")
    return Transaction(**shared, kind="config_change")


# -- helpers -------------------------------------------------------------------------------------------------
def _shared_fields(
    record: dict[str, Any], envelope: dict[str, Any], position: Position | None, fallback_id: str, what: str, id_key: str
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(entry, admin_url, the Transaction fields both audit kinds fill); a record whose signature does not verify
    is refused."""
    entry, check, admin_url, workspace_name = _unwrap(record)
    record_id = to_str(entry.get(id_key))
    _refuse_invalid(check, what, record_id)
    rbac_user = to_str(entry.get("rbac_user_id")) or None
    shared = {
        "event_id": f"kong-audit-{what}-{record_id}" if record_id else _fallback(fallback_id),
        "source_format": "kong_audit",
        "position": position,
        "started_at": _started(entry, envelope),
        "workspace": to_str(entry.get("workspace")) or None,
        "workspace_name": workspace_name,
        "user_id": rbac_user,
        "user_source": "rbac" if rbac_user else None,
        "details": _details(entry, check),
    }
    return entry, admin_url, shared


def _unwrap(record: dict[str, Any]) -> tuple[dict[str, Any], str | None, str, str | None]:
    entry = record.get("entry")
    if isinstance(entry, dict):
        check = record.get("signature_check")
        admin_url = record.get("admin_url")
        workspace = record.get("workspace")
        return (
            entry,
            check if isinstance(check, str) else None,
            admin_url if isinstance(admin_url, str) else "",
            workspace if isinstance(workspace, str) and workspace else None,
        )
    return record, None, "", None


def _refuse_invalid(check: str | None, what: str, record_id: str) -> None:
    if check == "invalid":
        raise ParseError(
            "bad_signature",
            f"Kong audit {what} {record_id or '(no id)'}: the signature does not verify with --verify-key "
            "(the record was changed, or signed with another key)",
        )


def _fallback(fallback_id: str) -> str:
    if not fallback_id:
        raise ParseError("bad_fields", "Kong audit record without an id")
    return fallback_id


def _started(entry: dict[str, Any], envelope: dict[str, Any]) -> int | None:
    # Kong writes Unix seconds; milliseconds (a 13-digit value) and finer units are recognised rather than
    # landing in 50,000 AD. A value no unit makes a date falls back, like a missing one.
    seconds = to_number(entry.get("request_timestamp"))
    started = epoch_ms(seconds) if seconds is not None else None
    if started is not None:
        return started
    return iso_epoch_ms(envelope.get("received_at"))  # when the poller spooled it: better than no time at all


def _details(entry: dict[str, Any], check: str | None) -> dict[str, Any]:
    details = {k: v for k, v in entry.items() if k != "signature"}
    for key in ("entity", "payload", "old_entity"):
        if key in details:
            details[key] = _decoded_json(details[key])
    details["signature"] = check or (
        "unsigned" if entry.get("signature") in (None, "") else NOT_CHECKED
    )
    return details


def _decoded_json(value: Any) -> Any:
    """JSON text decoded; anything else as it is."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "["):
            try:
                return orjson.loads(text)
            except orjson.JSONDecodeError:
                return value
    return value


# -- reading the Admin API's answers ---------------------------------------------------------------------------
def lenient_json(content: bytes) -> Any:
    """An answer orjson refuses that is JSON all the same, or None. Kong's JSON encoder writes a string's bytes as
    they are, so a binary request body in one record's `payload` makes the whole page invalid UTF-8; a number
    beyond a double (`1e400`) is refused too. Refusing the page would hold back every record behind it on every
    poll until Kong's TTL deleted it: the page is read with the bytes kept (surrogate escapes: a signature is still
    checked over the bytes Kong signed, `audit_signature.canonical_bytes`), big integers as floats; what is spooled
    of such a record is made storable first (`storable`)."""
    try:
        return json.loads(content.decode("utf-8", "surrogateescape"), parse_int=_int64_or_float)
    except (ValueError, RecursionError):
        return None


def _int64_or_float(text: str) -> int | float:
    number = int(text)
    return number if -(1 << 63) <= number < (1 << 64) else float(number)


def storable(value: Any) -> Any:
    """`value` with what orjson cannot write replaced: undecodable bytes (surrogate escapes) by `?`."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


# -- the masks audit records need beyond every record's (`kong_audit.Poller` spools records masked with them) ---
# Admin API collections whose entities Kong also finds by their secret (their schema's endpoint_key): the path
# segment after one of them may be the secret itself.
CREDENTIAL_COLLECTIONS = frozenset(
    normalize(name) for name in ("key-auth", "key-auths", "key-auth-enc", "key-auths-enc", "oauth2_tokens")
)


def audit_masker(names: tuple[str, ...] = (), ship_raw_bodies: bool = False) -> Masker:
    """The masker audit records are spooled with: the user's names and the default ones (Kong's own secret fields
    among them, names.KONG_SECRET_FIELDS)."""
    return Masker(names, ship_raw_bodies)


def mask_credential_path(path: Any) -> Any:
    """An Admin API path with the segment after a credential collection masked (`/key-auths/*****`)."""
    if not isinstance(path, str) or "/" not in path:
        return path
    cut = min((i for i in (path.find("?"), path.find("#")) if i >= 0), default=len(path))
    segments = path[:cut].split("/")
    masked = False
    for i in range(len(segments) - 1):
        if segments[i + 1] not in ("", MASK) and normalize(segments[i]) in CREDENTIAL_COLLECTIONS:
            segments[i + 1] = MASK
            masked = True
    return "/".join(segments) + path[cut:] if masked else path


def mask_kong_conventions(record: dict[str, Any], masker: Masker) -> dict[str, Any]:
    """The record with the "name:value" texts of transformer plugins masked where the masks cannot see them: in a
    form body (`config.add.headers=x-api-key:…`, as `curl -d` configures a plugin). In JSON (a body, an entity)
    the masks do it themselves (masking.PAIR_LISTS), as a form's dotted secret names (`config.token=…`)."""
    value = record.get("payload")
    masked = _form_pairs_masked(value, masker) if isinstance(value, str) else value
    return record if masked is value else {**record, "payload": masked}


def _form_pairs_masked(text: str, masker: Masker) -> str:
    stripped = text.strip()
    if stripped[:1] in ("{", "[") or "=" not in stripped or any(c.isspace() for c in stripped):
        return text
    fields, changed = text.split("&"), False
    for i, field in enumerate(fields):
        name, eq, value = field.partition("=")
        pair_name, colon, rest = unquote_plus(value).partition(":")
        if not (eq and colon and rest) or PAIR_LISTS.isdisjoint(NAME_PARTS.split(unquote_plus(name))):
            continue
        if masker.names.is_secret(pair_name.strip()):
            fields[i], changed = f"{name}={quote_plus(pair_name)}:{MASK}", True
    return "&".join(fields) if changed else text


def entities_stripped(record: dict[str, Any]) -> dict[str, Any]:
    """The record with an entity snapshot that is JSON text behind whitespace stripped of it: the masks look into
    JSON text that starts with `{` or `[` (what Kong writes), and would pass ` {"key": …}` as plain text."""
    out = record
    for name in ("entity", "old_entity"):
        value = record.get(name)
        if isinstance(value, str) and value[:1].isspace() and value.lstrip()[:1] in ("{", "["):
            out = {**out, name: value.strip()}
    return out


# -- a record as the cursor and our messages see it (`kong_audit`) -----------------------------------------------
# How far ahead of our clock a request_timestamp may be and still place a record in time (Kong's clock may be ahead
# of ours; a millisecond value or 1e30 is not a second at all).
FUTURE_SLACK = 86_400


def placed_at(record: dict[str, Any], now: float) -> int | None:
    """The record's `request_timestamp` as Unix seconds, or None when it places the record nowhere (see
    `sources.kong_audit`'s docstring)."""
    ts = to_int(record.get("request_timestamp"))
    if ts is None or ts <= 0 or ts > now + FUTURE_SLACK:
        return None
    return ts


def content_key(record: dict[str, Any]) -> str:
    """What the cursor knows a record without an id by: a digest of its content (seen again on the next poll, it is
    the same record, not a new one)."""
    return "sha256:" + hashlib.sha256(orjson.dumps(storable(record), option=orjson.OPT_SORT_KEYS)).hexdigest()


def shown_id(rid: str | None) -> str | None:
    """A record's id as it may be printed: a forged one is the attacker's text, and its control characters (escape
    sequences, a newline that adds a line of its own) or bytes that are no UTF-8 would reach the terminal or our log,
    or stop `audit verify`'s report (UnicodeEncodeError); they are escaped as JSON escapes them."""
    if rid is None:
        return None
    text = printable(rid)
    return text if text.isprintable() else orjson.dumps(text).decode()[1:-1]
