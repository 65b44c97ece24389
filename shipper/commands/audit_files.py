"""The audit records `kong-ship audit verify FILE...` checks: read from files that hold what the Admin API answered
(`GET /audit/requests` or `/audit/objects`), a JSON array of records, or one record per line (kong-ship's audit
spool files too, whose envelopes are opened). A file that is empty, or holds JSON but no audit record (an access
log), is a usage error, not "0 verified" (an answer of no records, `{"data": []}`, is 0 records)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from shipper.errors import ConfigError
from shipper.formats.audit import lenient_json


STDIN = "standard input"  # how `-` is named in messages and `where`


def records_in_files(files: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """(endpoint, record, where: `path#n` or `path:line`) for every audit record of `files`, in order; `-` is
    standard input (`curl .../audit/requests | kong-ship audit verify --public-key k.pem -`)."""
    for name in files:
        path = STDIN if name == "-" else name
        try:
            # descriptor 0 itself: sys.stdin is None when kong-ship started without one (then /dev/null, cli.py)
            with open(0 if name == "-" else name, "rb", closefd=name != "-") as handle:
                data = handle.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        if not data.strip():  # truncated, or the wrong file: "0 records, 0 invalid" would pass it as checked
            raise ConfigError(f"{path}: is empty: expected what /audit/requests or /audit/objects answer")
        try:
            whole = orjson.loads(data)
        except orjson.JSONDecodeError:
            whole = lenient_json(data)  # a saved answer whose payload holds bytes that are no UTF-8, as Kong writes
        found: list[tuple[dict[str, Any], str]] = []
        if whole is not None:
            found = [(record, f"{path}#{i + 1}") for i, record in enumerate(records_of(whole, path))]
        else:
            for number, line in enumerate(data.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    value = lenient_json(line)
                    if value is None:
                        raise ConfigError(f"{path}:{number}: not JSON ({exc}): expected audit records") from None
                found.extend((record, f"{path}:{number}") for record in records_of(value, f"{path}:{number}"))
        if found and not any(looks_like_audit(record) for record, _ in found):
            # e.g. an access log: "4 records: 0 verified, 4 unsigned" and exit 0 would pass it as checked
            raise ConfigError(
                f"{path}: holds no Kong audit records ({len(found):,} JSON object(s) without any of "
                f"{', '.join(AUDIT_KEYS)}; an access log?): expected what /audit/requests or /audit/objects answer"
            )
        for record, where in found:
            yield endpoint_of(record), record, where


def endpoint_of(record: dict[str, Any]) -> str:
    """Which endpoint a record came from, by its shape."""
    return "objects" if ("dao_name" in record or "entity" in record or "operation" in record) else "requests"


# Every audit record has some of these (requests: request_id, request_timestamp, signature; objects: dao_name,
# operation, entity); an access log record has none of them at its top level.
AUDIT_KEYS = ("request_id", "request_timestamp", "signature", "dao_name", "operation", "entity")


def looks_like_audit(record: dict[str, Any]) -> bool:
    return any(key in record for key in AUDIT_KEYS)


def records_of(value: Any, where: str) -> list[dict[str, Any]]:
    """The audit records in one JSON value: an Admin API answer, an array, a record, or a spool envelope."""
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict) and "spool" in item and isinstance(item.get("record"), dict):
            item = item["record"]
        if isinstance(item, dict) and isinstance(item.get("entry"), dict):
            item = item["entry"]
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected audit records (JSON objects), got {type(item).__name__}")
        out.append(item)
    return out
