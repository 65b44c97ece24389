"""Requests answered 200 only once their records are fsynced, without one fsync each in a row.

An fsync costs milliseconds whatever it carries; HTTP requests that arrive together (Kong's workers, several
gateways) each waiting for their own, one after another under the spool's lock, made single-record requests
(http-log's default batch size) fsync-bound. Here the first request to find the spool free writes, in one
write and one fsync, its records and those of every request of the same kind waiting at that moment; the
others wait for that fsync and are answered with it. A request never waits for a later one's records, and at
most one fsync is made per request.

Each request's records are encoded in its own thread beforehand (a record too deep to store fails that request
alone, never its group). A group is all or nothing, as `Spool.append` is: when the write fails (disk full) the
spool cuts it off again and every request of the group is refused, so nothing refused is shipped later.

A kind may have an encoder of its own (`encoders`): `receive` gives Kong's http-log records one that identifies
and masks them before they are stored (`intake.KongRecords`); it may keep a record out (None: it dead-lettered
it). Other kinds are stored as `orjson.dumps` encodes them (`exact_dumps`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson

from shipper.formats.spooled import held_exactly
from shipper.sources.spool import Spool

Encoder = Callable[[dict[str, Any]], bytes | None]


def exact_dumps(record: dict[str, Any]) -> bytes:
    """`orjson.dumps`, copied to its exact size (a request's records are all held until its fsync)."""
    return held_exactly(orjson.dumps(record))


class _Waiting:
    __slots__ = ("kind", "lines", "done", "error")

    def __init__(self, kind: str, lines: list[bytes]):
        self.kind = kind
        self.lines = lines
        self.done = False
        self.error: BaseException | None = None


class Committer:
    def __init__(self, spool: Spool, encoders: dict[str, Encoder] | None = None):
        self.spool = spool
        self.encoders: dict[str, Encoder] = dict(encoders or {})  # kind → its encoder; orjson.dumps otherwise
        self._cond = threading.Condition()
        self._queue: list[_Waiting] = []
        self._writing = False

    def append(self, kind: str, records: list[dict[str, Any]]) -> None:
        """Return once the records are fsynced; raise what `Spool.append` raises (OSError, ValueError once the
        spool is closed; orjson.JSONEncodeError, before anything is queued, for a record too deep to store)."""
        encode = self.encoders.get(kind, exact_dumps)
        lines = [line for line in map(encode, records) if line is not None]
        if not lines:  # every record was kept out by its encoder (and dead-lettered): nothing to write
            return
        me = _Waiting(kind, lines)
        with self._cond:
            self._queue.append(me)
            while not me.done and self._writing:
                self._cond.wait()
            if me.done:
                if me.error is not None:
                    raise me.error
                return
            # The spool is free and our records are not written: lead a group (ours and the waiting of our kind).
            self._writing = True
            group = [w for w in self._queue if w.kind == kind]
            self._queue = [w for w in self._queue if w.kind != kind]
        # Until the write returns, the group failed: whatever escapes it, no waiter is told its records are stored.
        error: BaseException | None = RuntimeError("the spool write did not finish")
        try:
            self.spool.append_encoded(kind, [line for w in group for line in w.lines])
            error = None
        except (OSError, ValueError) as exc:
            error = exc
        finally:
            with self._cond:
                for w in group:
                    w.done, w.error = True, error
                self._writing = False
                self._cond.notify_all()
        if error is not None:
            raise error
