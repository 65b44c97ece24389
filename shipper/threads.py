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
import threading
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
