"""Kong Enterprise's audit log, read from the Admin API (`GET /audit/requests`, `GET /audit/objects`).

`AdminClient` pages through one endpoint (newest first; `size`, and the answer's `next` link until there is
none), with `Kong-Admin-Token` and TLS verification (on by default; `--ca-file` for a private CA).

`Poller.poll()` fetches what is new since the `Cursor`, appends it to the spool in chronological order (fsynced)
and only then advances the cursor, so a crash at any point resends at most, never loses. The cursor keeps, per
endpoint, the newest `request_timestamp` seen and the ids seen within LOOKBACK seconds before it: Kong's
`after_audit_log_filter` is inclusive and has a resolution of one second, and Kong takes a record's timestamp
before its database commits it (a worker, or another node, that took second T-1 may commit after one that took T
was read), so the next poll asks from LOOKBACK seconds before the newest second again and skips the records it
already has by id (`request_id` for requests, `id` for objects): records written late are still picked up. A record
without an id is known by a digest of its content instead.

A `request_timestamp` that places no record in time — missing, not a number, not positive, or later than a day
from now (milliseconds, `1e30`) — never moves the cursor: one such record would otherwise put it past every record
Kong writes from then on, and each of them would be skipped as already shipped. Such records are remembered by id
(`stray`) for as long as the Admin API keeps returning them, and shipped once.

Each record is spooled masked (the spool is state on disk) with the run's `Masker`, the user's `--mask-*` names
included (the default names when the Poller is given none), after its signature was checked over the record as
Kong signed it. Audit records hold Kong's own credentials, so the masker (`formats.audit.audit_masker`) knows
the names of Kong entity fields that hold a secret under a name no default matches (`KONG_SECRET_FIELDS`: a
certificate's `key_alt`, …), and the segment of an Admin API path that addresses a credential by its secret
(`/key-auths/<the key>`, `/consumers/bob/key-auth/<the key>`, `/oauth2_tokens/<the token>`: Kong takes the key
itself in place of the id) is masked (`mask_credential_path`).
"""

from __future__ import annotations

import logging
import re
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import httpx
import orjson

from shipper.delivery.trust import tls_context
from shipper.errors import ConfigError, FatalError
from shipper.formats import audit_signature
from shipper.formats.audit import (
    audit_masker, content_key, entities_stripped, lenient_json, mask_credential_path, mask_kong_conventions, placed_at,
    shown_id, storable,
)
from shipper.processors.masking import BODY_FIELDS, DETAIL_BODIES, Masker
from shipper.processors.redact import redact_url
from shipper.sources.checkpoints import write_atomically

log = logging.getLogger("kong-ship")

TOKEN_ENV = "KONG_ADMIN_TOKEN"
TOKEN_HEADER = "Kong-Admin-Token"
MAX_PAGE_SIZE = 1000  # the Admin API's own maximum
MAX_PAGES = 100_000  # a guard against a server that never stops answering `next`
MAX_ANSWER_BYTES = 16 << 20  # a page's answer read at most; a larger one is asked for in smaller pages

# endpoint → (spool kind, the field that identifies a record)
ENDPOINTS = {"requests": ("audit_request", "request_id"), "objects": ("audit_object", "id")}
# Seconds before the newest request_timestamp seen that the next poll asks from again (see the module's docstring).
LOOKBACK = 15
HELD_IN_MEMORY = 4 << 20  # bytes of a poll's new records held in memory; beyond, in a temporary file


class AnswerTooLarge(Exception):
    """A page's answer is larger than MAX_ANSWER_BYTES: asked again in smaller pages."""


class AdminUnavailable(Exception):
    """The Admin API could not be read this time (connection refused, timeout, 5xx): try again later."""


def record_id(endpoint: str, record: dict[str, Any]) -> str | None:
    value = record.get(ENDPOINTS[endpoint][1])
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


class AdminClient:
    def __init__(
        self,
        admin_url: str,
        token: str | None,
        *,
        workspace: str | None = None,
        ca_file: str | None = None,
        timeout: float = 30.0,
        page_size: int = MAX_PAGE_SIZE,
    ):
        try:  # a port that is no number (or out of range) and an unclosed `[` raised a traceback, not exit 2
            parts = urlsplit(admin_url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
            httpx.URL(admin_url)
        except (ValueError, httpx.InvalidURL):
            valid = False
        if not valid:
            raise ConfigError(
                f"--admin-url {redact_url(admin_url)}: expected an http:// or https:// URL, e.g. http://127.0.0.1:8001"
            )
        if "?" in admin_url or "#" in admin_url:
            # The paths are appended to it (a query would end up before them), and its text is shown in messages
            # and shipped with every record (`admin_url`): a key in it would leave with them.
            base = re.split(r"[?#]", admin_url, maxsplit=1)[0]
            raise ConfigError(
                f"--admin-url {redact_url(base)}?…: a query string or fragment is not supported; give the Admin "
                "API's base URL (the token goes in --admin-token-file or KONG_ADMIN_TOKEN)"
            )
        self.base = admin_url.rstrip("/")
        self.base_path = parts.path.rstrip("/")
        self.shown = redact_url(self.base)  # userinfo masked, as in every message
        self.workspace = workspace.strip("/") if workspace else None
        self.prefix = f"/{quote(self.workspace, safe='')}" if self.workspace else ""
        self.page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        self.has_token = bool(token)
        # The sinks' trust store (delivery.trust.tls_context): the default CAs plus --ca-file's, loaded once a process,
        # so the help's and the README's "on top of the default ones" holds for the Admin API too.
        try:
            verify = tls_context(ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"--ca-file {ca_file}: cannot load it: {reason}") from None
        headers = {"Accept": "application/json", "User-Agent": "kong-ship"}
        if token:
            headers[TOKEN_HEADER] = token
        self._client = httpx.Client(headers=headers, verify=verify, timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    # -- paging ----------------------------------------------------------------------------------------------
    def pages(self, endpoint: str, after: int | None = None) -> Iterator[list[dict[str, Any]]]:
        """Each page of `/audit/{endpoint}` (newest first), from `after` (Unix seconds, inclusive) on."""
        path = f"{self.prefix}/audit/{endpoint}"
        params: dict[str, str] = {"size": str(self.page_size)}
        if after is not None:
            params["after_audit_log_filter"] = str(after)
        seen: set[str] = set()
        size = self.page_size
        for _ in range(MAX_PAGES):
            try:
                answer = self._get(path, {**params, "size": str(size)})
            except AnswerTooLarge:
                if size == 1:
                    raise AdminUnavailable(
                        f"{self.shown}{path}: one audit record is larger than {MAX_ANSWER_BYTES >> 20} MiB"
                    ) from None
                size //= 2  # the same page again, in smaller ones: from its offset on, the rest of this poll
                continue
            data: list[Any] = answer["data"]  # _get checked it is there, a list
            yield [r for r in data if isinstance(r, dict)]
            link = answer.get("next")
            if not link or not isinstance(link, str):
                return
            path, params = self._follow(link, after)
            key = path + "?" + "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "size")
            if key in seen:
                log.warning("audit: %s%s repeats its `next` link %s; stopping this poll there", self.shown, path,
                            shown_id(link))  # fmt: skip
                return
            seen.add(key)
        log.warning("audit: %s: more than %d pages in one poll; the rest waits for the next poll", self.shown,
                    MAX_PAGES)

    def _follow(self, link: str, after: int | None) -> tuple[str, dict[str, str]]:
        """The request a `next` link stands for. Kong writes it as a path (`/audit/requests?offset=…`), without
        knowing of a proxy prefix in --admin-url, and it may leave our filter out: both are put back."""
        parts = urlsplit(link)
        path = parts.path or "/"
        if self.base_path and path.startswith(self.base_path + "/"):
            path = path[len(self.base_path):]
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if after is not None:
            params.setdefault("after_audit_log_filter", str(after))
        return path, params

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        where = f"{self.shown}{path}"
        try:
            with self._client.stream("GET", self.base + path, params=params) as response:
                content = _read_at_most(response, MAX_ANSWER_BYTES) if 200 <= response.status_code < 300 else b""
        except httpx.ConnectError as exc:
            text = str(exc)
            if "CERTIFICATE" in text.upper() or "SSL" in text.upper():
                raise FatalError(
                    f"TLS verification of the Kong Admin API at {self.shown} failed ({_short(text)}): "
                    "pass its CA certificate with --ca-file"
                ) from None
            raise AdminUnavailable(f"cannot reach the Kong Admin API at {self.shown}: {_short(text)}") from None
        except httpx.TimeoutException:
            raise AdminUnavailable(f"the Kong Admin API at {self.shown} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise AdminUnavailable(f"cannot read {where}: {_short(str(exc)) or type(exc).__name__}") from None
        status = response.status_code
        if status in (401, 403):
            hint = (
                "check the token in --admin-token-file or KONG_ADMIN_TOKEN (its RBAC user needs read access to /audit)"
                if self.has_token
                else "no token was sent: set KONG_ADMIN_TOKEN or --admin-token-file"
            )
            raise FatalError(f"the Kong Admin API refused GET {where} (HTTP {status}): {hint}")
        if status == 404:
            raise FatalError(
                f"the Kong Admin API answered 404 for GET {where}: check --admin-url and --workspace "
                "(audit logs need Kong Enterprise with audit_log = on)"
            )
        if 300 <= status < 400:
            # Not followed (the token would go with it) and not retried: it will say the same at the next poll.
            moved = urlsplit(response.headers.get("location", ""))
            shown = urlunsplit((moved.scheme, moved.netloc.rpartition("@")[2], moved.path, "", ""))
            to = f" to {shown}" if moved.path else ""
            raise FatalError(
                f"the Kong Admin API answered GET {where} with a redirect (HTTP {status}){to}, which is not followed: "
                "pass the Admin API's own URL as --admin-url"
            )
        if not 200 <= status < 300:
            raise AdminUnavailable(f"the Kong Admin API answered HTTP {status} for GET {where}")
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            answer = lenient_json(content)
            if answer is None:
                raise AdminUnavailable(f"GET {where} did not answer JSON (is --admin-url the Admin API?)") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise AdminUnavailable(f"GET {where} did not answer an audit list ({{\"data\": [...]}})")
        return answer


def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The answer's body, or AnswerTooLarge past `limit` bytes: a page is held whole while it is parsed (about
    five times its size as Python objects), and an Admin API that never ends its answer would take every byte."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise AnswerTooLarge
    return bytes(body)


def _short(text: str) -> str:
    return " ".join(text.split())[:200]


# -- the cursor ------------------------------------------------------------------------------------------------
@dataclass
class Edge:
    after: int | None = None  # the newest request_timestamp seen (Unix seconds)
    seen: dict[str, int] = field(default_factory=dict)  # id → request_timestamp of those within LOOKBACK of `after`
    stray: set[str] = field(default_factory=set)  # ids of records shipped whose request_timestamp places them nowhere

    @property
    def ids(self) -> set[str]:  # the ids seen at the newest second
        return {rid for rid, ts in self.seen.items() if ts == self.after}

    @property
    def floor(self) -> int | None:  # where the next poll asks from
        return None if self.after is None else self.after - LOOKBACK


class Cursor:
    """`STATE_DIR/audit/cursor.json`, written atomically (temporary file, fsync, rename, fsync of the directory)."""

    def __init__(self, path: str, source: dict[str, Any]):
        self.path = path
        self.source = source
        self.edges = {endpoint: Edge() for endpoint in ENDPOINTS}

    def load(self) -> Cursor:
        try:
            with open(self.path, "rb") as handle:
                data = orjson.loads(handle.read())
        except FileNotFoundError:
            return self
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(
                f"the audit cursor {self.path} cannot be read ({exc}): fix it, or delete it to ship again every "
                "audit record Kong still holds"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"the audit cursor {self.path} is not a JSON object: fix or delete it")
        before = data.get("source") or {}
        if before and before != self.source:
            log.warning(
                "audit: the cursor in %s was kept for %s; now reading %s (give each Admin API and workspace its "
                "own --state-dir)", self.path, _describe(before), _describe(self.source),
            )
        for endpoint in ENDPOINTS:
            entry = data.get(endpoint) or {}
            entry = entry if isinstance(entry, dict) else {"after": "not an object"}
            after, ids, stray = entry.get("after"), entry.get("ids") or [], entry.get("stray") or []
            seen = entry.get("seen") or {}  # a cursor written before it (only `ids`, at `after`) is read as one
            # What this class writes, or a corrupt cursor: `"ids": "abc"` was read as three ids, `"requests": [1]`
            # stopped the command with a traceback, `"after": "x"` resent everything.
            if not (
                (after is None or type(after) is int) and isinstance(ids, list) and isinstance(stray, list)
                and all(isinstance(i, (str, int)) for i in ids + stray) and isinstance(seen, dict)
                and all(type(ts) is int for ts in seen.values())
            ):  # fmt: skip
                raise ConfigError(
                    f"the audit cursor {self.path} is not as kong-ship writes it ({endpoint}): fix or delete it"
                )
            seen = {**({str(i): after for i in ids} if after is not None else {}), **seen}
            self.edges[endpoint] = Edge(after, seen, {str(i) for i in stray})
        return self

    def save(self) -> None:
        data = {
            "version": 1,
            "source": self.source,
            **{
                e: {"after": edge.after, "ids": sorted(edge.ids), "seen": dict(sorted(edge.seen.items())),
                    **({"stray": sorted(edge.stray)} if edge.stray else {})}
                for e, edge in self.edges.items()
            },
        }
        write_atomically(self.path, orjson.dumps(data, option=orjson.OPT_INDENT_2))


def _describe(source: dict[str, Any]) -> str:
    workspace = source.get("workspace")
    return f"{source.get('admin_url')}" + (f" workspace {workspace}" if workspace else "")


# -- the poller ------------------------------------------------------------------------------------------------
class Poller:
    """One poll: both endpoints, new records to the spool (chronological), then the cursor. Records are spooled
    masked with `masker`: the run's, with the user's `--mask-*` names (the default names without one)."""

    def __init__(
        self, client: AdminClient, cursor: Cursor, spool, *, verify_key=None, workspace: str | None = None,
        masker: Masker | None = None,
    ):
        self.client = client
        self.cursor = cursor
        self.spool = spool
        self.verify_key = verify_key
        self.workspace = workspace
        self.masker = masker if masker is not None else audit_masker()
        self.counts: Counter[str] = Counter()  # fetched per endpoint, and signature results

    def poll(self) -> int:
        """Fetch and spool what is new; returns how many records were spooled. Raises AdminUnavailable or
        FatalError (both before anything of the failing endpoint is spooled)."""
        total = 0
        for endpoint in ENDPOINTS:
            total += self._poll(endpoint)
        return total

    def _poll(self, endpoint: str) -> int:
        """What is new, held page by page as it will be spooled (masked) in a temporary file, not in memory: a
        first poll of a Kong that keeps 30 days of audit records held them all (8 KiB a record: 100,000 records,
        840 MiB). Spooled once the last page is read, the oldest page first (`_spool_held`)."""
        kind, _ = ENDPOINTS[endpoint]
        edge = self.cursor.edges[endpoint]
        now = time.time()
        seen: set[str] = set()
        stray_seen: set[str] = set()
        strays: set[str] = set()  # new ones
        newest = edge.after
        recent: dict[str, int] = {}  # new ones within LOOKBACK of the newest seen so far (pages come newest first)
        checks: Counter[str] = Counter()
        forged: list[str] = []
        with tempfile.SpooledTemporaryFile(HELD_IN_MEMORY, dir=self.spool.directory) as held:
            pages: list[tuple[int, int]] = []  # (offset in `held`, records) of each page's new records
            for page in self.client.pages(endpoint, edge.floor):
                fresh: list[tuple[int | None, dict[str, Any]]] = []
                for record in page:
                    rid = record_id(endpoint, record) or content_key(record)
                    if rid in seen:
                        continue  # shifted onto the next page while we paged
                    seen.add(rid)
                    ts = placed_at(record, now)
                    if ts is None:
                        stray_seen.add(rid)
                        if rid in edge.stray:
                            continue  # shipped by an earlier poll
                        strays.add(rid)
                    elif rid in edge.seen or (edge.floor is not None and ts < edge.floor):
                        continue  # already shipped (the filter is inclusive), or a server that ignored it
                    else:
                        newest = ts if newest is None else max(newest, ts)
                        if ts >= newest - LOOKBACK:
                            recent[rid] = ts
                    fresh.append((ts, record))
                if fresh:
                    fresh.reverse()  # pages come newest first
                    fresh.sort(key=lambda item: -1 if item[0] is None else item[0])  # stable: same-second order kept
                    pages.append((held.tell(), len(fresh)))
                    held.write(b"".join(self._wrap(endpoint, record, checks, forged) + b"\n" for _, record in fresh))
            count = sum(n for _, n in pages)
            if not count:
                return 0
            self._spool_held(kind, held, pages)
        floor = None if newest is None else newest - LOOKBACK
        seen_now = {rid: ts for rid, ts in {**edge.seen, **recent}.items() if floor is not None and ts >= floor}
        # Strays the Admin API no longer returns are forgotten: it holds them no more (their TTL), or it honours
        # the filter, which leaves out a record that has no request_timestamp.
        self.cursor.edges[endpoint] = Edge(newest, seen_now, (edge.stray & stray_seen) | strays)
        self.cursor.save()
        self.counts[endpoint] += count
        self.counts.update(checks)
        for rid in forged:  # told now, not as the page came: a poll that failed part-way is done again
            log.warning("audit: %s %s: the signature does not verify; dead-lettered (reason bad_signature)",
                        endpoint[:-1], rid)  # fmt: skip
        return count

    def _spool_held(self, kind: str, held: IO[bytes], pages: list[tuple[int, int]]) -> None:
        """The held records to the spool, oldest page first, each append fsynced: once the last one returns, a
        crash resends rather than loses (before it, the cursor has not moved: a crash resends what was spooled)."""
        for offset, records in reversed(pages):
            held.seek(offset)
            lines = [held.readline()[:-1] for _ in range(records)]
            self.spool.append_encoded(kind, lines)

    def _wrap(self, endpoint: str, record: dict[str, Any], checks: Counter[str], forged: list[str]) -> bytes:
        """The record as spooled; its verdict put in `checks`, its id in `forged` (`_poll` tells them once spooled)."""
        if self.verify_key is not None:
            check: str | None = audit_signature.check(record, self.verify_key)
            if check == audit_signature.INVALID:
                forged.append(shown_id(record_id(endpoint, record)) or "(no id)")
        else:
            check = audit_signature.UNSIGNED if record.get("signature") in (None, "") else None
        if check is not None:
            checks[check] += 1
        # Checked above as Kong signed it; spooled (state on disk) as it will ship, masked as the masking processor
        # masks the transaction it becomes (a request's `payload` as a body), and for Kong's conventions.
        bodies = DETAIL_BODIES["admin_request"] if endpoint == "requests" else BODY_FIELDS
        try:
            orjson.dumps(record)
        except orjson.JSONEncodeError:  # read by lenient_json: bytes that are no UTF-8, which the masks cannot read
            record = storable(record)
        entry = self.masker.mask_value(mask_kong_conventions(entities_stripped(record), self.masker), bodies=bodies)
        if endpoint == "requests":
            path = mask_credential_path(entry.get("path"))
            if path is not entry.get("path"):
                entry = {**entry, "path": path}
        return orjson.dumps({"entry": entry, "signature_check": check, "admin_url": self.client.shown,
                             "workspace": self.workspace})  # fmt: skip

