"""`kong-ship audit tail` and `kong-ship audit verify`: Kong Enterprise's Admin API audit logs.

`tail` polls `/audit/requests` and `/audit/objects` (see `shipper.sources.kong_audit`), appends what is new to a
durable spool (STATE_DIR/audit/) and only then advances its cursor; the ordinary pipeline follows the spool with
its checkpoints, batches and retries, so each record ships once across restarts and none is lost to a crash or a
vendor outage. `--once` polls once, ships everything and exits (cron, tests). Records are spooled already masked,
with the run's masker (the default secret names plus `--mask-header`, `--mask-query`, `--mask-body-key`): the
one the pipeline's chain masks with, so the spool on disk keeps nothing a vendor would not get.

`verify` checks each record's RSA signature over Kong's canonical form (`shipper.formats.audit_signature`), from
the Admin API or from files, and prints the counts and the ids of the bad records.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import click
import orjson

from shipper.commands import SUMMARIES
from shipper.commands.audit_files import records_in_files
from shipper.commands.options import (
    Seconds, apply_options, config_option, option_names, shipping_options, spooled_dry_run_option,
    understanding_options,
)
from shipper.commands.running import drive, prepare_spooled, run, say, setup_logging
from shipper.commands.stderr import json_stderr, write_line
from shipper.commands.summary import summary
from shipper.delivery.dry_run import DryRun
from shipper.errors import ConfigError, FatalError
from shipper.formats import audit_signature
from shipper.formats.audit import audit_masker, shown_id
from shipper.settings import Settings
from shipper.sinks.credentials import read_secret
from shipper.sources.feeder import SpoolFeeder
from shipper.sources.kong_audit import (
    ENDPOINTS,
    TOKEN_ENV,
    AdminClient,
    AdminUnavailable,
    Cursor,
    Poller,
    record_id,
)

log = logging.getLogger("kong-ship")

PRUNE_EVERY = 10.0  # seconds between deletions of fully shipped spool segments (tail without --once)
# How long a stop waits for a poll under way. One still waiting on the Admin API (up to --timeout per page) is left
# behind: a Ctrl-C waited --timeout + 5 s. What it leaves is what a crash leaves, which loses nothing: the spool
# append is all or nothing and fsynced before the cursor moves, and the cursor is written atomically.
POLL_STOP_WAIT = 2.0

_admin_options = [
    click.option("--admin-url", envvar="KONG_ADMIN_URL", metavar="URL",
                 help="The Kong Admin API, e.g. https://kong:8444 [env KONG_ADMIN_URL]."),
    click.option("--admin-token-file", type=click.Path(dir_okay=False),
                 help=f"File holding the RBAC token, sent as Kong-Admin-Token [default: env {TOKEN_ENV}]."),
    click.option("--no-admin-token", is_flag=True,
                 help="Send no token (an Admin API that does not enforce RBAC)."),
    click.option("--workspace", metavar="NAME", help="Read the audit log of this workspace (/NAME/audit/...)."),
]
# `audit tail` takes --ca-file from the shipping options, where it serves the Admin API and the sinks alike.
_ca_option = click.option(
    "--ca-file", type=click.Path(dir_okay=False),
    help="CA certificate(s), PEM, to trust for the Admin API's TLS, on top of the default ones (Mozilla's CAs "
         "from certifi, or $SSL_CERT_FILE); verification is always on.",
)
_ADMIN_KEYS = ("admin_url", "admin_token_file", "no_admin_token", "workspace")

_tail_options = [
    click.option("--interval", type=Seconds(min=0.1), default=10.0, show_default=True,
                 help="Seconds between polls."),
    click.option("--once", is_flag=True,
                 help="Poll once, ship everything, wait for every acknowledgement and exit (cron, tests)."),
    click.option("--verify-key", type=click.Path(dir_okay=False), metavar="PUBLIC.PEM",
                 help="Check each record's signature with this RSA public key: records that fail are "
                      "dead-lettered (reason bad_signature), the others shipped marked verified or unsigned."),
    click.option("--page-size", type=click.IntRange(min=1, max=1000), default=1000, show_default=True,
                 help="Records per Admin API request (size)."),
]
_TAIL_KEYS = _ADMIN_KEYS + ("interval", "once", "verify_key", "page_size")
# The user's secret names, as `tail` and `receive` take them: an audit record's `payload`, `entity` and `path` are
# masked with them. Not the JWT options (an audit record names its RBAC user, it carries no JWT) nor --format,
# --nginx-field, --max-line-bytes (the spool names each record's kind; its line bound is the command's).
_MASK_OPTIONS = {"mask_header", "mask_query", "mask_body_key", "ship_raw_bodies"}
_masks = [o for o in understanding_options if set(option_names([o])) <= _MASK_OPTIONS]
_dry_run_option = spooled_dry_run_option(
    "The spool and the cursor are throwaway ones too: the audit log is read from its start and nothing of it is "
    "marked as shipped."
)


def _token(opts: dict[str, Any], required: bool = True) -> str | None:
    env_set = bool(os.environ.get(TOKEN_ENV, "").strip())
    if opts.get("no_admin_token"):
        if opts.get("admin_token_file") or env_set:
            raise ConfigError(
                f"--no-admin-token and a token ({TOKEN_ENV} or --admin-token-file) contradict each other: drop one"
            )
        return None
    if opts.get("admin_token_file") or env_set:
        return read_secret(TOKEN_ENV, opts.get("admin_token_file"), "--admin-token-file")
    if not required:
        return None  # Kong's RBAC is off by default; a 401 then says to set KONG_ADMIN_TOKEN
    raise ConfigError(
        f"no Admin API token: set {TOKEN_ENV} or --admin-token-file (the RBAC token of a user that may read "
        "/audit), or pass --no-admin-token if the Admin API does not enforce RBAC"
    )


def _client(opts: dict[str, Any], token: str | None, timeout: float, page_size: int = 1000) -> AdminClient:
    return AdminClient(
        opts["admin_url"], token, workspace=opts.get("workspace"), ca_file=opts.get("ca_file"),
        timeout=timeout, page_size=page_size,
    )


@click.group(short_help=SUMMARIES["audit"])
def audit() -> None:
    """Kong Enterprise Admin API audit logs: ship them (tail), check their signatures (verify)."""


# -- tail ------------------------------------------------------------------------------------------------------
@audit.command()
@apply_options(_admin_options + _tail_options + _masks + shipping_options + [config_option, _dry_run_option])
def tail(**kw: Any) -> None:
    """Poll the Admin API's /audit/requests and /audit/objects and ship every record once, across restarts.

    New records go to a durable spool (STATE_DIR/audit/) before the cursor moves; the pipeline ships from the
    spool with checkpoints and retries. Admin requests become `Kong Admin Request` events, database changes
    `Kong Config Change` (Segment and stdout; see the README for Moesif and Runscope), with the RBAC user as the
    user. Secrets (the default names, --mask-header, --mask-query, --mask-body-key) are masked before a record
    is spooled. SIGTERM/SIGINT: deliver what is in flight, exit 0. With --once: exit 1 if any record was rejected
    or failed --verify-key.
    """
    from shipper.sources.spool import Spool
    from shipper.sources.spool import lock as spool_lock

    opts = {key: kw.pop(key) for key in _TAIL_KEYS}
    opts["ca_file"] = kw.get("ca_file")
    if not opts["admin_url"]:
        raise ConfigError(
            "no --admin-url: pass the Kong Admin API's URL, e.g. --admin-url http://127.0.0.1:8001 "
            "(or set KONG_ADMIN_URL)"
        )
    token = _token(opts)  # before anything else is set up: the most common mistake
    dry_run = DryRun.for_options(kw)
    kw.update(dry_run.fields())  # a dry run's spool, cursor, checkpoints and dead letters: a throwaway directory's
    settings, sinks, spool_dir = prepare_spooled(kw, "audit", 16 << 20)
    sinks = dry_run.wrap(sinks)
    key = audit_signature.load_public_key(opts["verify_key"], "--verify-key") if opts["verify_key"] else None
    client = _client(opts, token, settings.timeout, opts["page_size"])
    lock = spool_lock(spool_dir, "audit tail")
    spool = Spool(spool_dir)
    workspace = client.workspace
    cursor = Cursor(os.path.join(spool_dir, "cursor.json"), {"admin_url": client.shown, "workspace": workspace})
    # The run's masks (the user's names from these settings), and Kong's own secret fields: the spool is masked as
    # records ship.
    names = (*settings.mask_headers, *settings.mask_query, *settings.mask_body_keys)
    masker = audit_masker(names, settings.ship_raw_bodies)
    poller = Poller(client, cursor, spool, verify_key=key, workspace=workspace, masker=masker)
    close_spool = True
    try:
        cursor.load()
        if opts["once"]:
            code = _tail_once(poller, spool, settings, sinks, kw)
        else:
            code, close_spool = _tail_forever(poller, spool, settings, sinks, kw, opts["interval"])
    finally:
        client.close()
        if close_spool:
            spool.close()
        os.close(lock)
    dry_run.report(say)
    if code:
        sys.exit(code)


def _tail_once(poller: Poller, spool, settings, sinks, kw) -> int:
    try:
        poller.poll()
    except AdminUnavailable as exc:
        raise FatalError(str(exc)) from None
    pipeline, result = run(settings, sinks, follow=False, metrics_addr=kw.get("metrics_addr"))
    summary(result, sys.stderr)
    _poll_summary(poller)
    spool.prune(pipeline.behind)
    if pipeline.forced_by:
        return 128 + pipeline.forced_by
    if any(lane.rejected for lane in result.lanes) or poller.counts[audit_signature.INVALID]:
        return 1
    return 0


def _tail_forever(poller: Poller, spool, settings, sinks, kw, interval: float) -> tuple[int, bool]:
    from shipper.pipeline import Pipeline

    log.info(
        "audit: polling %s every %g s → %s (state %s)",
        poller.client.shown + (f" (workspace {poller.workspace})" if poller.workspace else ""), interval,
        ", ".join(settings.sinks), settings.state_dir,
    )
    # The first poll before anything starts: a refused token or a wrong URL is one line and exit 1 at once. An
    # Admin API that is down is not: the service starts and keeps trying.
    first_failed = False
    try:
        if poller.poll():
            log.info("audit: %d new records", sum(poller.counts[e] for e in ENDPOINTS))
    except AdminUnavailable as exc:
        log.warning("audit: %s; trying again every %g s", exc, interval)
        first_failed = True
    pipeline = Pipeline(settings, sinks, follow=True)
    failure: list[str] = []

    def loop() -> None:
        context = pipeline.context  # `run` is the command helper
        feeder = SpoolFeeder(spool, name="audit", prune_every=PRUNE_EVERY)
        failing_since: float | None = time.monotonic() if first_failed else None
        last_warning = time.monotonic()
        write_failure: str | None = None  # logged once per kind, not every poll

        def poll() -> bool:
            """One poll; False ends the poller (the failure is kept for the command to raise)."""
            nonlocal failing_since, last_warning, write_failure
            try:
                spooled = poller.poll()
            except AdminUnavailable as exc:
                now = time.monotonic()
                if failing_since is None or now - last_warning >= 300:
                    log.warning("audit: %s; trying again every %g s", exc, interval)
                    last_warning = now
                if failing_since is None:
                    failing_since = now
            except FatalError as exc:
                failure.append(str(exc))
                context.stop.set()
                context.wake()
                return False
            except OSError as exc:  # the spool or the cursor cannot be written (disk full): nothing advanced
                message = f"audit: cannot keep the records ({exc.strerror or exc})"
                if message != write_failure:
                    log.error("%s; polling again every %g s until they can be written", message, interval)
                    write_failure = message
            except Exception as exc:  # noqa: BLE001 - a bug must stop the service visibly, not kill a thread silently
                failure.append(f"audit poller: {type(exc).__name__}: {exc}")
                context.stop.set()
                context.wake()
                return False
            else:
                if failing_since is not None:
                    log.info("audit: the Kong Admin API answers again")
                    failing_since = None
                if write_failure is not None:
                    log.info("audit: the records are written again")
                    write_failure = None
                if spooled:
                    log.info("audit: %d new records", spooled)
                    context.wake()
            return True

        feeder.feed(context, interval, poll)

    poller_thread = threading.Thread(target=loop, name="audit-poll", daemon=True)
    poller_thread.start()
    try:
        result = drive(pipeline, kw.get("metrics_addr"))
    finally:
        pipeline.stop.set()
        poller_thread.join(timeout=POLL_STOP_WAIT)
    summary(result, sys.stderr)
    _poll_summary(poller)
    if failure:
        raise FatalError(failure[0])
    code = 128 + pipeline.forced_by if pipeline.forced_by else 0
    return code, not poller_thread.is_alive()


def _poll_summary(poller: Poller) -> None:
    counts = poller.counts
    if json_stderr():  # --log-format json: every stderr line is JSON
        fields = {"requests": counts["requests"], "objects": counts["objects"]}
        if poller.verify_key is not None:
            results = (audit_signature.VERIFIED, audit_signature.UNSIGNED, audit_signature.INVALID)
            fields.update({name: counts[name] for name in results})
        say("info", "audit summary", **fields)
        return
    line = f"audit: {counts['requests']:,} admin requests and {counts['objects']:,} config changes fetched"
    if poller.verify_key is not None:
        line += (
            f"; signatures: {counts[audit_signature.VERIFIED]:,} verified, {counts[audit_signature.UNSIGNED]:,} "
            f"unsigned, {counts[audit_signature.INVALID]:,} invalid"
        )
        if counts[audit_signature.INVALID]:
            line += " (dead-lettered, reason bad_signature)"
    write_line(line)  # after the summary: a stderr nobody reads must not turn the run's exit code into 1


# -- verify ----------------------------------------------------------------------------------------------------
@audit.command()
@click.argument("files", nargs=-1)
@click.option("--public-key", required=True, type=click.Path(dir_okay=False), metavar="PUBLIC.PEM",
              help="The RSA public key matching Kong's audit_log_signing_key.")
@apply_options(_admin_options + [_ca_option])
@click.option("--require-signed", is_flag=True, help="Unsigned records fail too.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, for scripts.")
@click.option("--timeout", type=Seconds(min=0.1), default=Settings.timeout, show_default=True,
              help="HTTP request timeout, seconds.")
@config_option
def verify(files: tuple[str, ...], **kw: Any) -> None:
    """Check the signature of each audit record, from the Admin API (--admin-url) or from FILEs.

    A FILE (`-`: standard input) holds what `GET /audit/requests` (or /audit/objects) answered, a JSON array of
    records, or one record per line (kong-ship's spool files too). Prints the counts of verified, unsigned and invalid records and the
    ids of the bad ones. Exit 0 only when every signed record verifies (with --require-signed: and none is
    unsigned); 1 otherwise; 2 for a usage error.
    """
    setup_logging("warning")
    if files and kw.get("admin_url"):
        admin_url_from = click.get_current_context().get_parameter_source("admin_url")
        if admin_url_from is not click.core.ParameterSource.COMMANDLINE:
            kw["admin_url"] = None  # KONG_ADMIN_URL or the config file: the FILEs given win
    if files and kw.get("admin_url"):
        raise ConfigError("give either --admin-url or FILE..., not both")
    if not files and not kw.get("admin_url"):
        raise ConfigError("nothing to verify: pass --admin-url URL (with its token) or FILE...")
    key = audit_signature.load_public_key(kw["public_key"], "--public-key")
    counts: Counter[str] = Counter()
    bad: list[dict[str, Any]] = []
    if files:
        source: Iterator[tuple[str, dict[str, Any], str | None]] = records_in_files(files)
    else:
        source = _from_admin(_client(kw, _token(kw, required=False), kw["timeout"]))
    for endpoint, record, where in source:
        result = audit_signature.check(record, key)
        counts[result] += 1
        if result == audit_signature.INVALID or (result == audit_signature.UNSIGNED and kw["require_signed"]):
            item = {"result": result, "kind": endpoint[:-1], "id": shown_id(record_id(endpoint, record))}
            if where:
                item["where"] = where
            bad.append(item)
    failed = counts[audit_signature.INVALID] + (counts[audit_signature.UNSIGNED] if kw["require_signed"] else 0)
    if kw["as_json"]:
        click.echo(orjson.dumps({
            "verified": counts[audit_signature.VERIFIED], "unsigned": counts[audit_signature.UNSIGNED],
            "invalid": counts[audit_signature.INVALID], "bad": bad, "ok": not failed,
        }, option=orjson.OPT_INDENT_2).decode())
    else:
        total = sum(counts.values())
        click.echo(
            f"{total:,} records: {counts[audit_signature.VERIFIED]:,} verified, "
            f"{counts[audit_signature.UNSIGNED]:,} unsigned, {counts[audit_signature.INVALID]:,} invalid"
        )
        for item in bad:
            where = f" ({item['where']})" if "where" in item else ""
            click.echo(f"{item['result']}: {item['kind']} {item['id'] or '(no id)'}{where}")
    if failed:
        sys.exit(1)


def _from_admin(client: AdminClient) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    try:
        for endpoint in ENDPOINTS:
            for page in client.pages(endpoint):
                for record in page:
                    yield endpoint, record, None
    except AdminUnavailable as exc:
        raise FatalError(str(exc)) from None
    finally:
        client.close()
