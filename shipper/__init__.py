"""kong-ship: follow Kong Gateway and Nginx JSON logs and ship them, masked, to Segment, Moesif or Runscope."""

import sys

__version__ = "0.1.0"


def _quiet_interrupt(kind, value, traceback):  # type: ignore[no-untyped-def]
    """A Ctrl-C while the command line's modules load (the first ~0.1 s, before `cli.main` and then the run's own
    handlers take it) is what it is at any other time: no traceback, exit 130 (the interpreter ends itself by
    SIGINT for an unhandled KeyboardInterrupt). Any other exception keeps the usual report."""
    if issubclass(kind, KeyboardInterrupt):
        return
    sys.__excepthook__(kind, value, traceback)


if sys.excepthook is sys.__excepthook__:  # only where nobody (a test runner, a debugger) set one of their own
    sys.excepthook = _quiet_interrupt
