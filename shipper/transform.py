"""One line → one vendor event: parse, run the processors, encode for the sink. A pure function of the line
and its position, so it runs in the reader thread or, for big backfills, in worker processes (the second core
does the JSON work while the first one reads, batches, compresses and sends)."""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from shipper.formats import ParseError, Parser
from shipper.model import Position
from shipper.processors import Processor, run_chain
from shipper.sinks.base import EventRejected, EventSkipped, Sink

# What became of a line: (outcome, payload, anonymous)
EVENT = 0  # payload: the event's bytes
BLANK = 1  # an empty or whitespace-only line
INVALID = 2  # payload: (reason, detail) — the line is not understood (the same for every sink)
REJECTED = 3  # payload: reason — the sink cannot make a valid event of it
SKIPPED = 4  # the sink chose not to send it (sampling)
OVERSIZE = 5  # the line is longer than --max-line-bytes (the source handed an Oversize marker)
FILTERED = 6  # a processor dropped the record (outside --since/--until)
FAILED = 7  # payload: (reason, detail) — this sink's encoder failed on the record (other sinks may not)

Outcome = tuple[int, Any, bool]
Line = tuple[str, bytes, int, int]  # (file_id, data, offset, end)


class Transformer:
    def __init__(self, parser: Parser, chain: list[Processor], sink: Sink):
        self.parse = parser.parse
        self.chain = chain
        self.encode = sink.encode

    def __call__(self, file_id: str, data: bytes, offset: int, end: int) -> Outcome:
        """Never raises: whatever a line holds, it comes back as one outcome, so no line can stop a reader.
        (A try block costs nothing in CPython 3.11 until something is raised.)"""
        if type(data) is not bytes:
            return (OVERSIZE, None, False)
        if not data or data.isspace():
            return (BLANK, None, False)
        try:
            txn = run_chain(self.chain, self.parse(data, Position(file_id, offset, end)))
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
        except EventRejected as exc:
            return (REJECTED, str(exc), anonymous)
        except Exception as exc:  # noqa: BLE001 - the same boundary, around this sink's encoder
            return (FAILED, failure(exc), anonymous)
        return (EVENT, event, anonymous)


class NormalizedLines:
    """The encoder of `kong-ship parse`: the normalized transaction as one NDJSON line, through the same
    Transformer (and so the same boundary) as shipping."""

    @staticmethod
    def encode(txn) -> bytes:
        return orjson.dumps(txn.to_dict(), option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)


def failure(exc: Exception) -> tuple[str, str]:
    """(reason, detail) for the dead-letter file: `too_deep` for nesting no JSON encoder here can write back
    (orjson stops at 254 levels, Python's recursion at about 1,000), else `internal_error` with the exception."""
    if isinstance(exc, RecursionError) or (isinstance(exc, orjson.JSONEncodeError) and "Recursion" in str(exc)):
        return ("too_deep", "the record is nested too deeply to be encoded again as JSON")
    return ("internal_error", f"{type(exc).__name__}: {exc}"[:500])


# -- worker processes -----------------------------------------------------------------------------------------
LIVENESS_INTERVAL = 1.0  # seconds between looks at the workers while waiting for a chunk


class WorkerLost(RuntimeError):
    """A worker process died (killed, out of memory) while chunks were out: their outcomes will never come, and
    multiprocessing.Pool would wait for them forever."""


_worker: Transformer | None = None


def _init_worker(transformer: Transformer) -> None:
    global _worker
    _worker = transformer


def _transform_chunk(lines: list[Line]) -> list[Outcome]:
    assert _worker is not None
    work = _worker
    return [work(f, d, o, e) for f, d, o, e in lines]


class WorkerPool:
    """Transforms chunks of lines in worker processes, handing back outcomes in file order, with a bounded
    number of chunks in flight (so memory stays bounded when the sink is slow)."""

    CHUNK_LINES = 512

    def __init__(self, transformer: Transformer, workers: int):
        # fork: the workers inherit the configured parser, processors and sink without pickling them, and
        # start in milliseconds. They only run pure functions, never the parent's threads.
        context = multiprocessing.get_context("fork")
        self.workers = workers
        # What exists now (modules, the configured chain) is shared with the workers copy-on-write; frozen,
        # the garbage collector never writes to it, so those pages stay shared instead of being copied.
        gc.freeze()
        before = {p.pid for p in multiprocessing.active_children()}
        self._pool = context.Pool(workers, initializer=_init_worker, initargs=(transformer,))
        self._pids = frozenset(p.pid for p in multiprocessing.active_children()) - before

    def map(self, lines: Iterable[Line], flush_each_round: bool = True) -> Iterator[tuple[Line, Outcome]]:
        """Yields (line, outcome) in order. Lines are grouped into chunks; the last partial chunk of the input
        is sent as soon as the input pauses (so tail latency does not wait for a full chunk)."""
        in_flight: list[tuple[list[Line], Any]] = []
        limit = self.workers * 2
        chunk: list[Line] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= self.CHUNK_LINES:
                in_flight.append((chunk, self._pool.apply_async(_transform_chunk, (chunk,))))
                chunk = []
                while len(in_flight) >= limit:
                    yield from self._collect(in_flight.pop(0))
        if chunk:
            in_flight.append((chunk, self._pool.apply_async(_transform_chunk, (chunk,))))
        for item in in_flight:
            yield from self._collect(item)

    def _collect(self, item: tuple[list[Line], Any]) -> Iterator[tuple[Line, Outcome]]:
        chunk, result = item
        while not result.ready():
            result.wait(LIVENESS_INTERVAL)
            if not result.ready() and not self._pids <= {p.pid for p in multiprocessing.active_children()}:
                raise WorkerLost(f"a worker process died (killed? out of memory?) with {len(chunk)} lines in hand")
        yield from zip(chunk, result.get())

    def close(self) -> None:
        self._pool.terminate()


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus if cpus > 1 else 0
