"""`kong-ship receive --listen HOST:PORT --sink NAME`: accept Kong event-hook deliveries, and Kong's http-log
at /http-log, and ship what they carry.

Each delivery's signature (http-log: its token) is checked, its events are appended to a durable spool
(STATE_DIR/receive/) and only then answered 200; the ordinary pipeline follows the spool with its checkpoints,
batches and retries, so an accepted event survives a crash of kong-ship or an outage of the vendor. The spool is bounded: past
`--max-backlog-bytes` not yet acknowledged by every sink, deliveries are refused until the sinks catch up.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from shipper.commands import SUMMARIES
from shipper.commands.listeners import LISTENER_KEYS, Listeners, listener_options
from shipper.commands.options import (
    Seconds, apply_options, config_option, option_names, shipping_options, spooled_dry_run_option,
    understanding_options,
)
from shipper.commands.running import drive, prepare_spooled, say
from shipper.commands.summary import summary
from shipper.commands.stderr import json_stderr, write_line
from shipper.delivery.dry_run import DryRun
from shipper.errors import ConfigError
from shipper.service.notify import Notifier
from shipper.sinks.credentials import read_secret
from shipper.sources.feeder import SpoolFeeder
from shipper.threads import supervised

log = logging.getLogger("kong-ship")

SECRET_ENV = "KONG_SHIP_RECEIVE_SECRET"
HTTP_LOG_TOKEN_ENV = "KONG_SHIP_HTTP_LOG_TOKEN"
PRUNE_INTERVAL = 2.0

_RECEIVE_KEYS = ("listen", "secret_file", "allow_unsigned", "max_body_bytes", "max_backlog_bytes", "on_overload",
                 "max_connections", "read_timeout", "http_log_token_file", "allow_unauthenticated", "tls_cert",
                 "tls_key")

_receiving = [
    click.option("--listen", metavar="HOST:PORT",
                 help="Where to accept HTTP: event-hook deliveries, and Kong's http-log at /http-log; e.g. "
                      "127.0.0.1:8787 ([::1]:8787 for IPv6). Not needed with only --listen-tcp/--listen-udp."),
    click.option("--secret-file", type=click.Path(dir_okay=False),
                 help=f"File holding the event hook's secret (config.secret) [default: env {SECRET_ENV}]."),
    click.option("--allow-unsigned", is_flag=True,
                 help="Accept deliveries without checking a signature (only when no secret is configured)."),
    click.option("--http-log-token-file", type=click.Path(dir_okay=False),
                 help=f"File holding the token Kong's http-log must present at /http-log (Bearer, or the Basic "
                      f"password) [default: env {HTTP_LOG_TOKEN_ENV}]."),
    click.option("--allow-unauthenticated", is_flag=True,
                 help="Accept http-log requests without a token (only when no token is configured)."),
    click.option("--tls-cert", type=click.Path(dir_okay=False),
                 help="Serve HTTPS (and TLS on --listen-tcp) with this certificate chain (PEM, leaf first); needs --tls-key."),
    click.option("--tls-key", type=click.Path(dir_okay=False), help="The private key of --tls-cert (PEM)."),
    click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
                 help="Larger request bodies are answered 413 (and not read)."),
    click.option("--max-backlog-bytes", type=click.IntRange(min=1), default=64 << 20, show_default=True,
                 help="Past this many bytes not yet acknowledged by the sinks, deliveries are refused until they catch up."),
    # 503 by default, the HTTP way to say "later" (and what the issue asks for). Kong's webhook handler, though,
    # retries only a failed request and takes any HTTP answer as delivered: behind Kong, `close` loses nothing.
    click.option("--on-overload", type=click.Choice(["503", "close"]), default="503", show_default=True,
                 help="How to refuse when the backlog is full: 503 with Retry-After, or close the connection "
                      "unanswered (Kong's webhook handler retries that, but takes a 503 as delivered; "
                      "http-log retries both)."),
    # Each connection holds a thread and, while its body is read, a buffer: bounded so that stalled or
    # hostile clients (unauthenticated until their body is read) cannot exhaust the unit's MemoryMax.
    click.option("--max-connections", type=click.IntRange(min=1, max=4096), default=64, show_default=True,
                 help="Connections handled at once; more are refused (503, or closed with --on-overload close)."),
    click.option("--read-timeout", type=Seconds(min=0.1), default=10.0, show_default=True,
                 help="Seconds a client may take to send a request (and stay idle between requests)."),
]


# Network Kong records (http-log, tcp-log, udp-log) are parsed as file-log lines are: the same JWT and mask
# options as `tail`, so that both ship a record alike. Not --format (the spool names each record's kind) nor
# --max-line-bytes (a spooled line's bound follows --max-body-bytes).
_KONG_RECORD_OPTIONS = {"jwt_from", "jwt_claim", "mask_header", "mask_query", "mask_body_key", "ship_raw_bodies"}
_kong_records = [o for o in understanding_options if set(option_names([o])) <= _KONG_RECORD_OPTIONS]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
    return None  # event hooks are refused (401) unless --allow-unsigned: `_check_some_delivery` says if nothing is left


def _http_log_auth(kw: dict[str, Any]) -> Any:
    from shipper.sources.http_log import Auth

    path = kw.get("http_log_token_file")
    if path or os.environ.get(HTTP_LOG_TOKEN_ENV, "").strip():
        if kw.get("allow_unauthenticated"):
            raise ConfigError("--allow-unauthenticated and an http-log token contradict each other: drop one")
        return Auth(read_secret(HTTP_LOG_TOKEN_ENV, path, "--http-log-token-file").encode(), False)
    return Auth(None, bool(kw.get("allow_unauthenticated")))


def _check_some_delivery(kw: dict[str, Any], hooks: bool, http_log: bool) -> None:
    """`receive` serves what is configured and refuses the rest; with nothing configured it would only refuse."""
    if hooks or http_log or kw.get("listen_tcp") or kw.get("listen_udp"):
        return
    raise ConfigError(
        f"nothing to receive: configure event hooks ({SECRET_ENV} or --secret-file, the hook's config.secret; "
        f"or --allow-unsigned), Kong's http-log ({HTTP_LOG_TOKEN_ENV} or --http-log-token-file; or "
        "--allow-unauthenticated), or a listener (--listen-tcp, --listen-udp)"
    )


def _tls(kw: dict[str, Any]) -> Any:
    cert, key = kw.get("tls_cert"), kw.get("tls_key")
    if not cert and not key:
        return None
    if not (cert and key):
        raise ConfigError("--tls-cert and --tls-key go together: give both")
    from shipper.sources.tls import server_context

    return server_context(cert, key)


_dry_run_option = spooled_dry_run_option(
    "The spool is a throwaway one too: deliveries are answered as usual and their records printed, never shipped "
    "(Kong does not send them again)."
)


@click.command(short_help=SUMMARIES["receive"])
@apply_options(_receiving + listener_options + _kong_records + shipping_options + [config_option, _dry_run_option])
def receive(**kw: Any) -> None:
    """Accept Kong event-hook deliveries over HTTP (handler=webhook), check their x-kong-signature, and ship
    the events to the sinks; and Kong's http-log records at /http-log (token: Bearer, or the Basic password).

    A delivery is answered 200 only once its events are in a durable spool (STATE_DIR/receive/, which also
    holds this command's checkpoints); 401 to a missing or bad signature, 413 to a body over --max-body-bytes;
    503 while more than --max-backlog-bytes wait for the sinks (or, with --on-overload close, no answer). SIGTERM/SIGINT: stop accepting, deliver what is in flight, exit 0.
    """
    from shipper.pipeline import Pipeline
    from shipper.sources.event_hooks import Receiver
    from shipper.sources.intake import KIND as KONG_LOG, KongRecords
    opts = {key: kw.pop(key) for key in _RECEIVE_KEYS}
    if not (opts["listen"] or kw.get("listen_tcp") or kw.get("listen_udp")):
        raise ConfigError(
            "nothing to listen on: give --listen HOST:PORT (event hooks, Kong's http-log), --listen-tcp or --listen-udp"
        )
    # Without --listen there is no HTTP listener: event-hook and http-log settings (from the environment, say)
    # have nothing to apply to, and a tcp-log or udp-log listener alone is a complete configuration.
    http = bool(opts["listen"])
    host, port = parse_listen(opts["listen"]) if http else ("", 0)
    secret = _secret(opts) if http else None
    hooks = secret is not None or (http and bool(opts["allow_unsigned"]))
    http_log_auth = _http_log_auth(opts if http else {})
    _check_some_delivery(kw, hooks, http_log_auth.enabled)
    tls = _tls(opts)
    listen_opts = {key: kw.pop(key) for key in LISTENER_KEYS}  # --listen-tcp, --listen-udp (listeners.py)
    dry_run = DryRun.for_options(kw)
    kw.update(dry_run.fields())  # a dry run's spool, checkpoints and dead letters: a throwaway directory's
    # A spooled line is the body re-encoded in an envelope: never longer than twice the body, plus the envelope.
    settings, sinks, spool_dir = prepare_spooled(kw, "receive", 2 * opts["max_body_bytes"] + 65536)
    sinks = dry_run.wrap(sinks)
    # One writer per spool (its lock), and the pruning of what every sink has acknowledged.
    feeder = SpoolFeeder.open(spool_dir, "receive", name="receive", prune_every=PRUNE_INTERVAL)
    spool = feeder.spool
    pipeline = Pipeline(settings, sinks, follow=True)
    # Kong's records are spooled identified and masked, with the run's JWT options and masker (intake.py).
    kong_spooling = KongRecords.for_run(settings, pipeline.dead_letter)

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

    receiver = None  # no --listen: only the tcp-log / udp-log listeners
    try:
        if http:
            receiver = Receiver(
                host, port, spool, secret=secret, hooks=hooks, http_log_auth=http_log_auth, tls=tls,
                max_body_bytes=opts["max_body_bytes"],
                max_backlog_bytes=opts["max_backlog_bytes"], backlog=backlog, on_accept=pipeline.wake,
                overload=opts["on_overload"], max_connections=opts["max_connections"],
                read_timeout=opts["read_timeout"], masker=kong_spooling.masker,  # event hooks: --mask-* too
            )
            receiver.committer.encoders[KONG_LOG] = lambda record: kong_spooling.encode(record, "http-log record")
    except OSError as exc:
        feeder.close()
        raise ConfigError(f"--listen {opts['listen']}: cannot listen: {exc.strerror}") from None
    try:
        listeners = Listeners(
            listen_opts, spool, dead_letter=pipeline.dead_letter, backlog=backlog, on_spooled=pipeline.wake,
            max_body_bytes=opts["max_body_bytes"], max_backlog_bytes=opts["max_backlog_bytes"], tls=tls,
            kong_records=kong_spooling,
        )
    except ConfigError:
        if receiver is not None:
            receiver.shutdown()
        feeder.close()
        raise

    done = threading.Event()
    serving = _Serving(receiver, listeners, pipeline.fail)

    def maintain() -> None:
        """Stop accepting as soon as a shutdown starts; delete spool segments every sink has acknowledged."""
        # Deliveries arrive on the receiver's own threads: no step, only a look every 0.1 s for the shutdown.
        if feeder.feed(pipeline.context, 0.1, until=done):
            serving.stop()

    # Supervised: if housekeeping dies, the run ends (exit 1) rather than accept deliveries into a spool
    # nobody prunes.
    maintainer = threading.Thread(
        target=supervised(maintain, "receive-maintain", pipeline.fail), name="receive-maintain", daemon=True
    )

    if dry_run.on:
        log.warning("dry run: what is received is answered as usual, printed on standard output and shipped nowhere")
    if receiver is not None:
        _announce(receiver, host, tls, hooks, secret, http_log_auth, settings.sinks, spool_dir)
    # The listeners accept once the run has started (see _Serving); until then clients wait in their queues.
    pipeline.notifier.close()
    pipeline.notifier = _ReadyStarts(serving.start)
    maintainer.start()
    try:
        collectors = []
        if kw.get("metrics_addr"):  # prometheus-client is imported only when metrics are served
            from shipper.service.metrics import ReceiveCollector

            collectors.append(ReceiveCollector(receiver, listeners))
        result = drive(pipeline, kw.get("metrics_addr"), collectors=collectors)
    finally:
        done.set()
        serving.stop()  # what was read is fsynced before the spool closes
        maintainer.join(timeout=5)
        feeder.close()
    summary(result, sys.stderr)
    if receiver is not None:
        refused = ", ".join(f"{n} × {status}" for status, n in sorted(receiver.counts.items()) if status != 200)
        kong_records = receiver.records_accepted.get("kong_log", 0)
        tell(
            f"received {receiver.events_accepted:,} events"
            + (f" and {kong_records:,} http-log records" if kong_records else "")
            + f" in {receiver.counts.get(200, 0):,} deliveries"
            + (f"; refused {refused}" if refused else "")
        )
    for line in listeners.summary():
        tell(line)
    dry_run.report(say)
    if pipeline.forced_by:
        sys.exit(128 + pipeline.forced_by)


def tell(line: str) -> None:
    """A closing line after the summary: with --log-format json a JSON object (`say`); never an exception when
    stderr cannot be written (either way)."""
    if json_stderr():
        say("info", line)
    else:
        write_line(line)


class _Serving:
    """Starts the listeners accepting, once, unless they were stopped first; stops them (idempotent).

    They accept only once the run has started: its metrics server bound, its checkpoints read, its file watcher
    and sinks started, and every module they import on first use imported. Accepting earlier, a flood of clients
    could take every descriptor before that (their sockets listen from the start: they only wait): an import
    raised OSError, the metrics server could not bind, and the run ended (exit 1 or 2)."""

    def __init__(self, receiver: Any, listeners: Listeners, on_death: Callable[[str], None]):
        self.receiver = receiver
        self.listeners = listeners
        self.on_death = on_death
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        with self._lock:
            if self._stopped:
                return
            if self.receiver is not None:
                self.receiver.start(self.on_death)
            self.listeners.start(self.on_death)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self.receiver is not None:
                self.receiver.shutdown()
            self.listeners.shutdown()


class _ReadyStarts(Notifier):
    """The run's systemd notifier, whose READY=1 (sent once the run has started) first starts the listeners: so
    `receive` is ready when it accepts."""

    def __init__(self, start: Callable[[], None]):
        super().__init__()
        self._start = start

    def ready(self, status: str) -> None:
        self._start()
        super().ready(status)


def _announce(receiver: Any, host: str, tls: Any, hooks: bool, secret: bytes | None, http_log_auth: Any,
              sinks: Any, spool_dir: str) -> None:
    """The HTTP listener's startup line: where, with or without TLS, and what each path accepts."""
    bound_host, bound_port = receiver.address
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    everywhere = ""
    if host in ("0.0.0.0", "::"):
        everywhere = " on EVERY address of this host (--listen HOST:PORT to choose one)"
    if tls is None and not _loopback(bound_host):
        everywhere += " WITHOUT TLS: tokens and records cross the network in clear (--tls-cert/--tls-key)"
    scheme = "https" if tls is not None else "http"
    if not hooks:
        hook_state = f"REFUSED (401): no secret ({SECRET_ENV}, --secret-file) nor --allow-unsigned"
    else:
        hook_state = "signed with x-kong-signature" if secret else "UNSIGNED: --allow-unsigned"
    if http_log_auth.token is not None:
        http_log_state = "token required"
    elif http_log_auth.allow_unauthenticated:
        http_log_state = "UNAUTHENTICATED: --allow-unauthenticated"
    else:
        http_log_state = f"REFUSED (401): no token ({HTTP_LOG_TOKEN_ENV}, --http-log-token-file)"
    log.info(
        "receiving at %s://%s:%d/%s: event hooks at any path (%s), Kong http-log at /http-log (%s) → %s (spool %s)",
        scheme, shown, bound_port, everywhere, hook_state, http_log_state, ", ".join(sinks), spool_dir,
    )
