"""One line → one vendor event: parse, run the processors, encode for the sink. A pure function of the line
and its position, so it runs in the reader thread or, for big backfills, in worker processes (the second core
does the JSON work while the first one reads, batches, compresses and sends)."""

from __future__ import annotations

import ctypes
import enum
import gc
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkProcess
from multiprocessing.queues import Queue as MPQueue
from typing import TYPE_CHECKING, Any, Protocol, overload

import orjson

from shipper.formats import ParseError, Parser
from shipper.model import Position, Transaction
from shipper.processors import Dropped, Processor, run_chain
from shipper.sinks.base import EventFiltered, EventRejected, EventSkipped, FlatEncode, RecordDropped
# What the container framing makes of a line (light: dataclasses and orjson, nothing of the file source).
from shipper.sources.container import Framed, Framer, Ignored, Unframed
from shipper.sources.reading import PREFIX_BYTES, Oversize

if TYPE_CHECKING:  # only named in annotations: the file source need not be imported by a worker or `parse`
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
BlockResult = tuple[list[bytes], list[int], list[int], int, list[tuple[int, "Fate | None", Any, Any, int, int]]]
_KEEP_DATA = {INVALID, REJECTED, FAILED, OVERSIZE}  # the fates whose line goes to the dead-letter file


def transform_block(transform: Transformer, block: Block) -> BlockResult:
    """The block's lines, split as the file source splits them (`reading.emit`), each through `transform`."""
    file_id, start, limit = block.file_id, block.start, block.limit
    lines = block.data.split(b"\n")
    lines.pop()  # the block ends with a newline
    events: list[bytes] = []
    index: list[int] = []
    ends: list[int] = []
    others: list[tuple[int, Fate | None, Any, Any, int, int]] = []
    anonymous = 0
    framer: Framer | None = None
    made: list[Line]

    def take(i: int, items: list[Line]) -> int:
        """The items made of line `i` through `transform`, to `events` or `others`; how many were anonymous."""
        count = 0
        for _, item, offset, item_end in items:
            fate, payload, anon = transform(file_id, item, offset, item_end)
            if fate is EVENT:
                events.append(payload)
                index.append(i)
                ends.append(item_end)
                count += anon
            else:
                others.append((i, fate, payload, item if fate in _KEEP_DATA else None, offset, item_end))
        return count

    i = 0
    for i, line in enumerate(lines):
        end = start + len(line) + 1
        if len(line) <= limit and (line[:1] == b"{" and (framer is None or framer.direct) or not block.framed):
            made = [(file_id, line, start, end)]
        else:
            data: bytes | Oversize = line if len(line) <= limit else Oversize(line[:PREFIX_BYTES], len(line))
            if not block.framed:
                made = [(file_id, data, start, end)]
            else:
                if framer is None:
                    framer = Framer("auto", limit)
                    framer.start(b"{")
                made = list(framer.frame(file_id, data, start, end))
                if not made:  # a piece of a split line: done, but the checkpoint stays at the record's start
                    others.append((i, None, None, None, start, framer.pending_from))  # type: ignore[arg-type]
        anonymous += take(i, made)
        start = end
    if framer is not None and framer.pending_from is not None:
        # Known limit: a split container line still waiting for its last piece at a block's end, in a file that
        # is no container log, ends there (the parsers dead-letter what it is); its last piece goes on its own.
        # It takes the sequence number of its last piece (each line of a block has one).
        last = max(j for j, other in enumerate(others) if other[1] is None)
        i = others.pop(last)[0]
        anonymous += take(i, [framer.finish(file_id, start)])
    return events, index, ends, anonymous, others


# -- worker processes -----------------------------------------------------------------------------------------
LIVENESS_INTERVAL = 1.0  # seconds between looks at the workers while waiting for a chunk


class WorkerLost(RuntimeError):
    """A worker process died (killed, out of memory) while chunks were out: their outcomes will never come."""


class WorkerState:
    """A job of its own in a worker's queue: the sink's `worker_state`, adopted before the chunks after it."""

    __slots__ = ("state",)

    def __init__(self, state: object):
        self.state = state


def _worker_main(
    transformer: Transformer, sink: WorkerSink | None, chunks: MPQueue[list[Line] | Block | WorkerState | None],
    results: Connection, parent: int, not_mine: list[Connection],
) -> None:
    """A worker: chunks in (its own queue), outcomes out (its own pipe), in order, until told to stop or the
    parent is gone. Signals are the parent's business: a Ctrl-C or systemd's SIGTERM reaches the whole process
    group, and the parent ends its workers itself once it has what it needs."""
    for signum in _STOP_SIGNALS:  # SIGHUP too: a closed terminal's hang-up is the parent's to handle
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with(parent)
    for connection in not_mine:
        # The reading ends of the outcome pipes (its own and the earlier workers'), inherited by the fork: held
        # here, a pipe whose reader is gone would block a send forever instead of breaking.
        connection.close()
    while True:
        try:
            lines = chunks.get(timeout=LIVENESS_INTERVAL)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        except (EOFError, OSError):
            return  # the parent is gone
        if lines is None:
            return
        if type(lines) is WorkerState:
            assert sink is not None
            sink.adopt_worker_state(lines.state)
            continue
        try:
            if type(lines) is list:
                results.send([transformer(f, d, o, e) for f, d, o, e in lines])
            else:
                results.send(transform_block(transformer, lines))  # type: ignore[arg-type]
        except OSError:  # BrokenPipeError: the parent is gone, nobody wants these
            return


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when its parent dies (Linux). A parent killed with -9 can die in the
    middle of writing a chunk: the worker would then wait for the rest of it forever (it holds the queue's
    writing end itself, so no end of file ever comes), beyond the reach of any timeout of ours. (The kernel
    sends the signal when the *thread* that forked the worker ends: pools are made on the main thread.)"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the parent check between chunks still ends an idle orphan
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


class WorkerSink(Protocol):
    """What a worker process uses of the lane's sink (sinks/base.py `Sink`)."""

    def worker_state(self) -> object | None: ...

    def adopt_worker_state(self, state: object) -> None: ...


class _Worker:
    def __init__(self, context: ForkContext, transformer: Transformer, sink: WorkerSink | None, earlier: list[_Worker]):
        self.state: object | None = None  # the sink's worker_state last sent to this worker
        self.chunks: MPQueue[list[Line] | Block | WorkerState | None] = context.Queue()
        self.chunks.cancel_join_thread()  # chunks left unsent at exit are not needed: never wait to flush them
        reader, writer = context.Pipe(duplex=False)
        self.results = reader
        self.process = context.Process(
            target=_worker_main, name="kong-ship-worker", daemon=True,
            args=(transformer, sink, self.chunks, writer, os.getpid(), [reader, *(w.results for w in earlier)]),
        )
        self.process.start()
        # Only the worker holds the writing end now: its death is an end of file here, not a silent wait.
        writer.close()


class WorkerPool:
    """Transforms chunks of lines in worker processes, handing back outcomes in file order, with a bounded
    number of chunks in flight (so memory stays bounded when the sink is slow).

    Each worker has its own queue of chunks and its own pipe of outcomes, and chunks go round-robin: nothing is
    shared between workers (no lock a killed process could keep), outcomes come back in order without
    bookkeeping, and a dead worker is seen at once. Workers ignore SIGINT/SIGTERM; `close` ends them."""

    CHUNK_LINES = 512

    def __init__(self, transformer: Transformer, workers: int, sink: WorkerSink | None = None):
        """`sink`: the lane's sink, whose `worker_state` goes to each worker before the jobs that need it."""
        # fork: the workers inherit the configured parser, processors and sink without pickling them, and
        # start in milliseconds. They only run pure functions, never the parent's threads.
        context = multiprocessing.get_context("fork")
        self.workers = workers
        # What exists now (modules, the configured chain) is shared with the workers copy-on-write; frozen,
        # the garbage collector never writes to it, so those pages stay shared instead of being copied.
        gc.freeze()
        # Blocked while forking, so a Ctrl-C in that instant cannot reach a worker before it ignores it (the
        # parent gets it when unblocked).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self._workers: list[_Worker] = []
            for _ in range(max(1, workers)):
                self._workers.append(_Worker(context, transformer, sink, self._workers))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._next = 0
        self._sink = sink
        # multiprocessing joins its children at exit, and these ignore SIGTERM: killed first, whatever path
        # the parent leaves by.
        multiprocessing.util.Finalize(self, _kill, args=([w.process for w in self._workers],), exitpriority=10)

    def _submit(self, chunk: list[Line] | Block) -> int:
        index = self._next
        self._next = (index + 1) % len(self._workers)
        worker = self._workers[index]
        if self._sink is not None:
            state = self._sink.worker_state()
            if state is not None and state is not worker.state:
                worker.chunks.put(WorkerState(state))
                worker.state = state
        worker.chunks.put(chunk)
        return index

    @overload
    def map(self, lines: Iterable[Line], flush_each_round: bool = True) -> Iterator[tuple[Line, Outcome]]: ...
    @overload
    def map(
        self, lines: Iterable[Line | Block], flush_each_round: bool = True
    ) -> Iterator[tuple[Line, Outcome] | tuple[Block, BlockResult]]: ...
    def map(
        self, lines: Iterable[Line | Block], flush_each_round: bool = True
    ) -> Iterator[tuple[Line, Outcome] | tuple[Block, BlockResult]]:
        """Yields (line, outcome) or (block, its result) in order. Lines are grouped into chunks; a block
        (sources/blocks.py) is a job of its own. The last partial chunk of the input is sent when it ends."""
        in_flight: list[tuple[list[Line] | Block, int]] = []
        limit = len(self._workers) * 2
        chunk: list[Line] = []
        for line in lines:
            if not isinstance(line, tuple):  # a Block: after the lines read before it
                if chunk:
                    in_flight.append((chunk, self._submit(chunk)))
                    chunk = []
                in_flight.append((line, self._submit(line)))
                while len(in_flight) >= limit:
                    yield from self._collect(in_flight.pop(0))
                continue
            chunk.append(line)
            if len(chunk) >= self.CHUNK_LINES:
                in_flight.append((chunk, self._submit(chunk)))
                chunk = []
                while len(in_flight) >= limit:
                    yield from self._collect(in_flight.pop(0))
        if chunk:
            in_flight.append((chunk, self._submit(chunk)))
        for item in in_flight:
            yield from self._collect(item)

    def _collect(
        self, item: tuple[list[Line] | Block, int]
    ) -> Iterator[tuple[Line, Outcome] | tuple[Block, BlockResult]]:
        chunk, index = item
        worker = self._workers[index]
        held = len(chunk) if isinstance(chunk, list) else chunk.lines
        lost = WorkerLost(f"a worker process died (killed? out of memory?) with {held} lines in hand")
        try:
            while not worker.results.poll(LIVENESS_INTERVAL):
                if not worker.process.is_alive() and not worker.results.poll(0):
                    raise lost
            outcomes = worker.results.recv()
        except (EOFError, OSError):
            raise lost from None
        if type(chunk) is list:
            yield from zip(chunk, outcomes)
        else:
            yield chunk, outcomes  # type: ignore[misc]

    def close(self) -> None:
        """End the workers at once: whatever they still hold is not needed (at the end of a run they are idle;
        when stopping, the lines they hold are read again at the next start). They ignore SIGTERM, so SIGKILL;
        nothing of theirs is shared, so nothing is left locked."""
        _kill([w.process for w in self._workers])
        for worker in self._workers:
            worker.results.close()
            worker.chunks.cancel_join_thread()
            worker.chunks.close()


def _kill(processes: list[ForkProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(5)


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus if cpus > 1 else 0
