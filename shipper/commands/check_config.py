"""`kong-ship check-config`: validate the configuration as `tail` would see it and print it, secrets redacted."""

from __future__ import annotations

import os
from typing import Any

import click

from shipper.commands import SUMMARIES
from shipper.commands.options import apply_options, tail_options
from shipper.commands.running import prepare, routing_of_command, say, sink_urls
from shipper.commands.stderr import json_stderr
from shipper.errors import ConfigError
from shipper.processors import chain_for, describe_chain
from shipper.processors.redact import redact_url
from shipper.routing import describe as describe_routes
from shipper.routing import lanes_line
from shipper.sources.files import expand, input_problems


@click.command("check-config", short_help=SUMMARIES["check-config"])
@click.argument("paths", nargs=-1)
@apply_options(tail_options)  # as `tail` sees the configuration
def check_config(paths: tuple[str, ...], **kw: Any) -> None:
    """Validate the configuration (file, environment and flags, as `tail` would see them) and print the
    effective settings, secrets redacted. Exit 2 with one line on the first problem."""
    settings, sinks = prepare(paths, kw)
    from shipper.service.config import effective_toml

    counts = check_inputs(settings.paths)
    resolved = {
        "paths": [toml_safe_path(os.path.abspath(p)) for p in settings.paths], "nginx_field": settings.nginx_fields,
        "jwt_from": list(settings.jwt_places), "state_dir": settings.state_dir,
        "dead_letter": os.path.abspath(settings.dead_letter_path), "ca_file": settings.ca_file,
        "workers": kw["workers"],  # `auto` as given: the file stays right on another machine
    }
    endpoints = {name: redact_url(url) if url else None for name, url in sink_urls(kw["endpoint"], settings.sinks).items()}
    # stdout has no endpoint to show
    defaults: dict[str, str | None] = {sink.name: redact_url(sink.url) for sink in sinks if sink.name != "stdout"}
    click.echo(effective_toml(kw, settings.paths, resolved, settings.sinks, endpoints, defaults), nl=False)
    routing = routing_of_command()
    if routing is not None:  # the [[route]] tables as TOML, credentials as where they come from
        click.echo("\n".join(describe_routes(routing, redact_url)))
    # The chain each record passes, built as the pipeline builds it (stderr: stdout stays a valid config file).
    chain = f"processors: {describe_chain(chain_for(settings)[1])}"
    lanes = [lanes_line(sinks, routing)] if routing is not None else []
    for line in (chain, *lanes, f"inputs: {counts}", "configuration OK"):
        if json_stderr():
            say("info", line)  # with --log-format json, every stderr line is JSON
        else:
            click.echo(line, err=True)


def toml_safe_path(path: str) -> str:
    """`path` as a TOML file can hold it (UTF-8): each byte of a file name that is not UTF-8 (Python's surrogate
    escapes) as `?`, the glob that matches it, so that the printed configuration, saved, is still a --config that
    reads the same file; said on stderr, since the glob may match more."""
    safe = "".join("?" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in path)
    if safe != path:
        say("warning", f"input {path} is not UTF-8, which a TOML file cannot hold: written as the glob "
                       f"{safe}, which may match other files too")
    return safe


def check_inputs(patterns: list[str]) -> str:
    """check-config checks the inputs as backfill reads them: each pattern matches, each file can be read; the
    first problem is the error (exit 2), else how many files each pattern matches."""
    problems = input_problems(patterns)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ConfigError(f"input {problems[0]}{more}")
    return ", ".join(f"{pattern}: {len(expand([pattern]))} file(s)" for pattern in patterns)
