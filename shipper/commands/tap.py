"""`kong-ship tap`: attach to a running kong-ship's metrics endpoint (`--metrics-addr`) and print the events as
its senders hand them to the vendors, after masking, one JSON line each (`{"sink": …, "event": …}`), until
Ctrl-C. The shipper side is `shipper.service.tap`: local only, rate-limited, and a slow reader loses events
rather than slowing the shipper."""

from __future__ import annotations

import sys
from typing import Any

import click
import httpx
import orjson

from shipper.commands import SUMMARIES
from shipper.commands.options import FiniteFloatRange
from shipper.commands.running import say
from shipper.output import whole_writes
from shipper.service.metrics import parse_addr

DEFAULT_ADDRESS = "127.0.0.1:9464"


def tap_url(address: str) -> str:
    host, port = parse_addr(address, "--address")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"http://[{host}]:{port}/tap" if ":" in host else f"http://{host}:{port}/tap"


def ending(shown: int, stats: dict[str, Any]) -> str:
    """The last line: what this reader printed, and the shipper's counts as of its last report (once a second)."""
    return (f"tap: {shown:,} event(s) shown, {stats.get('filtered', 0):,} filtered out, "
            f"{stats.get('over_rate', 0):,} over the rate, {stats.get('lost', 0):,} lost (this reader was behind)")


@click.command(short_help=SUMMARIES["tap"])
@click.option("--address", default=DEFAULT_ADDRESS, show_default=True, metavar="HOST:PORT",
              help="The running kong-ship's --metrics-addr (the tap answers local connections only).")
@click.option("--sink", metavar="NAME", help="Only this sink's events (default: every sink's).")
@click.option("--contains", multiple=True, metavar="TEXT", help="Only events whose JSON holds TEXT (repeatable: all).")
@click.option("--filter", "fields", multiple=True, metavar="PATH=VALUE",
              help="Only events whose dotted PATH equals VALUE, e.g. properties.status=500 (repeatable: all).")
@click.option("--rate", type=FiniteFloatRange(min=0), default=10.0, show_default=True, metavar="N",
              help="At most N events per second (0: no limit); the others are counted, not shown.")
def tap(address: str, sink: str | None, contains: tuple[str, ...], fields: tuple[str, ...], rate: float) -> None:
    """Print the events a running kong-ship sends, as it sends them, after masking (what a mask removed is
    never shown), until Ctrl-C. The shipper needs --metrics-addr; connect from the same host.

    Exit 0 on Ctrl-C or when the shipper stops; 1 when it cannot be reached or refuses.
    """
    params: list[tuple[str, str | int | float | bool | None]] = [("rate", rate), *(("contains", text) for text in contains),
                                             *(("field", field) for field in fields)]
    if sink:
        params.append(("sink", sink))
    url = tap_url(address)
    stats: dict[str, Any] = {}
    shown = 0
    out = whole_writes()
    try:
        with httpx.stream("GET", url, params=params, timeout=httpx.Timeout(10.0, read=None)) as response:
            if response.status_code != 200:
                response.read()
                try:
                    reason = orjson.loads(response.content)["error"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    reason = f"HTTP {response.status_code}"
                say("error", f"{url}: {reason}")
                sys.exit(1)
            for line in response.iter_lines():
                if line.startswith('{"tap":'):
                    if not stats:
                        say("info", f"attached to {url} (sinks: {', '.join(orjson.loads(line)['tap']['sinks'])})")
                    stats = orjson.loads(line)["tap"]
                    continue
                out.write(line.encode() + b"\n")
                out.flush()
                shown += 1
        say("info", f"the shipper closed the tap; {ending(shown, stats)}")
    except KeyboardInterrupt:
        say("info", ending(shown, stats))
    except httpx.TransportError as exc:
        if stats:  # connected, then lost: the shipper went away
            say("info", f"the shipper closed the tap; {ending(shown, stats)}")
            return
        say("error", f"cannot connect to {url} ({type(exc).__name__}: {exc}): is kong-ship running with "
                     f"--metrics-addr {address}?")
        sys.exit(1)
    except BrokenPipeError:  # `kong-ship tap | head`
        pass
