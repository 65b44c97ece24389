"""One sink's lane: its own reader over the files, bounded queue, batches, sender, acknowledgements and
checkpoints (see `pipeline.py` for why each sink has one).

The reader turns lines into events (`transform.Transformer`, or a pool of workers for sinks whose encoding is
parallel-safe), counts what became of each line and hands events to the queue in parcels; the batcher and
sender take them from there; acknowledgements move the checkpoints (`sources/resume.py`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from itertools import repeat

from shipper.counters import DROP_COUNTERS, FilteredTotals, LaneCounters, LaneSummary
from shipper.deadletter import DeadLetter
from shipper.delivery.acks import AckTracker
from shipper.delivery.batcher import Batcher
from shipper.delivery.closed import BatchPlan, ClosedBatch, Item
from shipper.delivery.queue import BoundedQueue, Closed
from shipper.delivery.sender import Sender
from shipper.formats import CONTAINER_FRAMINGS, Parser
from shipper.processors import Processor
from shipper.sinks.base import Sink
from shipper.sinks.compression import PreparedBody
from shipper.sources.blocks import BLOCK_BYTES, Block
from shipper.sources.files import FileSource
from shipper.sources.reading import Oversize
from shipper.sources.resume import Resume
from shipper.threads import death_notice, start_thread
from shipper.transform import (
    BLANK, EVENT, FAILED, FILTERED, IGNORED, INVALID, OVERSIZE, REJECTED, SKIPPED, BlockResult, Fate, Transformer,
    line_bytes,
)
from shipper.workers import WorkerLost, WorkerPool

PARCEL_EVENTS = 128  # events handed to the batcher at once (the last parcel of a read goes at once)


class Lane:
    """`start()` its reader and batcher threads; `stop` ends reading, `abort` gives up on what is in flight.
    `wake` and `rescan` are set from other threads: look for new lines now, re-open the files now (SIGHUP).
    Only the first lane writes input errors (lines no sink can use) to the dead-letter file: once is enough."""

    def __init__(
        self,
        settings,
        sink: Sink,
        *,
        parser: Parser,
        chain: list[Processor],
        dead_letter: DeadLetter,
        report_input_errors: bool,
        follow: bool,
        stop: threading.Event,
        abort: threading.Event,
        on_fatal,
        on_progress,
    ):
        self.settings = settings
        self.sink = sink
        self.dead_letter = dead_letter
        self.report_input_errors = report_input_errors
        self.follow = follow
        self.stop = stop
        self.abort = abort
        self.on_progress = on_progress
        self.on_fatal = on_fatal
        self.wake = threading.Event()
        self.rescan = threading.Event()
        self.counters = LaneCounters()
        self.counts = self.counters.reader  # the reader thread's own: no lock
        self.acks = AckTracker()
        self.resume = Resume(settings.state_dir, sink.name, self.acks)
        self.filtered_totals = FilteredTotals(settings.state_dir, sink.name)
        # A sink may bound its own queue (Moesif's event_queue_size); --queue-size bounds the others.
        queue_events = sink.limits.queue_events or settings.queue_size
        self.queue: BoundedQueue[list[Item] | ClosedBatch] = BoundedQueue(queue_events, settings.queue_bytes)
        self.sender = Sender(
            sink,
            self.acks,
            dead_letter,
            abort,
            self.counters.add,
            retry_initial=settings.retry_initial,
            retry_max=settings.retry_max,
            give_up_after=settings.give_up_after,
            timeout=settings.timeout,
            concurrency=settings.concurrency,
            max_rate=settings.max_rate,
            ca_file=settings.ca_file,
        )
        batch_events = sink.limits.batch_events(settings.batch_size)
        if settings.max_rate:
            batch_events = min(batch_events, max(1, int(settings.max_rate)))  # no burst beyond a second's worth
        self.batcher = Batcher(
            self.queue,
            self.sender,
            max_events=batch_events,
            max_bytes=sink.limits.max_batch_bytes,
            envelope_bytes=sink.limits.envelope_bytes,
            flush_interval=settings.flush_interval,
            concurrency=settings.concurrency,
            on_fatal=on_fatal,
            on_idle=on_progress,
        )
        self.source = FileSource(
            settings.paths,
            known=self.resume.known,
            follow=follow,
            start_at_end=settings.start_at == "end",
            ignore_older=settings.ignore_older,
            max_line_bytes=settings.max_line_bytes,
            rotate_wait=settings.rotate_wait,
            on_opened=self.acks.start,
            # Container log lines are recognised by themselves; --format cri/docker takes every line as one.
            framing=settings.format if settings.format in CONTAINER_FRAMINGS else "auto",
        )
        self._threads: list[threading.Thread] = []
        self.transform = Transformer(parser, chain, sink, sink.flat_path(parser, chain))
        self.pool: WorkerPool | None = None
        if settings.workers > 0 and sink.parallel_safe:
            # A sink that prepares bodies has a block's batches closed and made in the workers (delivery/closed.py).
            plan = BatchPlan(batch_events, sink.limits.max_batch_bytes, sink.limits.envelope_bytes)
            self.pool = WorkerPool(self.transform, settings.workers, sink, plan if sink.prepare([]) is not None else None)

    def behind(self) -> dict[str, int]:
        """Bytes of each known file past its acknowledged position: what this sink still owes, by path."""
        return self.resume.behind(self.source)

    def save_checkpoints(self) -> bool:
        """False: the checkpoint could not be written (said by the store, retried at the next save)."""
        saved = self.resume.save(self.source)
        self.filtered_totals.save(self.counters.filtered_reasons(), self.counts["unrouted"])  # for `kong-ship status`
        return saved

    # -- threads ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [
            start_thread(self._read, f"read-{self.sink.name}", self.on_fatal),
            start_thread(self.batcher.run, f"batch-{self.sink.name}", self.on_fatal),
        ]

    def drained(self) -> bool:
        """Everything read has been handed to the vendor and answered (or the lane gave up)."""
        return self.batcher.finished and self.batcher.wait_idle(0)

    def _read(self) -> None:
        try:
            if self.follow:
                self._follow()
            else:
                self._backfill()
        except Closed:
            pass
        except WorkerLost as exc:
            # While stopping, the reader ends anyway: what the lost chunk held is read again at the next start,
            # as after any shutdown, so only a loss during the run is fatal.
            if not self.stop.is_set():
                self.on_fatal(death_notice(f"read-{self.sink.name}", exc))
        except Exception as exc:
            # Told before the queue closes: a closed queue lets the lane drain, and a drained run would end
            # with exit 0 and the rest of the files unread.
            self.on_fatal(death_notice(f"read-{self.sink.name}", exc))
        finally:
            self.queue.close()
            self.on_progress()

    def _backfill(self) -> None:
        # With workers, plain files go to them in blocks (sources/blocks.py): no per-line work here.
        if self.pool is not None:  # blocks handed over in memory shared with the workers (workers.BlockRing)
            self._pump(self.source.read_all(blocks=BLOCK_BYTES, keep=self.pool.keep))
        else:
            self._pump(self.source.read_all())

    def _follow(self) -> None:
        poll = self.settings.poll_interval
        last_discovery = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if self.rescan.is_set():
                self.rescan.clear()
                self.source.reopen()
            elif now - last_discovery >= poll:
                self.source.discover()
                last_discovery = now
            before = self.counts["read"]
            if not self._pump(self.source.read_round()):
                return
            self.source.check()
            if self.counts["read"] == before:
                self.wake.wait(poll)
                self.wake.clear()

    def _pump(self, lines) -> bool:
        """Turn lines into queued events, in parcels; False when shutdown interrupted it."""
        counts = self.counts
        issue = self.acks.issue
        ack = self.acks.ack
        stop = self.stop
        transform = self.transform
        numbered: deque[int] | None = None
        if self.pool is not None:
            # Numbered as they are read, not as their outcomes come back: lines in the workers' hands count as
            # pending, so a file the source has already let go is not forgotten (save_checkpoints) under them.
            seqs: deque[int] = deque()
            numbered = seqs

            issue_many = self.acks.issue_many

            def read(lines=lines):
                for line in lines:
                    if type(line) is Block:
                        seqs.append(issue_many(line.file_id, line.lines))
                    else:
                        seqs.append(issue(line[0]))
                    yield line

            outcomes = self.pool.map(read())
        else:
            outcomes = ((line, transform(*line)) for line in lines)
        parcel: list[Item] = []
        parcel_bytes = 0
        for line, result in outcomes:
            if stop.is_set():
                return False
            if type(line) is Block:
                assert numbered is not None
                if not self._block(line, result, numbered.popleft()):  # type: ignore[arg-type]
                    return False
                continue
            (file_id, data, offset, end), (outcome, payload, anonymous) = line, result  # type: ignore[misc]
            seq = numbered.popleft() if numbered is not None else issue(file_id)
            counts["read"] += 1
            if outcome == EVENT:
                counts["parsed"] += 1
                if anonymous:
                    counts["anonymous"] += 1
                parcel.append((file_id, seq, end, payload))
                parcel_bytes += len(payload)
                if len(parcel) >= PARCEL_EVENTS:
                    if not self._send_parcel(parcel, parcel_bytes):
                        return False
                    parcel, parcel_bytes = [], 0
                continue
            self._account(file_id, data, offset, outcome, payload)
            # Only now: a dead letter that could not be written yet has been waited for, never passed over.
            ack(file_id, seq, end)
        return not parcel or self._send_parcel(parcel, parcel_bytes)

    def _block(self, block: Block, result: BlockResult, first: int) -> bool:
        """A block's result: its events queued in parcels, its other lines counted (dead letters written) and
        acknowledged, in bulk; line i of the block has sequence number first + i."""
        events, index, ends, anonymous, others = result
        file_id, counts = block.file_id, self.counts
        count = len(index)
        counts["read"] += count
        counts["parsed"] += count
        counts["anonymous"] += anonymous
        if others:
            done = []
            for i, outcome, payload, data, offset, end in others:
                if outcome is not None:  # None: a piece of a split container line, no line of its own
                    counts["read"] += 1
                    self._account(file_id, data, offset, outcome, payload)
                done.append((file_id, first + i, end))
            self.acks.ack_many(done)  # after the dead letters were written, as on the line path
        at = 0
        while events and type(events[0]) is PreparedBody:  # batches closed by the worker: queued as they are
            body: PreparedBody = events.pop(0)  # type: ignore[assignment]
            size = len(body)
            seqs = [first + i for i in index[at : at + size]]
            if not self.queue.put(ClosedBatch(file_id, seqs, ends[at : at + size], body), len(body.deflated),
                                  self.abort, count=size):  # fmt: skip
                return False
            at += size
        if at:  # the events after the closed batches (delivery/closed.py prepare_all): to the batcher as items
            index, ends = index[at:], ends[at:]
        items = list(zip(repeat(file_id), map(first.__add__, index), ends, events))
        for at in range(0, len(items), PARCEL_EVENTS):
            if not self._send_parcel(items[at : at + PARCEL_EVENTS], sum(map(len, events[at : at + PARCEL_EVENTS]))):
                return False
        return True

    def _account(self, file_id: str, data, offset: int, outcome: Fate, payload) -> None:
        """Count a line that is no event, and dead-letter it if it is one."""
        counts = self.counts
        if outcome == BLANK:
            counts["blank"] += 1
        elif outcome == INVALID:
            self._input_error(payload[0], payload[1], file_id, offset, line_bytes(data))
        elif outcome == IGNORED:  # Kong's own lines in a container's stream: skipped, and counted by kind
            counts["skipped"] += 1
            counts[payload] += 1
        elif outcome == FAILED:  # this sink's own: dead-lettered by each lane it happens in
            counts["parsed"] += 1
            self.dead_letter.write(
                payload[0], payload[1], sink=self.sink.name, file=self.source.path_of(file_id), offset=offset,
                line=line_bytes(data),
            )  # Unwritten (stopped while its file cannot be written): not counted, read again next time
            counts["dead_lettered"] += 1
        elif outcome == REJECTED:
            counts["parsed"] += 1
            self.dead_letter.write(
                "rejected", payload, sink=self.sink.name, file=self.source.path_of(file_id), offset=offset,
                line=line_bytes(data),
            )
            self.counters.add("rejected", 1)
        elif outcome == SKIPPED:
            counts["parsed"] += 1
            counts["skipped"] += 1
        elif outcome == FILTERED:
            counts["parsed"] += 1
            counts[payload if payload in DROP_COUNTERS else "filtered"] += 1  # routed_elsewhere, unrouted
            if payload not in DROP_COUNTERS:  # by reason (LaneCounters.filtered_by); None: the --since/--until window
                self.counters.filtered_by[payload or "window"] += 1
        elif outcome == OVERSIZE:
            assert isinstance(data, Oversize)  # the transform answers OVERSIZE for an Oversize line only
            self._input_error(
                "too_long",
                f"line of {data.length} bytes is over --max-line-bytes ({self.settings.max_line_bytes})",
                file_id, offset, data.prefix, truncated=True,
            )

    def _send_parcel(self, parcel: list[Item], nbytes: int) -> bool:
        return self.queue.put(parcel, nbytes, self.abort, count=len(parcel))

    def _input_error(
        self, reason: str, detail: str, file_id: str, offset: int, line: bytes, truncated: bool = False
    ) -> None:
        if self.report_input_errors:
            self.dead_letter.write(
                reason, detail, file=self.source.path_of(file_id), offset=offset, line=line, truncated=truncated
            )  # Unwritten: not counted (as above)
        self.counts["dead_lettered"] += 1

    def summary(self) -> LaneSummary:
        return LaneSummary(
            self.sink.name, self.counters.snapshot(), self.source.bytes_read, list(self.source.unterminated),
            self.counters.filtered_reasons(), list(self.source.unread),
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.batcher.shutdown()
        self.sender.close()
        self.source.close()
        self.resume.close()
