"""Wires the flow: source → parse → processors → sink encoding → bounded queue → batches → sender, with
acknowledgements flowing back into checkpoints.

Each sink gets its own `Lane`: its own reader over the files, queue, batches, retries and checkpoints. A sink
that is down or slow therefore holds back only itself (its reader waits, the file is the buffer) and catches
up later; the others keep delivering. Reading a file once per sink is the price, and it is small next to
the independence it buys.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from shipper.deadletter import DeadLetter
from shipper.delivery.acks import AckTracker
from shipper.delivery.batcher import Batcher
from shipper.delivery.queue import BoundedQueue, Closed
from shipper.delivery.sender import Item, Sender
from shipper.errors import FatalError
from shipper.formats import Parser
from shipper.processors import Processor, build_chain
from shipper.processors.masking import Masker
from shipper.service.notify import Notifier
from shipper.sinks.base import Sink
from shipper.sources.checkpoints import CheckpointStore
from shipper.sources.files import FileSource
from shipper.sources.identity import Known, family
from shipper.threads import death_notice, start_thread
from shipper.transform import (
    BLANK, EVENT, FAILED, FILTERED, INVALID, OVERSIZE, REJECTED, SKIPPED, Transformer, WorkerLost, WorkerPool,
)

log = logging.getLogger("kong-ship")

PARCEL_EVENTS = 128  # events handed to the batcher at once (the last parcel of a read goes at once)


@dataclass
class LaneSummary:
    sink: str
    read: int = 0
    parsed: int = 0
    anonymous: int = 0
    dead_lettered: int = 0
    sent: int = 0
    rejected: int = 0
    retries: int = 0
    filtered: int = 0  # outside --since/--until
    skipped: int = 0  # the sink chose not to send them (Moesif sampling, kinds a vendor has no event for)
    blank: int = 0  # empty or whitespace-only lines
    bytes_read: int = 0
    unterminated: list[tuple[str, int]] = field(default_factory=list)


class Lane:
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
        self.counts: Counter[str] = Counter()  # reader thread only
        self.out_counts: Counter[str] = Counter()  # sender threads, under the lock
        self._out_lock = threading.Lock()
        self.store = CheckpointStore(settings.state_dir, sink.name)
        self.acks = AckTracker()
        # A sink may bound its own queue (Moesif's event_queue_size); --queue-size bounds the others.
        queue_events = getattr(sink, "queue_events", None) or settings.queue_size
        self.queue: BoundedQueue[list[Item]] = BoundedQueue(queue_events, settings.queue_bytes)
        self.sender = Sender(
            sink,
            self.acks,
            dead_letter,
            abort,
            self._count_out,
            retry_initial=settings.retry_initial,
            retry_max=settings.retry_max,
            timeout=settings.timeout,
            concurrency=settings.concurrency,
            max_rate=settings.max_rate,
            ca_file=settings.ca_file,
        )
        batch_events = min(settings.batch_size or getattr(sink, "default_batch_events", sink.max_batch_events), sink.max_batch_events)
        if settings.max_rate:
            batch_events = min(batch_events, max(1, int(settings.max_rate)))  # no burst beyond a second's worth
        self.batcher = Batcher(
            self.queue,
            self.sender,
            max_events=batch_events,
            max_bytes=sink.max_batch_bytes,
            envelope_bytes=sink.envelope_bytes,
            flush_interval=settings.flush_interval,
            concurrency=settings.concurrency,
            on_fatal=on_fatal,
            on_idle=on_progress,
        )
        self.source = FileSource(
            settings.paths,
            known=self._known,
            follow=follow,
            start_at_end=settings.start_at == "end",
            max_line_bytes=settings.max_line_bytes,
            rotate_wait=settings.rotate_wait,
            on_opened=self.acks.start,
        )
        self._threads: list[threading.Thread] = []
        self.transform = Transformer(parser, chain, sink)
        self.pool: WorkerPool | None = None
        if settings.workers > 0 and getattr(sink, "parallel_safe", False):
            self.pool = WorkerPool(self.transform, settings.workers)

    def behind(self) -> dict[str, int]:
        """Bytes of each known file past its acknowledged position: what this sink still owes, by path."""
        committed = self.acks.committed()  # files opened in this run
        entries = dict(self.store.entries)  # files known from earlier runs
        out: dict[str, int] = {}
        for file_id in committed.keys() | entries.keys():
            entry = entries.get(file_id)
            path = self.source.path_of(file_id) or (entry.path if entry else "")
            if not path:
                continue
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            offset = committed[file_id] if file_id in committed else entry.offset
            out[path] = max(0, size - offset)
        return out

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _known(self, fingerprint: str) -> dict[str, Known]:
        """The checkpoints of the identities with this fingerprint: the file source picks the one a file
        confirms (see sources/identity.py), or none, and then reads the file from its start."""
        return {
            file_id: Known(entry.offset, entry.tail, entry.path)
            for file_id, entry in list(self.store.entries.items())
            if family(file_id) == fingerprint
        }

    def save_checkpoints(self) -> None:
        for file_id, offset in self.acks.committed().items():
            entry = self.store.entries.get(file_id)
            if entry is not None and entry.offset == offset:
                continue
            path = self.source.path_of(file_id) or (entry.path if entry else "")
            self.store.update(file_id, offset, path, self.source.tail_hash(file_id, offset))
        self.store.save()
        open_ids = self.source.open_ids()
        for file_id in list(self.acks.committed()):
            if file_id not in open_ids:
                self.acks.forget(file_id)

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
            before = self.counts["lines"]
            if not self._pump(self.source.read_round()):
                return
            self.source.check()
            if self.counts["lines"] == before:
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
            numbered = seqs = deque()

            def read(lines=lines):
                for line in lines:
                    seqs.append(issue(line[0]))
                    yield line

            outcomes = self.pool.map(read())
        else:
            outcomes = ((line, transform(*line)) for line in lines)
        parcel: list[Item] = []
        parcel_bytes = 0
        for (file_id, data, offset, end), (outcome, payload, anonymous) in outcomes:
            if stop.is_set():
                return False
            seq = numbered.popleft() if numbered is not None else issue(file_id)
            counts["lines"] += 1
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
            if outcome == BLANK:
                counts["blank"] += 1
            elif outcome == INVALID:
                self._input_error(payload[0], payload[1], file_id, offset, data)
            elif outcome == FAILED:  # this sink's own: dead-lettered by each lane it happens in
                counts["parsed"] += 1
                counts["dead_lettered"] += 1
                self.dead_letter.write(
                    payload[0], payload[1], sink=self.sink.name, file=self.source.path_of(file_id), offset=offset,
                    line=data,
                )
            elif outcome == REJECTED:
                counts["parsed"] += 1
                self.dead_letter.write(
                    "rejected", payload, sink=self.sink.name, file=self.source.path_of(file_id), offset=offset, line=data
                )
                self._count_out("rejected", 1)
            elif outcome == SKIPPED:
                counts["parsed"] += 1
                counts["skipped"] += 1
            elif outcome == FILTERED:
                counts["parsed"] += 1
                counts["filtered"] += 1
            elif outcome == OVERSIZE:
                self._input_error(
                    "too_long",
                    f"line of {data.length} bytes is over --max-line-bytes ({self.settings.max_line_bytes})",
                    file_id, offset, data.prefix, truncated=True,
                )
            # Only now: a dead letter that could not be written yet has been waited for, never passed over.
            ack(file_id, seq, end)
        return not parcel or self._send_parcel(parcel, parcel_bytes)

    def _send_parcel(self, parcel: list[Item], nbytes: int) -> bool:
        return self.queue.put(parcel, nbytes, self.abort, count=len(parcel))

    def _input_error(
        self, reason: str, detail: str, file_id: str, offset: int, line: bytes, truncated: bool = False
    ) -> None:
        self.counts["dead_lettered"] += 1
        if self.report_input_errors:
            self.dead_letter.write(
                reason, detail, file=self.source.path_of(file_id), offset=offset, line=line, truncated=truncated
            )

    def _count_out(self, key: str, n: int) -> None:
        with self._out_lock:
            self.out_counts[key] += n

    def summary(self) -> LaneSummary:
        with self._out_lock:
            out = dict(self.out_counts)
        return LaneSummary(
            sink=self.sink.name,
            read=self.counts["lines"],
            parsed=self.counts["parsed"],
            anonymous=self.counts["anonymous"],
            dead_lettered=self.counts["dead_lettered"],
            sent=out.get("sent", 0),
            rejected=out.get("rejected", 0),
            retries=out.get("retries", 0),
            filtered=self.counts["filtered"],
            skipped=self.counts["skipped"],
            blank=self.counts["blank"],
            bytes_read=self.source.bytes_read,
            unterminated=list(self.source.unterminated),
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.batcher.shutdown()
        self.sender.close()
        self.source.close()


@dataclass
class RunResult:
    lanes: list[LaneSummary]
    elapsed: float
    dead_letters: dict[str, int]
    dead_letter_path: str


class Pipeline:
    def __init__(self, settings, sinks: list[Sink], *, follow: bool):
        self.settings = settings
        self.follow = follow
        self.stop = threading.Event()
        self.abort = threading.Event()
        self._tick = threading.Event()
        self._signals = 0
        self.forced_by: int | None = None  # the signal that cut shutdown short
        self.stopped_by: int | None = None  # the first SIGTERM/SIGINT, which stopped the run
        self.fatal: str | None = None
        self._fatal_lock = threading.Lock()
        # One set of masks for the events and the dead letters.
        names = (*settings.mask_headers, *settings.mask_query, *settings.mask_body_keys)
        masker = Masker(names, settings.ship_raw_bodies)
        self.dead_letter = DeadLetter(settings.dead_letter_path, masker, abort=self.abort)
        parser = Parser(settings.format, settings.nginx_fields)
        chain = build_chain(
            settings.jwt_places, settings.jwt_claim, since_ms=settings.since_ms, until_ms=settings.until_ms,
            masker=masker,
        )
        self.lanes = [
            Lane(
                settings,
                sink,
                parser=parser,
                chain=chain,
                dead_letter=self.dead_letter,
                report_input_errors=(i == 0),
                follow=follow,
                stop=self.stop,
                abort=self.abort,
                on_fatal=self._on_fatal,
                on_progress=self._tick.set,
            )
            for i, sink in enumerate(sinks)
        ]
        self._observer = None
        self.notifier = Notifier()
        self._last_status = 0.0
        self.started_at = time.time()

    def wake(self) -> None:
        """Have every lane look for new lines now rather than at its next poll (new records were spooled)."""
        for lane in self.lanes:
            lane.wake.set()

    def behind(self) -> dict[str, int]:
        """Bytes per path that some sink has not acknowledged yet; a path is listed only once every sink has
        seen it (so a file some sink has not opened is never taken for done)."""
        per_lane = [lane.behind() for lane in self.lanes]
        common = set.intersection(*(set(b) for b in per_lane)) if per_lane else set()
        return {path: max(b[path] for b in per_lane) for path in common}

    def status_line(self) -> str:
        """A short live summary (systemd STATUS=, the backfill progress line)."""
        parts = []
        for lane in self.lanes:
            summary = lane.summary()
            parts.append(
                f"{lane.sink.name}: {summary.sent:,} shipped, {lane.acks.pending():,} in flight"
                + (f", {summary.rejected:,} rejected" if summary.rejected else "")
            )
        dead = self.dead_letter.total
        return "; ".join(parts) + (f"; {dead:,} dead-lettered" if dead else "")

    def fail(self, reason: str) -> None:
        """End the run as fatal (exit 1 with `reason`): for work beside the pipeline, e.g. a thread of a command."""
        self._on_fatal(reason)

    def _on_fatal(self, reason: str) -> None:
        with self._fatal_lock:
            if self.fatal is None:
                self.fatal = reason
        self.stop.set()
        self.abort.set()
        self._tick.set()

    # -- signals ---------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        if self._signals == 1:
            self.stopped_by = signum
            log.info(
                "%s: stopping; delivering what is in flight (up to %.0f s)",
                signal.Signals(signum).name, self.settings.shutdown_timeout,
            )
            self.stop.set()
        else:
            self.forced_by = signum
            self.abort.set()
        self._tick.set()

    def _on_hup(self, signum, frame) -> None:
        log.info("SIGHUP: re-opening files and re-reading the patterns")
        for lane in self.lanes:
            lane.rescan.set()
            lane.wake.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)

    def _watch(self) -> None:
        """inotify (through watchdog) wakes the readers as soon as a log grows; polling stays as the safety
        net, so a missed or unsupported event only costs `--poll-interval`."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return
        lanes = self.lanes

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                for lane in lanes:
                    lane.wake.set()

        directories = set()
        for pattern in self.settings.paths:
            directory = os.path.dirname(os.path.abspath(pattern))
            while any(ch in directory for ch in "*?["):
                directory = os.path.dirname(directory)
            if os.path.isdir(directory):
                directories.add(directory)
        try:
            observer = Observer()
            for directory in directories:
                observer.schedule(Wake(), directory, recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except OSError as exc:
            log.warning("file notifications unavailable (%s); polling every %.2f s", exc, self.settings.poll_interval)

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        started = time.monotonic()
        for lane in self.lanes:
            lane.store.load()
        self._install_signals()
        if self.follow:
            self._watch()
        for lane in self.lanes:
            lane.start()
        if self.follow:
            self.notifier.ready(f"tailing {' '.join(self.settings.paths)}")
            log.info(
                "started: following %s → %s (state in %s)",
                " ".join(self.settings.paths), ", ".join(lane.sink.name for lane in self.lanes), self.settings.state_dir,
            )
        stop_deadline: float | None = None
        last_save = time.monotonic()
        try:
            while True:
                # While stopping, look often: the run ends as soon as the last acknowledgement arrives.
                interval = min(self.settings.checkpoint_interval, self.notifier.watchdog_interval or 3600.0)
                self._tick.wait(0.05 if self.stop.is_set() else interval)
                self._tick.clear()
                now = time.monotonic()
                self.notifier.tick(now)
                if self.abort.is_set() or all(lane.drained() for lane in self.lanes):
                    break
                if now - self._last_status >= 5.0 and not self.stop.is_set():
                    self._last_status = now
                    self.notifier.status(self.status_line())
                if self.stop.is_set():
                    if stop_deadline is None:
                        self.notifier.stopping()
                        stop_deadline = now + self.settings.shutdown_timeout
                        self.wake()
                    elif now >= stop_deadline:
                        pending = sum(lane.acks.pending() for lane in self.lanes)
                        log.warning(
                            "shutdown timeout: %d events not acknowledged; they will be sent again on the next start",
                            pending,
                        )
                        self.abort.set()
                        break
                if now - last_save >= self.settings.checkpoint_interval:
                    for lane in self.lanes:
                        lane.save_checkpoints()
                    last_save = now
        finally:
            for lane in self.lanes:
                lane.save_checkpoints()
            if self._observer is not None:
                self._observer.stop()
            for lane in self.lanes:
                lane.close()
            self.dead_letter.close()
            self.notifier.close()
        if self.follow:
            log.info("stopped: %s", self.status_line())
        result = RunResult(
            lanes=[lane.summary() for lane in self.lanes],
            elapsed=time.monotonic() - started,
            dead_letters=dict(self.dead_letter.counts),
            dead_letter_path=self.dead_letter.path or "",
        )
        if self.fatal:
            raise FatalError(self.fatal)
        return result
