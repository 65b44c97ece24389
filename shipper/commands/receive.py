"""`kong-ship receive --listen HOST:PORT --sink NAME`: accept Kong event-hook deliveries and ship the events.

Each delivery's signature is checked, its events are appended to a durable spool (STATE_DIR/receive/) and
only then answered 200; the ordinary pipeline follows the spool with its checkpoints, batches and retries, so
an accepted event survives a crash of kong-ship or an outage of the vendor. The spool is bounded: past
`--max-backlog-bytes` not yet acknowledged by every sink, deliveries are refused until the sinks catch up.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import click

from shipper.commands.options import apply_options, config_option, shipping_options
from shipper.commands.running import drive as _drive
from shipper.commands.running import prepare_spooled
from shipper.commands.running import summary as _summary
from shipper.errors import ConfigError
from shipper.sinks.credentials import read_secret
from shipper.sources.feeder import SpoolFeeder
from shipper.threads import supervised

log = logging.getLogger("kong-ship")

SECRET_ENV = "KONG_SHIP_RECEIVE_SECRET"
PRUNE_INTERVAL = 2.0

_RECEIVE_KEYS = ("listen", "secret_file", "allow_unsigned", "max_body_bytes", "max_backlog_bytes", "on_overload",
                 "max_connections", "read_timeout")

_receiving = [
    click.option("--listen", required=True, metavar="HOST:PORT",
                 help="Where to accept event-hook deliveries, e.g. 127.0.0.1:8787 ([::1]:8787 for IPv6)."),
    click.option("--secret-file", type=click.Path(dir_okay=False),
                 help=f"File holding the event hook's secret (config.secret) [default: env {SECRET_ENV}]."),
    click.option("--allow-unsigned", is_flag=True,
                 help="Accept deliveries without checking a signature (only when no secret is configured)."),
    click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
                 help="Larger request bodies are answered 413 (and not read)."),
    click.option("--max-backlog-bytes", type=click.IntRange(min=1), default=64 << 20, show_default=True,
                 help="Past this many bytes not yet acknowledged by the sinks, deliveries are refused until they catch up."),
    # 503 by default, the HTTP way to say "later" (and what the issue asks for). Kong's webhook handler, though,
    # retries only a failed request and takes any HTTP answer as delivered: behind Kong, `close` loses nothing.
    click.option("--on-overload", type=click.Choice(["503", "close"]), default="503", show_default=True,
                 help="How to refuse when the backlog is full: 503 with Retry-After, or close the connection "
                      "unanswered (Kong's webhook handler retries that, but takes a 503 as delivered)."),
    # Each connection holds a thread and, while its body is read, a buffer: bounded so that stalled or
    # hostile clients (unauthenticated until their body is read) cannot exhaust the unit's MemoryMax.
    click.option("--max-connections", type=click.IntRange(min=1, max=4096), default=64, show_default=True,
                 help="Connections handled at once; more are refused (503, or closed with --on-overload close)."),
    click.option("--read-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                 help="Seconds a client may take to send a request (and stay idle between requests)."),
]


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--listen {value}: expected HOST:PORT, e.g. 127.0.0.1:8787")
    return host.strip("[]") or "0.0.0.0", int(port)


def _secret(kw: dict[str, Any]) -> bytes | None:
    path = kw.get("secret_file")
    if path or os.environ.get(SECRET_ENV, "").strip():
        if kw.get("allow_unsigned"):
            raise ConfigError("--allow-unsigned and a secret contradict each other: drop one")
        return read_secret(SECRET_ENV, path, "--secret-file").encode()
    if not kw.get("allow_unsigned"):
        raise ConfigError(
            f"no secret to check deliveries with: set {SECRET_ENV} or --secret-file (the event hook's config.secret), "
            "or pass --allow-unsigned to accept anything that reaches --listen"
        )
    return None


@click.command()
@apply_options(_receiving + shipping_options + [config_option])
def receive(**kw: Any) -> None:
    """Accept Kong event-hook deliveries over HTTP (handler=webhook), check their x-kong-signature, and ship
    the events to the sinks.

    A delivery is answered 200 only once its events are in a durable spool (STATE_DIR/receive/, which also
    holds this command's checkpoints); 401 to a missing or bad signature, 413 to a body over --max-body-bytes;
    503 while more than --max-backlog-bytes wait for the sinks (or, with --on-overload close, no answer). SIGTERM/SIGINT: stop accepting, deliver what is in flight, exit 0.
    """
    from shipper.pipeline import Pipeline
    from shipper.sources.event_hooks import Receiver
    from shipper.sources.spool import Spool
    from shipper.sources.spool import lock as spool_lock

    opts = {key: kw.pop(key) for key in _RECEIVE_KEYS}
    host, port = parse_listen(opts["listen"])
    secret = _secret(opts)
    # A spooled line is the body re-encoded in an envelope: never longer than twice the body, plus the envelope.
    settings, sinks, spool_dir = prepare_spooled(kw, "receive", 2 * opts["max_body_bytes"] + 65536)
    lock = spool_lock(spool_dir, "receive")
    spool = Spool(spool_dir)
    pipeline = Pipeline(settings, sinks, follow=True)

    def backlog() -> int:
        owed = pipeline.behind()
        total = 0
        for path in spool.segments():
            if path in owed:
                total += owed[path]
            else:  # not opened by every sink yet: all of it is owed
                try:
                    total += os.path.getsize(path)
                except OSError:
                    pass
        return total

    try:
        receiver = Receiver(
            host, port, spool, secret=secret, max_body_bytes=opts["max_body_bytes"],
            max_backlog_bytes=opts["max_backlog_bytes"], backlog=backlog, on_accept=pipeline.wake,
            overload=opts["on_overload"], max_connections=opts["max_connections"], read_timeout=opts["read_timeout"],
        )
    except OSError as exc:
        spool.close()
        os.close(lock)
        raise ConfigError(f"--listen {opts['listen']}: cannot listen: {exc.strerror}") from None

    done = threading.Event()

    def maintain() -> None:
        """Stop accepting as soon as a shutdown starts; delete spool segments every sink has acknowledged."""
        feeder = SpoolFeeder(spool, name="receive", prune_every=PRUNE_INTERVAL)
        # Deliveries arrive on the receiver's own threads: no step, only a look every 0.1 s for the shutdown.
        if feeder.feed(pipeline.context, 0.1, until=done):
            receiver.shutdown()

    # Supervised: if housekeeping dies, the run ends (exit 1) rather than accept deliveries into a spool
    # nobody prunes.
    maintainer = threading.Thread(
        target=supervised(maintain, "receive-maintain", pipeline.fail), name="receive-maintain", daemon=True
    )

    bound_host, bound_port = receiver.address
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    everywhere = ""
    if host in ("0.0.0.0", "::"):
        everywhere = " on EVERY address of this host (--listen HOST:PORT to choose one)"
    log.info(
        "receiving event hooks at http://%s:%d/%s (%s) → %s (spool %s)",
        shown, bound_port, everywhere, "signed with x-kong-signature" if secret else "UNSIGNED: --allow-unsigned",
        ", ".join(settings.sinks), spool_dir,
    )
    receiver.start(pipeline.fail)
    maintainer.start()
    try:
        result = _drive(pipeline, kw.get("metrics_addr"))
    finally:
        done.set()
        receiver.shutdown()
        maintainer.join(timeout=5)
        spool.close()
        os.close(lock)
    _summary(result, sys.stderr)
    refused = ", ".join(f"{n} × {status}" for status, n in sorted(receiver.counts.items()) if status != 200)
    sys.stderr.write(
        f"received {receiver.events_accepted:,} events in {receiver.counts.get(200, 0):,} deliveries"
        + (f"; refused {refused}" if refused else "") + "\n"
    )
    if pipeline.forced_by:
        sys.exit(128 + pipeline.forced_by)
