"""systemd's notify protocol (sd_notify) over the NOTIFY_SOCKET datagram socket, with no extra dependency:
READY=1 once tailing, STATUS= with a short live summary, WATCHDOG=1 pings when WatchdogSec= is set, STOPPING=1
on shutdown. Without NOTIFY_SOCKET (not under systemd) every call does nothing."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("kong-ship")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC")
        watchdog_pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2  # ping at half the timeout, as systemd advises
        self._last_ping = 0.0
        self._socket: socket.socket | None = None
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *fields: str) -> bool:
        if self._socket is None or self.address is None:
            return False
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self, text: str = "stopping: delivering what is in flight") -> None:
        self.send("STOPPING=1", f"STATUS={text}")

    def tick(self, now: float | None = None) -> None:
        """Ping the watchdog if it is due (call this from the loop that proves the shipper is alive)."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
