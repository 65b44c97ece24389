"""One line → one vendor event: parse, run the processors, encode for the sink. A pure function of the line
and its position, so it runs in the reader thread or, for big backfills, in worker processes (workers.py)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from shipper.formats import ParseError, Parser
from shipper.model import Position, Transaction
from shipper.processors import Dropped, Processor, run_chain
from shipper.sinks.base import EventFiltered, EventRejected, EventSkipped, FlatEncode, RecordDropped
# What the container framing makes of a line (light: dataclasses and orjson, nothing of the file source).
from shipper.sources.container import Framed, Framer, Ignored, Unframed
from shipper.sources.reading import PREFIX_BYTES, Oversize

if TYPE_CHECKING:  # only named in annotations: the file source need not be imported by a worker or `parse`
    from mmap import mmap

    from shipper.sources.blocks import Block

class Fate(enum.IntEnum):
    """What became of a line, the first item of an `Outcome`; the payload's type depends on it. An IntEnum: a
    comparison costs what an int's does, and counters can be indexed by it."""

    EVENT = 0  # payload: the event's bytes
    BLANK = 1  # an empty or whitespace-only line
    INVALID = 2  # payload: (reason, detail) — the line is not understood (the same for every sink)
    REJECTED = 3  # payload: reason — the sink cannot make a valid event of it
    SKIPPED = 4  # the sink chose not to send it (sampling)
    OVERSIZE = 5  # the line is longer than --max-line-bytes (the source handed an Oversize marker)
    FILTERED = 6  # a processor dropped the record (outside --since/--until), or the sink raised EventFiltered: payload its reason
    FAILED = 7  # payload: (reason, detail) — this sink's encoder failed on the record (other sinks may not)
    IGNORED = 8  # a container log line with no access-log record (stderr, text): payload the counter it goes to


# The fates by their short names, as the lane, `parse` and the tests import them.
EVENT, BLANK, INVALID, REJECTED = Fate.EVENT, Fate.BLANK, Fate.INVALID, Fate.REJECTED
SKIPPED, OVERSIZE, FILTERED, FAILED = Fate.SKIPPED, Fate.OVERSIZE, Fate.FILTERED, Fate.FAILED
IGNORED = Fate.IGNORED

Outcome = tuple[Fate, Any, bool]  # (fate, payload, anonymous)
Line = tuple[str, "bytes | Oversize | Framed | Ignored | Unframed", int, int]  # (file_id, data, offset, end)


class Encoder(Protocol):
    """What the Transformer uses of a sink: its encoder (`kong-ship parse` passes NormalizedLines)."""

    def encode(self, txn: Transaction) -> bytes: ...


class Transformer:
    """`flat`, when given, is the sink's flat path (sinks/base.py `FlatEncode`): tried first for every line,
    with the Transaction path behind it for whatever it hands back."""

    def __init__(self, parser: Parser, chain: list[Processor], sink: Encoder, flat: FlatEncode | None = None):
        self.parse = parser.parse
        self.chain = chain
        self.encode = sink.encode
        self.flat = flat

    def __call__(self, file_id: str, data: bytes | Oversize | Framed | Ignored | Unframed, offset: int, end: int) -> Outcome:
        """Never raises: whatever a line holds, it comes back as one outcome, so no line can stop a reader.
        (A try block costs nothing in CPython 3.11 until something is raised.)"""
        logged_at = None
        if type(data) is not bytes:
            kind = type(data)
            if kind is Framed:  # a container log line's content, and the runtime's time for a record without one
                data, logged_at = data.content, data.logged_at  # type: ignore[union-attr]
            elif kind is Ignored:
                return (IGNORED, data.counter, False)  # type: ignore[union-attr]
            elif kind is Unframed:
                return (INVALID, ("unknown_format", data.detail), False)  # type: ignore[union-attr]
            else:
                return (OVERSIZE, None, False)
        if not data or data.isspace():
            return (BLANK, None, False)
        flat = self.flat
        if flat is not None:
            try:
                made = flat(data, file_id, offset, end, logged_at)
            except RecordDropped:
                return (FILTERED, None, False)
            except Exception:  # noqa: BLE001 - a flat path's surprise costs speed, never the line: the full path decides
                made = None
            if made is not None:
                return (EVENT, made[0], made[1])
        try:
            txn = run_chain(self.chain, self.parse(data, Position(file_id, offset, end), logged_at))
        except Dropped as exc:  # a named rule (filters, sampling, routing): counted as filtered under its reason
            return (FILTERED, exc.reason, False)
        except ParseError as exc:
            return (INVALID, (exc.reason, exc.detail), False)
        except Exception as exc:  # noqa: BLE001 - the boundary: a bug or a value nobody foresaw costs one line
            return (INVALID, failure(exc), False)
        if txn is None:
            return (FILTERED, None, False)
        anonymous = txn.user_id is None
        try:
            # orjson hands back a buffer of at least 4 KiB whatever the event's size; a queued event keeps only
            # its own bytes, or a full queue would weigh several times its byte bound.
            event = bytes(memoryview(self.encode(txn)))
        except EventSkipped:
            return (SKIPPED, None, anonymous)
        except EventFiltered as exc:  # a vendor rule (Moesif's 30-day window): counted as filtered, payload the reason
            return (FILTERED, str(exc), anonymous)
        except EventRejected as exc:
            return (REJECTED, str(exc), anonymous)
        except Exception as exc:  # noqa: BLE001 - the same boundary, around this sink's encoder
            return (FAILED, failure(exc), anonymous)
        return (EVENT, event, anonymous)


def line_bytes(data: bytes | Oversize | Framed | Ignored | Unframed) -> bytes:
    """The bytes a dead letter keeps of a line: the line, or a container line's content."""
    if type(data) is bytes:
        return data
    if type(data) is Framed:
        return data.content
    if type(data) is Unframed:
        return data.line
    return getattr(data, "prefix", b"")


class NormalizedLines:
    """The encoder of `kong-ship parse`: the normalized transaction as one NDJSON line, through the same
    Transformer (and so the same boundary) as shipping."""

    @staticmethod
    def encode(txn: Transaction) -> bytes:
        return orjson.dumps(txn.to_dict(), option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)


def failure(exc: Exception) -> tuple[str, str]:
    """(reason, detail) for the dead-letter file: `too_deep` for nesting no JSON encoder here can write back
    (orjson stops at 254 levels, Python's recursion at about 1,000), else `internal_error` with the exception."""
    if isinstance(exc, RecursionError) or (isinstance(exc, orjson.JSONEncodeError) and "Recursion" in str(exc)):
        return ("too_deep", "the record is nested too deeply to be encoded again as JSON")
    return ("internal_error", f"{type(exc).__name__}: {exc}"[:500])


# A block's result (sources/blocks.py), compact to pickle: the events with their lines' indexes in the block and
# their end offsets, how many were anonymous, and the rare other lines as
# (index, fate or None for a piece of a split container line, payload, data for a dead letter, offset, end).
# (With batches closed in a worker, workers.py puts their PreparedBody objects first in the events' list.)
BlockResult = tuple[list[bytes], list[int], list[int], int, list[tuple[int, "Fate | None", Any, Any, int, int]]]
_KEEP_DATA = {INVALID, REJECTED, FAILED, OVERSIZE}  # the fates whose line goes to the dead-letter file


def transform_block(transform: Transformer, block: Block, area: mmap | None = None) -> BlockResult:
    """The block's lines, split as the file source splits them (`reading.emit`), each through `transform`.
    `area`: where the block's bytes are when `block.data` is `Shared` (a worker's view of workers.BlockRing),
    read line by line from there, not copied out first."""
    file_id, start, limit = block.file_id, block.start, block.limit
    kept = block.data
    buf: Any
    if type(kept) is bytes:
        buf, pos, stop = kept, 0, len(kept)
    else:
        assert area is not None
        buf, pos, stop = area, kept.at, kept.at + kept.size  # type: ignore[union-attr]
    # Cut with find (memchr) rather than bytes.split, whose one-byte split walks the bytes one at a time:
    # 0.6-0.7 against 1.0-1.9 µs a 2.7 kB line, measured on a 1 MiB block.
    find = buf.find
    events: list[bytes] = []
    index: list[int] = []
    ends: list[int] = []
    others: list[tuple[int, Fate | None, Any, Any, int, int]] = []
    anonymous = 0
    framer: Framer | None = None
    framed = block.framed
    items: tuple[Line, ...] | list[Line]
    i = -1
    # One loop, the per-item work written once and inline (no call per line: a block is the bulk of a backfill).
    # A line is one item, or, in a block of container lines, what the Framer makes of it: none (a piece of a
    # split line), one, or the end of a split line with the record it completes.
    while True:
        if pos < stop:
            i += 1
            cut = find(b"\n", pos, stop)
            if cut < 0:  # never: a block ends with a newline (and has a sequence number for each one only)
                pos = stop
                continue
            end = start + cut + 1 - pos
            if cut - pos <= limit:
                line: Any = buf[pos:cut]
            else:  # the prefix a dead letter keeps, cut at the line's end
                line = Oversize(buf[pos : min(cut, pos + PREFIX_BYTES)], cut - pos)
            pos = cut + 1
            if not framed or (type(line) is bytes and line[:1] == b"{" and (framer is None or framer.direct)):
                items = ((file_id, line, start, end),)
            else:
                if framer is None:
                    framer = Framer("auto", limit)
                    framer.start(b"{")
                items = list(framer.frame(file_id, line, start, end))
                if not items:  # a piece of a split line: done, but the checkpoint stays at the record's start
                    others.append((i, None, None, None, start, framer.pending_from))  # type: ignore[arg-type]
            start = end
        elif framer is not None and framer.pending_from is not None:
            # Known limit: a split container line still waiting for its last piece at a block's end, in a file
            # that is no container log, ends there (the parsers dead-letter what it is); its last piece goes on
            # its own. It takes the sequence number of its last piece (each line of a block has one).
            last = max(j for j, other in enumerate(others) if other[1] is None)
            i = others.pop(last)[0]
            items = (framer.finish(file_id, start),)
            framer = None
        else:
            break
        for _, item, offset, item_end in items:
            fate, payload, anon = transform(file_id, item, offset, item_end)
            if fate is EVENT:
                events.append(payload)
                index.append(i)
                ends.append(item_end)
                anonymous += anon
            else:
                others.append((i, fate, payload, item if fate in _KEEP_DATA else None, offset, item_end))
    return events, index, ends, anonymous, others
