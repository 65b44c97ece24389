"""Threads that cannot die silently.

Every thread the shipper starts for its own work (a lane's reader, batcher and senders, the receiver's
housekeeping) runs its target through `supervised`: if the target raises, whatever it is, the run is told at
once (`on_death`, which stops the pipeline as fatal), so the process ends with exit 1 and one line naming the
thread and the exception — never exit 0 with work undone, never a reader gone while the others wait forever.
The traceback goes to the debug log.

Threads beside the pipeline (a command's poller, the receiver's housekeeping) see the run through one
`RunContext` rather than the pipeline itself: they need to know it is stopping, wake its readers, ask what the
sinks still owe and end it as fatal, and nothing else.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("kong-ship")


def death_notice(name: str, exc: BaseException) -> str:
    """One line: `thread NAME died: Type: message`."""
    log.debug("thread %s died", name, exc_info=exc)
    message = " ".join(str(exc).split())[:300]
    return f"thread {name} died: {type(exc).__name__}" + (f": {message}" if message else "")


def supervised(target: Callable[[], object], name: str, on_death: Callable[[str], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - SystemExit and bugs alike: the run must hear of it
            on_death(death_notice(name, exc))

    return run


def start_thread(target: Callable[[], object], name: str, on_death: Callable[[str], None]) -> threading.Thread:
    """A started daemon thread running `target` under supervision."""
    thread = threading.Thread(target=supervised(target, name, on_death), name=name, daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a side thread may see of a run."""

    stop: threading.Event  # set once the run is stopping (a signal, a fatal error, the end of the input)
    wake: Callable[[], None]  # have the readers look for new lines now (new records were spooled)
    behind: Callable[[], dict[str, int]]  # bytes per path some sink has not acknowledged yet
    fail: Callable[[str], None]  # end the run as fatal (exit 1) with this reason


class Wakeup:
    """What `threading.Event` is to the run's main loop — `set` from any thread, `wait(timeout)`, `clear` — but
    with no lock: a byte in a non-blocking pipe. A signal handler runs on the main thread between two bytecodes,
    possibly while that thread is inside `Event.wait` holding the Event's own (non-reentrant) lock; an
    `Event.set` from the handler then waits for that lock forever, and so does every thread that sets it after
    (a SIGTERM that hung `tail`, found by CI). A write to a pipe takes no lock of Python's."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        # poll, not select: no FD_SETSIZE bound (a receive with many connections has high descriptors).
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)
        # Closed only once nothing can reach this object: a descriptor number reused after a close must never get
        # a wake-up byte from a `set` still in someone's hands.
        weakref.finalize(self, _close_pipe, self._read, self._write)

    def set(self) -> None:
        try:
            os.write(self._write, b"\0")
        except (BlockingIOError, OSError):  # full: a wake-up is pending anyway; closed: the run is over
            pass

    def wait(self, timeout: float) -> bool:
        return bool(self._poll.poll(max(0.0, timeout) * 1000))

    def clear(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass


def _close_pipe(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass

