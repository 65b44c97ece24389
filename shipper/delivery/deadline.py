"""A total deadline for one HTTP attempt (connect, TLS, the request sent, the status line, headers and body read).

httpx's timeouts are per socket operation: a vendor or proxy that trickles its status line or headers a byte at a
time, or reads our request body a few bytes at a time, resets them at every byte and holds a sender's slot for
ever. The sender sets a deadline for its thread around each attempt (`Attempt`); the network backend of the
client's connection pools (`with_deadlines`) caps every socket operation's timeout at the time left before it,
and once it has passed raises httpcore's own timeout, which httpx maps to its timeout exception: the attempt fails
as a read timeout does. httpcore's sync calls run in the calling thread, so a thread-local is the attempt's; a
thread that set no deadline (Moesif's configuration fetch) gets the timeouts it asked for, unchanged.

httpx (0.27-0.29) has no public way to give `HTTPTransport`'s pool a network backend (httpcore's `ConnectionPool`
takes one; `HTTPTransport` does not pass it on). Building our own transport on httpcore would drop what httpx does
for a client built without one ($HTTPS_PROXY, $NO_PROXY and the rest: `trust_env` is ignored once a transport is
given), so `with_deadlines` wraps the backend of the pools httpx built, relying on four private names (the
client's `_transport` and `_mounts`, a transport's `_pool`, a pool's `_network_backend`); without them it says so
once and the client keeps httpx's per-operation timeouts. Transports of a sink's own (stdout, dry run) are not
touched.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import typing
from types import TracebackType

import httpcore
import httpx

log = logging.getLogger("kong-ship")

# A large write (a whole request body) is sent in pieces of this size, each given the time left: httpcore's own
# write loop gives every partial send the full write timeout. 16 KiB: one TLS record, so one send() each.
WRITE_PIECE = 16_384

_attempts = threading.local()  # .current: the thread's Attempt, or None


class Attempt:
    """`with Attempt(deadline):` bounds every socket operation of this thread's HTTP requests by `deadline`
    (time.monotonic()). `expired`: the last operation was given the time left rather than its own timeout (or
    none, the deadline having passed), so a timeout it ended with is the deadline's."""

    __slots__ = ("deadline", "expired", "_outer")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.expired = False
        self._outer: Attempt | None = None

    def __enter__(self) -> Attempt:
        self._outer = getattr(_attempts, "current", None)
        _attempts.current = self
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        _attempts.current = self._outer

    def timed_out(self, exc: BaseException) -> bool:
        """Whether `exc` is a timeout the deadline caused."""
        return self.expired and isinstance(exc, httpx.TimeoutException)


def _capped(timeout: float | None, timed_out: type[Exception]) -> float | None:
    """`timeout`, or the time left before this thread's deadline when that is shorter; `timed_out` once it passed."""
    attempt: Attempt | None = getattr(_attempts, "current", None)
    if attempt is None:
        return timeout
    left = attempt.deadline - time.monotonic()
    attempt.expired = timeout is None or timeout > left  # the operations of a thread come one at a time
    if not attempt.expired:
        return timeout
    if left <= 0:
        raise timed_out("timed out (the attempt's deadline passed)")
    return left


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if len(buffer) <= WRITE_PIECE or getattr(_attempts, "current", None) is None:
            return self.inner.write(buffer, _capped(timeout, httpcore.WriteTimeout))
        for start in range(0, len(buffer), WRITE_PIECE):
            self.inner.write(buffer[start : start + WRITE_PIECE], _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        # The handshake is one operation to CPython's ssl module (one deadline for all its reads and writes).
        capped = _capped(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, capped))

    def get_extra_info(self, info: str) -> typing.Any:
        return self.inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """A network backend whose streams keep to the calling thread's deadline (see `Attempt`)."""

    def __init__(self, inner: httpcore.NetworkBackend):
        self.inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        capped = _capped(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self.inner.connect_tcp(host, port, capped, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        capped = _capped(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self.inner.connect_unix_socket(path, capped, socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def with_deadlines(client: httpx.Client) -> bool:
    """Give every connection pool `client` built (its own transport and those of $HTTPS_PROXY and the like) a
    `DeadlineBackend`, before its first request. False (said once) when httpx keeps them where we cannot see: the
    client then keeps httpx's per-operation timeouts only."""
    if not hasattr(client, "_transport"):
        _say_unbound()
        return False
    transports = [client._transport, *getattr(client, "_mounts", {}).values()]
    # A sink's own transport (stdout, dry run) has no pool and no network: nothing to bound.
    pools = [getattr(transport, "_pool", None) for transport in transports if isinstance(transport, httpx.HTTPTransport)]
    if not all(isinstance(getattr(pool, "_network_backend", None), httpcore.NetworkBackend) for pool in pools):
        _say_unbound()
        return False
    for pool in pools:
        backend = pool._network_backend  # type: ignore[union-attr]
        if not isinstance(backend, DeadlineBackend):
            pool._network_backend = DeadlineBackend(backend)  # type: ignore[union-attr]
    return True


_unbound_said = threading.Event()


def _say_unbound() -> None:
    if not _unbound_said.is_set():
        _unbound_said.set()
        log.warning("httpx %s keeps its connection pools where kong-ship cannot give them a deadline: an attempt "
                    "is bounded by --timeout per read and write only", httpx.__version__)  # fmt: skip
