"""`receive`'s listeners for Kong's tcp-log (`--listen-tcp`) and udp-log (`--listen-udp`), as the command sets
them up: their options, one group commit into the command's spool, the startup lines, the stop and the counts.

Both write records of kind `kong_log` into the same spool as the HTTP side, so the pipeline that follows the
spool neither knows nor cares which listener wrote a record.

What a crash can lose (neither protocol acknowledges anything, so Kong never resends): the records read from a
socket and not yet fsynced, which the group commit bounds to the last 100 ms or 1,000 records (see
`shipper.sources.spool.GroupCommit`); plus, as for any receiver, what still sits in the kernel's socket buffers
unread. A connection that ends is fsynced before our side of it closes.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Callable
from typing import Any

import click

from shipper.errors import ConfigError
from shipper.sources.http_limits import Backlog
from shipper.sources.intake import KIND, Intake, KongRecords
from shipper.sources.spool import GroupCommit, Spool
from shipper.sources.tcp_log import MAX_CONNECTIONS, TcpLogListener
from shipper.sources.udp_log import UdpLogListener

log = logging.getLogger("kong-ship")

LISTENER_KEYS = ("listen_tcp", "listen_udp", "max_tcp_connections")

listener_options = [
    click.option("--listen-tcp", metavar="HOST:PORT",
                 help="Accept Kong's tcp-log here: one JSON record per line, connections kept alive; TLS with "
                      "--tls-cert/--tls-key (the plugin's tls: true)."),
    click.option("--listen-udp", metavar="HOST:PORT",
                 help="Accept Kong's udp-log here: one JSON record per datagram (lossy by nature: drops are counted)."),
    click.option("--max-tcp-connections", type=click.IntRange(min=1, max=65536), default=MAX_CONNECTIONS,
                 show_default=True,
                 help="tcp-log connections served at once (a thread each); more wait to be accepted."),
]


def parse_address(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{flag} {value}: expected HOST:PORT, e.g. 127.0.0.1:9514")
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Listeners:
    """The configured listeners (perhaps none), bound at construction: a taken port is a ConfigError."""

    def __init__(
        self,
        opts: dict[str, Any],
        spool: Spool,
        *,
        dead_letter: Any,
        backlog: Callable[[], int],
        on_spooled: Callable[[], None],
        max_body_bytes: int,
        max_backlog_bytes: int,
        tls: ssl.SSLContext | None,
        kong_records: KongRecords | None = None,
    ):
        self.tcp: TcpLogListener | None = None
        self.udp: UdpLogListener | None = None
        self.tls = tls
        self._on_spooled = on_spooled
        self._backlog = Backlog(backlog)
        self._max_backlog_bytes = max_backlog_bytes
        self.commit = GroupCommit(spool, KIND, on_write=self._written)
        # A spooled line is the record re-encoded in an envelope: the pipeline reads lines up to twice
        # --max-body-bytes plus 64 KiB (prepare_spooled), so a record may take up to twice the body limit.
        record_limit = 2 * max_body_bytes
        self._specs = []
        try:
            # UDP first: once the TCP port accepts, both are bound (what a start-up check can wait for).
            if opts.get("listen_udp"):
                host, port = parse_address(opts["listen_udp"], "--listen-udp")
                self.udp_intake = Intake("udp-log", self.commit, dead_letter, max_record_bytes=record_limit,
                                         records=kong_records)
                self.udp = self._bind("--listen-udp", opts["listen_udp"], lambda: UdpLogListener(
                    host, port, self.udp_intake, max_record_bytes=max_body_bytes, overloaded=self.overloaded,
                ))
                self._specs.append(("udp", host))
            if opts.get("listen_tcp"):
                host, port = parse_address(opts["listen_tcp"], "--listen-tcp")
                self.tcp_intake = Intake("tcp-log", self.commit, dead_letter, max_record_bytes=record_limit,
                                         records=kong_records)
                self.tcp = self._bind("--listen-tcp", opts["listen_tcp"], lambda: TcpLogListener(
                    host, port, self.tcp_intake, max_line_bytes=max_body_bytes, overloaded=self.overloaded, tls=tls,
                    max_connections=opts.get("max_tcp_connections") or MAX_CONNECTIONS,
                ))
                self._specs.append(("tcp", host))
        except BaseException:
            self.shutdown()
            raise

    def _bind(self, flag: str, value: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except OSError as exc:
            raise ConfigError(f"{flag} {value}: cannot listen: {exc.strerror or exc}") from None

    def __bool__(self) -> bool:
        return self.tcp is not None or self.udp is not None

    def overloaded(self) -> bool:
        return self._backlog.value() > self._max_backlog_bytes

    def _written(self, records: int, nbytes: int) -> None:
        self._backlog.add(nbytes)
        self._on_spooled()

    def start(self, on_death: Callable[[str], None]) -> None:
        if not self:
            return
        self.commit.start(on_death)
        for listener in (self.tcp, self.udp):
            if listener is not None:
                listener.start(on_death)
        for line in self.describe():
            log.info("%s", line)

    def describe(self) -> list[str]:
        """The startup lines: where, and whether what arrives there travels in clear text over a network."""
        lines = []
        for kind, host in self._specs:
            listener = self.tcp if kind == "tcp" else self.udp
            assert listener is not None
            bound_host, bound_port = listener.address
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            if kind == "tcp":
                what = f"receiving Kong tcp-log at tcp://{shown}:{bound_port}" + (" with TLS" if self.tls else "")
            else:
                what = f"receiving Kong udp-log at udp://{shown}:{bound_port} (receive buffer {self.udp.receive_buffer >> 10} KiB)"  # type: ignore[union-attr]
            if host in ("0.0.0.0", "::"):
                what += " on EVERY address of this host"
            if not is_loopback(host) and not (kind == "tcp" and self.tls):
                what += (" WITHOUT TLS on a non-loopback address: records travel in clear text"
                         + (" (--tls-cert/--tls-key to encrypt)" if kind == "tcp" else " (udp-log has no TLS)"))
            lines.append(what)
        return lines

    def shutdown(self) -> None:
        """Stop reading (idempotent); every record already read is fsynced before this returns."""
        for listener in (self.tcp, self.udp):
            if listener is not None:
                listener.shutdown()
        self.commit.close()

    def counts(self) -> dict[str, dict[str, int]]:
        """Each configured listener's counts by name ("tcp-log", "udp-log"): its intake's `records`,
        `dead_lettered` and `dropped`, and tcp-log's `connections` and `failed_handshakes` or udp-log's
        `datagrams`."""
        out: dict[str, dict[str, int]] = {}
        if self.tcp is not None:
            out[self.tcp_intake.name] = {**self._intake_counts(self.tcp_intake), "connections": self.tcp.connections,
                                         "failed_handshakes": self.tcp.failed_handshakes}
        if self.udp is not None:
            out[self.udp_intake.name] = {**self._intake_counts(self.udp_intake), "datagrams": self.udp.datagrams}
        return out

    @staticmethod
    def _intake_counts(intake: Intake) -> dict[str, int]:
        counts = intake.snapshot()
        return {name: counts[name] for name in ("records", "dead_lettered", "dead_letters_held", "dropped")}

    def summary(self) -> list[str]:
        lines = []
        for name, counts in self.counts().items():
            if "connections" in counts:
                n = counts["connections"]
                line = f"{name}: received {counts['records']:,} records on {n:,} connection{'' if n == 1 else 's'}"
            else:
                line = f"{name}: received {counts['records']:,} records in {counts['datagrams']:,} datagrams"
            if counts["dead_lettered"]:
                line += f"; {counts['dead_lettered']:,} dead-lettered"
                if held := counts.get("dead_letters_held", 0):  # counted, said in a `held_back` summary entry
                    line += f" ({held:,} of them summarised)"
            if counts.get("failed_handshakes"):
                line += f"; {counts['failed_handshakes']:,} failed TLS handshakes"
            if counts["dropped"]:
                line += f"; dropped {counts['dropped']:,}"
            lines.append(line)
        if self.commit.lost:
            lines.append(f"lost {self.commit.lost:,} received records: the spool could not be written")
        return lines
