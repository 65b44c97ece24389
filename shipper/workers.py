"""Worker processes for big backfills: the transform (transform.py) of chunks of lines, or of blocks of a
file (sources/blocks.py), in processes of their own, outcomes handed back in file order. The second core does
the JSON work while the first one reads, queues and sends."""

from __future__ import annotations

import ctypes
import gc
import mmap
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkProcess
from multiprocessing.queues import Queue as MPQueue
from typing import Protocol, overload

from shipper.allocator import keep_worker_heap
from shipper.delivery.closed import BatchPlan, prepare_all
from shipper.sinks.compression import PreparedBody
from shipper.sources.blocks import BLOCK_BYTES, Block, Shared
from shipper.transform import BlockResult, Line, Outcome, Transformer, transform_block

LIVENESS_INTERVAL = 1.0  # seconds between looks at the workers while waiting for a chunk


class WorkerLost(RuntimeError):
    """A worker process died (killed, out of memory) while chunks were out: their outcomes will never come."""


class WorkerState:
    """A job of its own in a worker's queue: the sink's `worker_state`, adopted before the chunks after it."""

    __slots__ = ("state",)

    def __init__(self, state: object):
        self.state = state


def _worker_main(
    transformer: Transformer, sink: WorkerSink | None, plan: BatchPlan | None,
    chunks: MPQueue[list[Line] | Block | WorkerState | None], results: Connection, parent: int,
    not_mine: list[Connection], ring: BlockRing,
) -> None:
    """A worker: chunks in (its own queue), outcomes out (its own pipe), in order, until told to stop or the
    parent is gone. Signals are the parent's business: a Ctrl-C or systemd's SIGTERM reaches the whole process
    group, and the parent ends its workers itself once it has what it needs."""
    for signum in _STOP_SIGNALS:  # SIGHUP too: a closed terminal's hang-up is the parent's to handle
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with(parent)
    keep_worker_heap()
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
                result = transform_block(transformer, lines, ring.area)  # type: ignore[arg-type]
                if plan is not None and result[0]:  # the events closed into batches, their bodies made here
                    assert sink is not None
                    result = (prepare_all(result[0], plan, sink.prepare), *result[1:])  # type: ignore[assignment]
                results.send(result)
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

    def prepare(self, events: list[bytes]) -> PreparedBody | None: ...


class BlockRing:
    """Blocks handed to the workers through memory they share with the reader, not through their queues.

    An anonymous shared mapping made before the workers fork, cut into one slot per job the pool lets be in
    flight: the reader copies a block into the next slot (`keep`), the job carries only where it lies, and the
    worker reads the block's lines straight out of the slot (transform.transform_block). Through the queue, a
    1 MiB block was pickled by a feeder thread, written into a pipe 64 KiB at a time and read and unpickled by
    the worker: 4 µs a record of the main process's CPU, and a fresh 1 MiB object in the worker. A slot is used
    again only once the result of the block in it has come back (`release`), so the worker is done with it;
    when the next slot is not free, or a block is bigger than a slot (a gzip block with a long line carried
    in), the block goes through the queue as before."""

    def __init__(self, slots: int, slot_bytes: int):
        self.slot_bytes = slot_bytes
        self.area = mmap.mmap(-1, slots * slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS: the forked workers see it
        self.free = [True] * slots
        self.next = 0

    def keep(self, data: memoryview) -> bytes | Shared:
        size = len(data)
        slot = self.next
        if size > self.slot_bytes or not self.free[slot]:
            return bytes(data)
        self.next = (slot + 1) % len(self.free)
        self.free[slot] = False
        at = slot * self.slot_bytes
        self.area[at : at + size] = data
        return Shared(at, size)

    def release(self, data: bytes | Shared) -> None:
        if type(data) is Shared:
            self.free[data.at // self.slot_bytes] = True


class _Worker:
    def __init__(
        self, context: ForkContext, transformer: Transformer, sink: WorkerSink | None, plan: BatchPlan | None,
        earlier: list[_Worker], ring: BlockRing,
    ):
        self.state: object | None = None  # the sink's worker_state last sent to this worker
        self.chunks: MPQueue[list[Line] | Block | WorkerState | None] = context.Queue()
        self.chunks.cancel_join_thread()  # chunks left unsent at exit are not needed: never wait to flush them
        reader, writer = context.Pipe(duplex=False)
        self.results = reader
        self.process = context.Process(
            target=_worker_main, name="kong-ship-worker", daemon=True,
            args=(
                transformer, sink, plan, self.chunks, writer, os.getpid(),
                [reader, *(w.results for w in earlier)], ring,
            ),
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

    def __init__(
        self, transformer: Transformer, workers: int, sink: WorkerSink | None = None, plan: BatchPlan | None = None,
        block_bytes: int = BLOCK_BYTES,
    ):
        """`sink`: the lane's sink, whose `worker_state` goes to each worker before the jobs that need it. `plan`:
        a block's events come back as batches closed by it, their bodies made by the sink (delivery/closed.py).
        `block_bytes`: the size of the blocks `keep` keeps in shared memory (bigger ones go through the queues)."""
        # fork: the workers inherit the configured parser, processors and sink without pickling them, and
        # start in milliseconds. They only run pure functions, never the parent's threads.
        context = multiprocessing.get_context("fork")
        self.workers = workers
        self.in_flight = max(1, workers) * 2  # jobs out at once
        self._ring = BlockRing(self.in_flight, block_bytes)
        # What exists now (modules, the configured chain) is shared with the workers copy-on-write; frozen,
        # the garbage collector never writes to it, so those pages stay shared instead of being copied.
        gc.freeze()
        # Blocked while forking, so a Ctrl-C in that instant cannot reach a worker before it ignores it (the
        # parent gets it when unblocked).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self._workers: list[_Worker] = []
            for _ in range(max(1, workers)):
                self._workers.append(_Worker(context, transformer, sink, plan, self._workers, self._ring))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._next = 0
        self._sink = sink
        self.keep = self._ring.keep  # for the reader (sources/blocks.py): a block's bytes, kept for the workers
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
        limit = self.in_flight
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
            self._ring.release(chunk.data)  # type: ignore[union-attr]  # the worker has its own copy
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
