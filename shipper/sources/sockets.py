"""The sockets `receive`'s tcp-log and udp-log listeners read: bound when the listener is made (a taken port
fails the start, before anything runs), and closed again when binding fails."""

from __future__ import annotations

import socket
from collections.abc import Iterable


def bound(host: str, port: int, kind: socket.SocketKind, *, options: Iterable[tuple[int, int, int]] = (),
          listen_backlog: int | None = None, timeout: float) -> socket.socket:
    """A socket of `kind` bound to host:port (IPv6 when the host has a colon), with its `options` set first
    (SO_REUSEADDR, SO_RCVBUF, …), listening when `listen_backlog` is given, reads timing out after `timeout`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        for level, name, value in options:
            sock.setsockopt(level, name, value)
        sock.bind((host, port))
        if listen_backlog is not None:
            sock.listen(listen_backlog)
        sock.settimeout(timeout)
    except OSError:
        sock.close()
        raise
    return sock


def address(sock: socket.socket) -> tuple[str, int]:
    """Where `sock` is bound (the port the kernel chose for port 0)."""
    host, port = sock.getsockname()[:2]
    return host, port
