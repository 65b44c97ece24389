"""`--max-rate N`: at most N events per second to a sink, to stay under a vendor's rate limit on a big replay.

A token bucket shared by the sink's sender threads. `reserve(n)` takes n tokens at once and says how long the
caller must wait for them (the bucket may go into debt, so a batch larger than a second's worth still goes out,
just later); while senders wait, the queue fills and reading pauses: the log file is the buffer, as always.
Every attempt counts, retries included, since the vendor counts them too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else rate  # at most one second's worth saved up
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self, n: int) -> float:
        """Take n tokens; return the seconds to wait before using them."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
