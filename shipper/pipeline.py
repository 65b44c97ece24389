"""Wires the flow: source → parse → processors → sink encoding → bounded queue → batches → sender, with
acknowledgements flowing back into checkpoints.

Each sink gets its own `Lane` (lane.py): its own reader over the files, queue, batches, retries and
checkpoints. A sink that is down or slow therefore holds back only itself (its reader waits, the file is the
buffer) and catches up later; the others keep delivering. Reading a file once per sink is the price, and it is
small next to the independence it buys.

The pipeline itself only wires the parts and runs them: the lanes, the file watcher (sources/watch.py), the
signals, checkpoints on a timer, the shutdown deadline and the status line. Threads beside it (a command's
poller) see it through `context`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from shipper.counters import COUNTERS, LaneSummary
from shipper.deadletter import DeadLetter
from shipper.errors import FatalError
from shipper.formats import Parser
from shipper.lane import Lane
from shipper.processors import chain_for
from shipper.routing import lane_chain
from shipper.service.notify import Notifier
from shipper.sinks.base import Sink
from shipper.sources.watch import Watcher
from shipper.threads import RunContext, Wakeup

log = logging.getLogger("kong-ship")


@dataclass
class RunResult:
    lanes: list[LaneSummary]
    elapsed: float
    dead_letters: dict[str, int]
    dead_letter_path: str
    unsaved: list[str] = field(default_factory=list)  # the sinks whose last checkpoint save failed


class Pipeline:
    def __init__(self, settings, sinks: list[Sink], *, follow: bool):
        self.settings = settings
        self.follow = follow
        self.stop = threading.Event()
        self.abort = threading.Event()
        self._tick = Wakeup()  # lock-free: the signal handlers set it too
        self._pending: list[int] = []  # signals received, applied by the main loop (no lock in a handler)
        self._signals = 0
        self.forced_by: int | None = None  # the signal that cut shutdown short
        self.stopped_by: int | None = None  # the first SIGTERM/SIGINT, which stopped the run
        self.fatal: str | None = None
        self._fatal_lock = threading.Lock()
        masker, _ = chain_for(settings)  # the same masks for the events and the dead letters
        self.dead_letter = DeadLetter(settings.dead_letter_path, masker, abort=self.abort)
        parser = Parser(settings.format, settings.nginx_fields)
        self.lanes = [
            Lane(
                settings,
                sink,
                parser=parser,
                # each lane its own: a filter may be for some sinks only; a routed lane keeps its own records
                chain=lane_chain(sink, chain_for(settings, sink.name)[1]),
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
        self.context = RunContext(self.stop, self.wake, self.behind, self.fail)
        self._watcher = Watcher(settings.paths, self.wake, poll_interval=settings.poll_interval)
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
            counts = lane.counters.snapshot()
            shown = [f"{counts['sent']:,} shipped", f"{lane.acks.pending():,} in flight"]
            shown += [f"{counts[c.name]:,} {c.status}" for c in COUNTERS if c.status and counts[c.name]]
            reasons = lane.counters.filtered_reasons()
            if reasons:  # dropped on purpose, by reason (filter:<name>, sample:<rule>, window): the top three
                top = ", ".join(f"{reason} {n:,}" for reason, n in list(reasons.items())[:3])
                shown.append(f"{counts['filtered']:,} filtered ({top}{', …' if len(reasons) > 3 else ''})")
            parts.append(f"{lane.sink.name}: " + ", ".join(shown))
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
        # Only a list append and a pipe write: a handler interrupts the main thread anywhere, possibly inside a
        # lock of an Event or of logging, so what the signal means is done by the main loop (`_apply_signals`).
        self._pending.append(signum)
        self._tick.set()

    def _on_hup(self, signum, frame) -> None:
        self._pending.append(signum)
        self._tick.set()

    def _apply_signals(self) -> None:
        """What the signals received since the last look mean, on the main loop's thread."""
        while self._pending:
            signum = self._pending.pop(0)
            if hasattr(signal, "SIGHUP") and signum == signal.SIGHUP:
                log.info("SIGHUP: re-opening files and re-reading the patterns")
                for lane in self.lanes:
                    lane.rescan.set()
                    lane.wake.set()
                continue
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

    def _install_signals(self) -> dict[int, object]:
        """Our handlers in place; the ones they replace, for `_restore_signals` (none off the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, object] = {}
        for signum, handler in ((signal.SIGTERM, self._on_signal), (signal.SIGINT, self._on_signal),
                                (getattr(signal, "SIGHUP", None), self._on_hup)):
            if signum is not None:
                previous[signum] = signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, object]) -> None:
        """The handlers from before the run: a signal after it (a Ctrl-C while the summary prints, or in a
        process that runs pipelines one after the other) is no longer taken by a run that is over and ignored."""
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        started = time.monotonic()
        # Before the checkpoints are taken: a signal from here on is the run's to apply (it stops the run once it
        # starts), never a KeyboardInterrupt between taking a sink's checkpoints and the `finally` below.
        previous = self._install_signals()
        try:
            for lane in self.lanes:
                lane.resume.load()
        except BaseException:  # another run holds one sink's checkpoints, or they cannot be read
            for lane in self.lanes:
                lane.resume.close()
                if lane.pool is not None:
                    lane.pool.close()  # its worker processes (forked with the lane) too: nothing left running
            self._restore_signals(previous)
            raise
        try:
            self._start()
            return self._run(started)
        finally:
            # Whatever way the run ends (a fatal answer, a dead thread or worker, a signal, the shutdown timeout, a
            # close that raised): every sink's checkpoints are let go, so a next run, in this process or another,
            # can take them; and the handlers from before the run are back.
            for lane in self.lanes:
                lane.resume.close()
            self._restore_signals(previous)

    def _start(self) -> None:
        if self.follow:
            self._watcher.start()
        for lane in self.lanes:
            lane.start()
        if self.follow:
            self.notifier.ready(f"tailing {' '.join(self.settings.paths)}")
            log.info(
                "started: following %s → %s (state in %s)",
                " ".join(self.settings.paths), ", ".join(lane.sink.name for lane in self.lanes), self.settings.state_dir,
            )

    def _run(self, started: float) -> RunResult:
        stop_deadline: float | None = None
        last_save = time.monotonic()
        try:
            while True:
                # While stopping, look often: the run ends as soon as the last acknowledgement arrives.
                interval = min(self.settings.checkpoint_interval, self.notifier.watchdog_interval or 3600.0)
                self._tick.wait(0.05 if self.stop.is_set() else interval)
                self._tick.clear()
                self._apply_signals()
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
            unsaved = [lane.sink.name for lane in self.lanes if not lane.save_checkpoints()]
            self._watcher.stop()
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
            unsaved=unsaved,
        )
        if self.fatal:
            raise FatalError(self.fatal)
        return result
