"""A queue bounded in events and in bytes. When it is full the reader waits: the log file is the buffer, so
nothing is dropped and memory stays flat whatever the backlog.

Items are parcels of events (a list), counted by the events they hold: one lock round trip per parcel
instead of per event keeps the hand-over off the per-record bill."""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Closed(Exception):
    pass


class BoundedQueue(Generic[T]):
    def __init__(self, max_items: int, max_bytes: int):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[tuple[T, int, int]] = deque()
        self._bytes = 0
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: T, size: int, cancel: threading.Event | None = None, count: int = 1) -> bool:
        """Add an item of `count` events and `size` bytes, waiting while the queue is full (an empty queue
        takes any item). False if `cancel` was set while waiting."""
        with self._cond:
            while self._items and (self._count + count > self.max_items or self._bytes + size > self.max_bytes):
                if cancel is not None and cancel.is_set():
                    return False
                self._cond.wait(0.1)
            if self._closed:
                raise Closed()
            self._items.append((item, size, count))
            self._bytes += size
            self._count += count
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None) -> T | None:
        """The next item, or None after `timeout` seconds; raises Closed once closed and empty."""
        with self._cond:
            if not self._items:
                if self._closed:
                    raise Closed()
                self._cond.wait(timeout)
                if not self._items:
                    if self._closed:
                        raise Closed()
                    return None
            item, size, count = self._items.popleft()
            self._bytes -= size
            self._count -= count
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Events queued."""
        return self._count

    @property
    def nbytes(self) -> int:
        return self._bytes
