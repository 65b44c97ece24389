"""`receive --listen-udp`: Kong's udp-log plugin, one JSON record per datagram.

What Kong does (kong/plugins/udp-log/handler.lua): for each request, in a timer, it sends
`cjson.encode(record)` as one datagram and closes the socket. Nothing is acknowledged and nothing retried, so
udp-log is lossy by nature (a full receive buffer, a record over the datagram limit of 65,507 bytes, a lost
packet): kong-ship cannot make it reliable, only count what reaches it and never be the reason one is lost.

So the socket is read by one thread that never waits on anything else: a large receive buffer absorbs bursts
and fsyncs (`RECEIVE_BUFFER`, capped by the kernel's net.core.rmem_max); records go to the spool's group
commit without waiting; while the backlog is over `--max-backlog-bytes`, or the group commit is full because the
spool cannot be written, datagrams are still read and dropped, counted, with a warning at most every
`WARN_EVERY` seconds. A datagram that is not a JSON object is dead-lettered with the parser's reason (within its
host's share a second: `intake.PeerLimit`).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

from shipper.sources import sockets
from shipper.sources.http_limits import Throttled
from shipper.sources.intake import Intake
from shipper.threads import start_thread

log = logging.getLogger("kong-ship")

RECEIVE_BUFFER = 8 << 20  # asked for; Linux grants at most net.core.rmem_max (raise it for large bursts)
WARN_EVERY = 10.0  # seconds between warnings about dropped datagrams
POLL = 0.2  # seconds between looks at the stop flag
MAX_DATAGRAM = 65535


class UdpLogListener:
    """Bound at construction (a taken port fails the start), reading in a thread of its own once started."""

    def __init__(self, host: str, port: int, intake: Intake, *, max_record_bytes: int, overloaded: Callable[[], bool]):
        self.intake = intake
        self.max_record_bytes = max_record_bytes
        self.overloaded = overloaded
        self.datagrams = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drop_warnings = Throttled(WARN_EVERY)
        self._sock = sockets.bound(host, port, socket.SOCK_DGRAM, timeout=POLL,
                                   options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)])
        # Linux reports twice what it grants (the doubled value includes its bookkeeping).
        self.receive_buffer = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2

    @property
    def address(self) -> tuple[str, int]:
        return sockets.address(self._sock)

    def start(self, on_death: Callable[[str], None]) -> None:
        self._thread = start_thread(self._read, "udp-log", on_death)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                self.intake.held_back()  # a quiet moment: the dead letters held back a second ago are said
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            self.datagrams += 1
            where = f"{peer[0]}:{peer[1]}"
            data = data.rstrip(b"\r\n")
            if not data.strip():
                continue
            if self.overloaded():
                self._drop("backlog over --max-backlog-bytes until the sinks catch up")
                continue
            if len(data) > self.max_record_bytes:
                self.intake.reject("too_long", f"udp-log datagram from {where}: {len(data)} bytes, over "
                                   f"--max-body-bytes ({self.max_record_bytes})", data[:4096], truncated=True,
                                   peer=where)
                continue
            if not self.intake.take(data, where, wait=False):  # counted as dropped by the intake
                self._drop("the spool writer is behind", counted=True)
        self.intake.held_back(everything=True)

    def _drop(self, why: str, counted: bool = False) -> None:
        if not counted:
            self.intake.count("dropped")
        self._drop_warnings.warn("receive: udp-log: dropping datagrams: %s (%d dropped so far)", why,
                                 self.intake.snapshot()["dropped"])

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop reading (idempotent); the datagram being handled is finished first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self._sock.close()
        except OSError:
            pass
