"""What `receive` does with each Kong record it takes over the network (http-log, tcp-log, udp-log) before it is
spooled (`KongRecords`), and what the tcp-log and udp-log listeners do with each record they read (`Intake`).

The spool is state on disk: a Kong record is stored as it will ship, never as Kong sent it. So each record is
identified first (the run's `Identify`: the JWT in `Authorization` is about to be masked), then masked with the
run's `Masker` (the same --mask-* options as the pipeline, by key at any depth: headers, query parameters in
every URL, bodies, entities), and spooled with the identity it had (`identity` in the spool envelope: read back by
`formats.spooled`, kept by `Identify`). The pipeline parses and masks it again, as any log line; it finds nothing
left to mask. A record that cannot be masked is dead-lettered (masked as every dead letter is), never stored.

The listeners: check each record is a JSON object, encode it once, and hand it to the spool's group commit as
kind `kong_log` — or dead-letter it, with a reason, in the run's dead-letter file. Kong expects no answer from
either listener, so nothing is refused back: a record is either spooled, dead-lettered, or (UDP only) dropped
and counted.

Nothing authenticates tcp-log or udp-log, and each dead letter weighs ~150 bytes for a 2-byte line: garbage grew
the dead-letter file 77 times faster than it arrived, with no bound, on the disk the spool is on. So each peer
host gets `DEAD_LETTERS_PER_SECOND` written a second, and each listener `DEAD_LETTERS_PER_SECOND_PER_LISTENER`
from all hosts together (`PeerLimit`); the rest are counted, by reason, and said in one `held_back` entry per
host, or one for the listener's limit, once its second is over (or, within the listener's share, when its
connection ends; or when the listener stops)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson

from shipper.deadletter import DeadLetter
from shipper.delivery.queue import Closed
from shipper.formats.decode import ParseError, decode_line
from shipper.formats.kong_fields import entity
from shipper.formats.spooled import IDENTITY, held_exactly
from shipper.processors.identity import Identify
from shipper.processors.masking import MASK, Masker
from shipper.sources.spool import GroupCommit, with_envelope_members

if TYPE_CHECKING:
    from shipper.settings import Settings

KIND = "kong_log"  # read by the Kong parser, as file-log's lines are (shipper.formats.spooled)
DEAD_LETTERS_PER_SECOND = 20  # written per peer host and second; a well-behaved Kong sends none
DEAD_LETTERS_PER_SECOND_PER_LISTENER = 100  # written per listener and second, whatever the hosts (~15 KB/s)


def mask_kong_record(masker: Masker, record: dict[str, Any]) -> dict[str, Any]:
    """A masked copy of a Kong record (`record` itself when nothing in it is secret): `Masker.mask_value`, which
    masks what the masking processor masks in the Transaction made of it, and custom fields too."""
    masked: dict[str, Any] = masker.mask_value(record)
    if masked is record:
        return record
    # A repeated secret header keeps its count (`[MASK, MASK]`), as the masking processor leaves it.
    for side in ("request", "response"):
        part, masked_part = record.get(side), masked.get(side)
        if type(part) is not dict or type(masked_part) is not dict or masked_part is part:
            continue
        headers, masked_headers = part.get("headers"), masked_part.get("headers")
        if type(headers) is not dict or type(masked_headers) is not dict or masked_headers is headers:
            continue
        for name, value in headers.items():  # masked_headers is a copy (mask_value copies what it changes)
            if type(value) is list and masked_headers.get(name) == MASK:
                masked_headers[name] = [MASK] * len(value)
    return masked


class KongRecords:
    """How network Kong records are stored: identified, masked, encoded (see the module's docstring)."""

    def __init__(self, masker: Masker, identify: Identify, dead_letter: DeadLetter):
        self.masker = masker
        self.identify = identify
        self.dead_letter = dead_letter

    @classmethod
    def for_run(cls, settings: Settings, dead_letter: DeadLetter) -> KongRecords:
        """With the run's masker (the one its dead-letter file masks with) and its JWT options."""
        return cls(dead_letter.masker, Identify(settings.jwt_places, settings.jwt_claim), dead_letter)

    def encode(self, record: dict[str, Any], source: str) -> bytes | None:
        """The record as the spool keeps it (what `Spool.append_encoded` takes). Raises orjson.JSONEncodeError
        when the record is too deep to store (orjson reads 1024 levels but writes 254), as `orjson.dumps` does;
        None when it could not be masked: then it is dead-lettered, and not stored."""
        encoded = orjson.dumps(record)
        try:
            identity = self.identity(record)
            masked = orjson.dumps(mask_kong_record(self.masker, record))
        except Exception as exc:  # noqa: BLE001 - a record we cannot mask costs that record, never the listener
            self._unmaskable(encoded, source, exc)
            return None
        return with_envelope_members(masked, {IDENTITY: identity}) if identity else held_exactly(masked)

    def identity(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Who made the call, as `Identify` finds it in the record unmasked: `user_id` and `user_source`, the
        JWT claims that may leave the process, the Basic user name. None when there is nothing to keep."""
        # The parts of the record the processor reads, as the Kong parsers hand them to it (HTTP and stream).
        request = record.get("request")
        headers = request.get("headers") if type(request) is dict else None
        basic, claims, user, source = self.identify.who(
            record, headers if type(headers) is dict else {}, entity(record.get("consumer"), ("id",)),
            entity(record.get("authenticated_entity"), ("id", "consumer_id")),
        )
        identity: dict[str, Any] = {}
        if user:
            identity["user_id"], identity["user_source"] = user, source
        if claims:
            # The masks' own choice of what of a JWT may leave (registered claims of a plain shape, their texts
            # masked), as the masking processor makes it: an object under `sub` or a password in `iss` is not kept.
            identity["jwt_claims"] = self.masker.kept_claims(claims)
        if basic:
            identity["basic_user"] = basic
        return identity or None

    def _unmaskable(self, encoded: bytes, source: str, exc: Exception) -> None:
        # Only the exception's type: its message could quote the record.
        detail = f"{source}: could not be masked ({type(exc).__name__}), so it was not stored"
        try:
            self.dead_letter.write("unmaskable", detail, line=encoded)
        except Closed:
            raise
        except Exception:  # noqa: BLE001 - the dead letter masks with the same masker: keep only the size
            self.dead_letter.write("unmaskable", f"{detail}; its {len(encoded)} bytes are withheld")


Summary = tuple[str, float, Counter[str]]  # who ("HOST (over …)"), the seconds held back for, by reason
LISTENER = ""  # PeerLimit's key for what the listener-wide limit held back (no host's name is empty)
MAX_HOSTS_COUNTED = 1000  # distinct hosts counted in a listener-wide summary (spoofed UDP sources are endless)


class PeerLimit:
    """How many dead letters may be written a second: `per_second` from each peer host (so that one noisy host
    does not silence another), and `per_second_total` from all of them (UDP sources are trivially spoofed: 20 a
    second from each of thousands of addresses filled the disk as fast as no limit). `allow` says whether this
    one may, and counts it held back otherwise: for the listener (its share is spent) or for the host. Only the
    hosts that had dead letters written this second can reach their own limit, so at most `per_second_total /
    per_second` hosts a second are summarised one by one; the listener's share, in one summary. `due` takes the
    summaries to write."""

    def __init__(self, per_second: int, per_second_total: int):
        self.per_second = per_second
        self.per_second_total = per_second_total
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # host → (its second's start, written in it)
        self._total: tuple[float, int] = (float("-inf"), 0)  # the listener's second: (start, written in it)
        self._held: dict[str, tuple[float, Counter[str]]] = {}  # host, or LISTENER → (first held at, by reason)
        self._hosts_held: set[str] = set()  # hosts the listener-wide limit held back from (MAX_HOSTS_COUNTED)
        self._swept = time.monotonic()

    def allow(self, host: str, reason: str, now: float) -> bool:
        with self._lock:
            if not self._listener_room(now):
                self._held.setdefault(LISTENER, (now, Counter()))[1][reason] += 1
                if len(self._hosts_held) < MAX_HOSTS_COUNTED:
                    self._hosts_held.add(host)
                return False
            start, written = self._windows.get(host, (now, 0))
            if now - start >= 1.0:
                start, written = now, 0
            if written < self.per_second:
                self._windows[host] = (start, written + 1)
                self._take_listener_share()
                return True
            self._windows[host] = (start, written)
            self._held.setdefault(host, (now, Counter()))[1][reason] += 1
            return False

    def _listener_room(self, now: float) -> bool:
        """Under the lock: whether the listener's second has room for one more entry (a new second begins)."""
        start, written = self._total
        if now - start >= 1.0:
            self._total = (now, 0)
            return True
        return written < self.per_second_total

    def _take_listener_share(self) -> None:
        start, written = self._total
        self._total = (start, written + 1)

    def due(self, now: float, host: str | None = None, everything: bool = False) -> list[Summary]:
        """The summaries of what was held back for a second or more (from `host`, or everything, whatever the
        time) — a sweep at most every second unless asked for some — and the hosts quiet for a second forgotten
        (spoofed UDP sources would otherwise pile up)."""
        with self._lock:
            if host is None and not everything and now - self._swept < 1.0:
                return []
            if host is None:
                self._swept = now
            due = []
            for name, (since, reasons) in list(self._held.items()):
                if not (everything or now - since >= 1.0):
                    # Said early (its connection ended) only within the listener's share: a client reconnecting
                    # for each few garbage lines had a summary written per connection, 440 a second from one host.
                    if name != host or not self._listener_room(now):
                        continue
                    self._take_listener_share()
                if name == LISTENER:
                    n = len(self._hosts_held)
                    who = (f"{n:,}{'+' if n >= MAX_HOSTS_COUNTED else ''} host{'' if n == 1 else 's'} (over "
                           f"{self.per_second_total} a second from all hosts)")
                    self._hosts_held = set()
                else:
                    who = f"{name} (over {self.per_second} a second from one host)"
                due.append((who, now - since, reasons))
                del self._held[name]
            if host is None:
                for name, (start, _) in list(self._windows.items()):
                    if now - start >= 1.0 and name not in self._held:
                        del self._windows[name]
            return due


class Intake:
    """One listener's intake; `counts` holds `records` (spooled), `dead_lettered` (of which `dead_letters_held`
    were counted in a `held_back` summary, not written one by one) and `dropped`. `records`: how
    a record is stored (the run's, from `receive`; else the dead-letter file's masker and the default JWT
    places)."""

    def __init__(self, name: str, commit: GroupCommit, dead_letter: DeadLetter, *, max_record_bytes: int,
                 records: KongRecords | None = None):
        self.name = name  # "tcp-log", "udp-log": starts the details of its dead letters
        self.commit = commit
        self.dead_letter = dead_letter
        self.max_record_bytes = max_record_bytes
        self.records = records or KongRecords(dead_letter.masker, Identify(), dead_letter)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._limit = PeerLimit(DEAD_LETTERS_PER_SECOND, DEAD_LETTERS_PER_SECOND_PER_LISTENER)

    def take(self, line: bytes, peer: str, *, wait: bool) -> bool:
        """Spool or dead-letter one record; False only when it was dropped (the spool writer is behind and
        `wait` is false)."""
        try:
            record = decode_line(line)
        except ParseError as exc:
            self.reject(exc.reason, f"{self.name} record from {peer}: {exc.detail}", line, peer=peer)
            return True
        try:
            encoded = self.records.encode(record, f"{self.name} record from {peer}")
        except orjson.JSONEncodeError:
            self.reject("too_deep", f"{self.name} record from {peer}: nested too deeply to be stored", line,
                        peer=peer)
            return True
        if encoded is None:  # dead-lettered by KongRecords
            self.count("dead_lettered")
            return True
        if len(encoded) > self.max_record_bytes:  # invalid UTF-8 replaced by U+FFFD can grow a record
            self.reject("too_long", f"{self.name} record from {peer}: {len(encoded)} bytes once re-encoded", line,
                        peer=peer)
            return True
        if not self.commit.add(encoded, wait=wait):
            self.count("dropped")
            return False
        self.count("records")
        return True

    def reject(self, reason: str, detail: str, line: bytes, *, truncated: bool = False,
               peer: str | None = None) -> None:
        """Dead-letter a record; from a `peer` ("host:port"), only within its host's share a second (PeerLimit)."""
        self.count("dead_lettered")
        now = time.monotonic()
        if peer is not None and not self._limit.allow(peer.rsplit(":", 1)[0], reason, now):
            self.count("dead_letters_held")
        else:
            self.dead_letter.write(reason, detail, line=line, truncated=truncated)
        self._summarise(self._limit.due(now))

    def held_back(self, peer: str | None = None, *, everything: bool = False) -> None:
        """Say what was held back: from `peer`'s host now (its connection ends), from every host (`everything`:
        stopping), else from the hosts held back from for a second (a quiet moment)."""
        host = None if peer is None else peer.rsplit(":", 1)[0]
        self._summarise(self._limit.due(time.monotonic(), host, everything))

    def _summarise(self, due: list[Summary]) -> None:
        for who, seconds, reasons in due:
            parts = ", ".join(f"{n:,} {reason}" for reason, n in sorted(reasons.items()))
            self.dead_letter.write(
                "held_back", f"{self.name} from {who}: {sum(reasons.values()):,} more dead letters in "
                f"{max(seconds, 0.0):.1f} s not written one by one: {parts}")

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)
