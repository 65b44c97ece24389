"""A fake Kong Enterprise Admin API serving the audit log: `GET /audit/requests`, `GET /audit/objects`, and the
same under a workspace (`/<workspace>/audit/...`).

Built to the reference (docs/kong-audit.md): records newest first; `after_audit_log_filter` (inclusive) and
`before_audit_log_filter` (exclusive), each Unix seconds or RFC 3339 without fractions; paging with `size`
(default 100, at most 1000) and an opaque `offset`, and a `next` link while more remain. The link carries only
`offset` and `size` (not the filter), so a client must put its filter back — the strict reading. The
`Kong-Admin-Token` header is checked (401 otherwise).

Records are signed as Kong signs them when given an RSA private key (PKCS#1 v1.5, SHA-256, base64) over the
canonical form, computed here by a separate, literal transcription of Kong's documented Lua `serialize` (not
shipper's code, so each checks the other); a record can also be served unsigned, or tampered after signing.
`signed=True` signs the whole record (the documented form); `signed="before-insert"` signs it as Kong's code
does, before the database adds `request_timestamp` and an object's `id`.
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from .httpfake import FakeHTTPServer, Request, Response, json_response

DEFAULT_WORKSPACES = {"default": "fd51ce6e-59c0-4b6b-b991-aa708a9ff4d2", "team-a": "0da4afe7-44ad-4e81-a953-5d2923ce68ae"}


def kong_serialize(data: dict[str, Any]) -> list[str]:
    """Kong's documented `serialize` (Lua), line for line: clear signature/expire/ttl on the table, walk the
    keys sorted, recurse into tables, skip nulls, stringify the rest; nested parts are spliced in."""
    data = dict(data)
    data.pop("signature", None)
    data.pop("expire", None)
    data.pop("ttl", None)
    parts: list[str] = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, dict):
            parts.extend(kong_serialize(value))
        elif isinstance(value, list):
            parts.extend(kong_serialize({i + 1: v for i, v in enumerate(value)}) if value else [])
        elif value is None:
            continue
        elif isinstance(value, bool):
            parts.append("true" if value else "false")
        else:
            parts.append(str(value))
    return parts


def kong_sign(private_key, record: dict[str, Any]) -> str:
    canonical = "|".join(kong_serialize(record)).encode()
    return base64.b64encode(private_key.sign(canonical, padding.PKCS1v15(), hashes.SHA256())).decode()


def _when(value: str) -> int | None:
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


class FakeKongAdmin(FakeHTTPServer):
    def __init__(
        self,
        token: str | None = "admin-token",
        *,
        private_key=None,
        workspaces: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        self.private_key = private_key
        self.workspaces = dict(DEFAULT_WORKSPACES if workspaces is None else workspaces)
        self.audit: dict[str, list[dict[str, Any]]] = {"requests": [], "objects": []}
        self._seq = 0

    # -- the audit log ----------------------------------------------------------------------------------------
    def _add(self, endpoint: str, record: dict[str, Any], signed: bool | str, tamper: bool) -> dict[str, Any]:
        if signed:
            assert self.private_key is not None, "give the fake a private_key to sign records"
            if signed == "before-insert":
                before = {k: v for k, v in record.items() if k not in ("request_timestamp", "id")}
                record["signature"] = kong_sign(self.private_key, before)
            else:
                record["signature"] = kong_sign(self.private_key, record)
        if tamper:  # changed after signing: what an attacker with database access would do
            if endpoint == "requests":
                record["method"] = "GET" if record["method"] != "GET" else "DELETE"
            else:
                record["operation"] = "delete" if record["operation"] != "delete" else "update"
        with self._lock:
            self._seq += 1
            self.audit[endpoint].append((self._seq, record))  # type: ignore[arg-type]
        return copy.deepcopy(record)

    def add_request(
        self,
        ts: int,
        *,
        signed: bool | str = True,
        tamper: bool = False,
        method: str = "POST",
        path: str = "/consumers",
        status: int = 201,
        payload: str | None = None,
        rbac_user_id: str | None = None,
        workspace: str = "default",
        **extra: Any,
    ) -> dict[str, Any]:
        record = {
            "client_ip": "10.0.0.7",
            "method": method,
            "path": path,
            "payload": payload,
            "rbac_user_id": rbac_user_id,
            "request_id": secrets.token_urlsafe(24)[:32],
            "request_timestamp": ts,
            "signature": None,
            "status": status,
            "ttl": 2591995,
            "workspace": self.workspaces[workspace],
            **extra,
        }
        return self._add("requests", record, signed, tamper)

    def add_object(
        self,
        ts: int,
        *,
        signed: bool | str = True,
        tamper: bool = False,
        dao_name: str = "consumers",
        operation: str = "create",
        entity: dict[str, Any] | None = None,
        request_id: str | None = None,
        rbac_user_id: str | None = None,
        workspace: str = "default",
    ) -> dict[str, Any]:
        entity = entity or {"id": str(uuid.uuid4()), "username": f"user-{ts}", "created_at": ts}
        record = {
            "dao_name": dao_name,
            "entity": json.dumps(entity),
            "entity_key": entity.get("id"),
            "expire": (ts + 2592000) * 1000,
            "id": str(uuid.uuid4()),
            "operation": operation,
            "rbac_user_id": rbac_user_id,
            "request_id": request_id or secrets.token_urlsafe(24)[:32],
            "request_timestamp": ts,
            "signature": None,
            "workspace": self.workspaces[workspace],
        }
        return self._add("objects", record, signed, tamper)

    def add_record(self, endpoint: str, record: dict[str, Any], *, signed: bool | str = True) -> dict[str, Any]:
        """Any record, as given (an `entity` that is odd JSON text, say), signed unless told otherwise."""
        return self._add(endpoint, dict(record), signed, False)

    def audit_requests(self) -> list[str]:
        """The paths (with query) of the audit requests received, in order."""
        with self._lock:
            return [r.path for r in self.requests if "/audit/" in r.path]

    # -- HTTP -------------------------------------------------------------------------------------------------
    def respond(self, req: Request) -> Response:
        if self.token is not None and req.headers.get("kong-admin-token") != self.token:
            return self.refuse(401, "Invalid credentials. Token or User credentials required")
        if req.method != "GET":
            return self.refuse(405, "Method not allowed")
        url = urlsplit(req.path)
        segments = [s for s in url.path.split("/") if s]
        workspace_id = None
        prefix = ""
        if len(segments) == 3:
            prefix = f"/{segments[0]}"
            if segments[0] not in self.workspaces:
                return self.refuse(404, f"Workspace '{segments[0]}' not found")
            workspace_id = self.workspaces[segments[0]]
            segments = segments[1:]
        if len(segments) != 2 or segments[0] != "audit" or segments[1] not in self.audit:
            return self.refuse(404, "Not found")
        endpoint = segments[1]
        args = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        after = before = None
        if "after_audit_log_filter" in args:
            after = _when(args["after_audit_log_filter"])
            if after is None:
                return self.refuse(400, "after_audit_log_filter: expected Unix seconds or RFC 3339")
        if "before_audit_log_filter" in args:
            before = _when(args["before_audit_log_filter"])
            if before is None:
                return self.refuse(400, "before_audit_log_filter: expected Unix seconds or RFC 3339")
        size_text = args.get("size", "100")
        if not size_text.isdigit() or not 1 <= int(size_text) <= 1000:
            return self.refuse(400, "size must be a number between 1 and 1000")
        size = int(size_text)
        start = 0
        if "offset" in args:
            try:
                start = int(base64.urlsafe_b64decode(args["offset"].encode()).decode().removeprefix("at:"))
            except ValueError:
                return self.refuse(400, "invalid offset")
        with self._lock:
            rows = sorted(self.audit[endpoint], key=lambda item: (item[1]["request_timestamp"], item[0]), reverse=True)
            rows = [copy.deepcopy(r) for _, r in rows]
        rows = [
            r for r in rows
            if (workspace_id is None or r["workspace"] == workspace_id)
            and (after is None or r["request_timestamp"] >= after)
            and (before is None or r["request_timestamp"] < before)
        ]  # fmt: skip
        page = rows[start : start + size]
        following = None
        if start + size < len(rows):
            token = base64.urlsafe_b64encode(f"at:{start + size}".encode()).decode()
            following = f"{prefix}/audit/{endpoint}?offset={token}&size={size}"
        return json_response(200, {"data": page, "total": len(rows), "next": following})
