"""Closes batches on count, bytes or time and hands them to a small pool of senders (several in flight)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
import queue as stdqueue

from shipper.delivery.closed import ClosedBatch, Item
from shipper.delivery.queue import BoundedQueue, Closed
from shipper.delivery.sender import Aborted, FatalDelivery, Sender
from shipper.threads import death_notice, start_thread


class Batcher:
    def __init__(
        self,
        queue: BoundedQueue[list[Item] | ClosedBatch],
        sender: Sender,
        *,
        max_events: int,
        max_bytes: int,
        envelope_bytes: int,
        flush_interval: float,
        concurrency: int,
        on_fatal: Callable[[str], None],
        on_idle: Callable[[], None] = lambda: None,
    ):
        self.queue = queue
        self.sender = sender
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.envelope = envelope_bytes
        self.flush_interval = flush_interval
        self.on_fatal = on_fatal
        self.on_idle = on_idle  # told when the last batch in flight is answered
        self._slots = threading.Semaphore(concurrency)
        # Daemon threads, not a ThreadPoolExecutor: a forced shutdown must not wait for a request in flight.
        self._work: stdqueue.SimpleQueue[list[Item] | ClosedBatch | None] = stdqueue.SimpleQueue()
        for i in range(concurrency):
            start_thread(self._worker, f"send-{sender.sink.name}-{i}", on_fatal)
        self._concurrency = concurrency
        self._in_flight = 0
        self.finished = False  # the queue was closed and its last batch handed to a sender
        self._idle = threading.Condition()

    def run(self) -> None:
        batch: list[Item] = []
        size = self.envelope
        deadline = 0.0
        max_events, max_bytes = self.max_events, self.max_bytes
        while True:
            # No batch held: nothing to flush, so no timeout (a parcel or the queue's close wakes it); it woke
            # twice a second for nothing, on every idle lane.
            timeout = max(0.0, deadline - time.monotonic()) if batch else None
            try:
                parcel = self.queue.get(timeout)
            except Closed:
                break
            if type(parcel) is ClosedBatch:  # closed in a worker (delivery/closed.py): on to a sender as it is
                self._submit(parcel)
                continue
            for item in parcel or ():  # type: ignore[union-attr]  # a list: a ClosedBatch went on above
                item_size = len(item[3]) + 1
                if batch and (size + item_size > max_bytes or len(batch) >= max_events):
                    self._submit(batch)
                    batch, size = [], self.envelope
                if not batch:
                    deadline = time.monotonic() + self.flush_interval
                batch.append(item)
                size += item_size
            if batch and (len(batch) >= max_events or time.monotonic() >= deadline):
                self._submit(batch)
                batch, size = [], self.envelope
        if batch:
            self._submit(batch)
        self.finished = True
        self.on_idle()

    def _submit(self, batch: list[Item] | ClosedBatch) -> None:
        self._slots.acquire()  # waits while `concurrency` batches are in flight
        with self._idle:
            self._in_flight += 1
        self._work.put(batch)

    def _worker(self) -> None:
        while (batch := self._work.get()) is not None:
            self._deliver(batch)

    def _deliver(self, batch: list[Item] | ClosedBatch) -> None:
        try:
            self.sender.deliver(batch)
        except Aborted:
            pass
        except FatalDelivery as exc:
            self.on_fatal(str(exc))
        except Exception as exc:  # a bug must stop the shipper loudly, not leave a batch silently unacknowledged
            self.on_fatal(death_notice(threading.current_thread().name, exc))
        finally:
            self._slots.release()
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()
                idle = self._in_flight == 0
            if idle:
                self.on_idle()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no batch is in flight; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining if remaining is not None else 0.5)
        return True

    def shutdown(self) -> None:
        for _ in range(self._concurrency):
            self._work.put(None)
