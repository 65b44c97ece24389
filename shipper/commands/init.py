"""`kong-ship init`: what a user needs beside the program, from the installed package (a wheel has no checkout).

It writes the commented configuration (examples/kong-ship.toml) and prints or writes the systemd units and the
logrotate snippet; the files ship inside the package (shipper/share/), so an install from a package index has
them too.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from importlib import resources

import click

from shipper.commands import SUMMARIES
from shipper.errors import ConfigError

# --print NAME -> the file in shipper/share/
SHARED = {
    "config": "kong-ship.toml",
    "unit": "kong-ship.service",
    "unit-template": "kong-ship@.service",
    "logrotate": "logrotate-kong",
}
UNITS = ("unit", "unit-template")
UNIT_BINARY = "/usr/local/bin/kong-ship"  # what the units' ExecStart= names


def shared(name: str) -> str:
    return resources.files("shipper").joinpath("share", SHARED[name]).read_text(encoding="utf-8")


_NOT_FILES = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}


def _not_a_file(path: str) -> str | None:
    """Why what is at `path` is nothing init may replace, even with --force: a device or a socket (`init --force
    /dev/null` as root replaced the machine's /dev/null with a regular file), a link to one, or a link to a
    process's descriptor (/dev/stdout -> /proc/self/fd/1). A regular file, a FIFO or any other link is replaced."""
    try:
        here = os.lstat(path)
        if stat.S_ISLNK(here.st_mode):
            target = os.readlink(path)
            if target.startswith("/proc/"):
                return f"a link to a process's descriptor ({target})"
            here = os.stat(path)
    except OSError:
        return None  # nothing there, a dangling link, or unreadable: the write below says what fails
    kind = _NOT_FILES.get(stat.S_IFMT(here.st_mode))
    return f"a {kind}" if kind else None


def _write(path: str, text: str, force: bool, mode: int) -> None:
    """Write `text` to `path` with `mode`, never replacing an existing file unless `force`, never a device
    (`_not_a_file`). Written to a new file beside it and renamed over it: with --force a symlink at `path` is
    replaced, not followed (its target, any file, was rewritten and given our mode), a FIFO does not block the
    command, and a failure leaves no half file."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    refused = _not_a_file(path)
    if refused:
        raise ConfigError(f"{path} is {refused}, not a file: not replaced")
    try:
        os.makedirs(parent, exist_ok=True)
        if not force and os.path.lexists(path):
            raise FileExistsError
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), mode)  # the umask narrowed `mode` at creation; 0644 units are meant
                handle.write(text)
            # Without --force, link(2) fails on anything at `path`, a file created meanwhile too; rename replaces.
            os.replace(tmp, path) if force else os.link(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    except FileExistsError:
        raise ConfigError(f"{path} exists: not replaced (--force replaces it)") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    click.echo(f"kong-ship: wrote {path}", err=True)


def _installed_binary() -> str | None:
    found = shutil.which("kong-ship") or os.path.join(os.path.dirname(sys.executable), "kong-ship")
    return os.path.abspath(found) if os.path.exists(found) else None


@click.command(short_help=SUMMARIES["init"])
@click.argument("file", required=False, default="kong-ship.toml", metavar="[FILE]")
@click.option("--force", is_flag=True, help="Replace existing files.")
@click.option("--print", "show", type=click.Choice(list(SHARED)), metavar="|".join(SHARED),
              help="Print a shipped file to stdout instead, and write nothing.")
@click.option("--systemd-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Also write the units kong-ship.service and kong-ship@.service there (e.g. /etc/systemd/system).")
@click.option("--logrotate", "logrotate_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write the logrotate snippet for Kong's log there (e.g. /etc/logrotate.d/kong).")
def init(file: str, force: bool, show: str | None, systemd_dir: str | None, logrotate_file: str | None) -> None:
    """Write a commented configuration to FILE [default: ./kong-ship.toml; for the service:
    /etc/kong-ship/kong-ship.toml; `-`: standard output], mode 0600, and say what comes next. An existing file
    is not replaced unless --force.

    The example configuration, the systemd units and the logrotate snippet ship with the package:
    `--print unit` prints the unit, `--systemd-dir DIR` and `--logrotate FILE` write them.
    """
    if show:
        click.echo(shared(show), nl=False)
        if show in UNITS:
            _binary_note()
        return
    if file == "-":  # standard output, as for any Unix tool (it was a file named '-')
        click.echo(shared("config"), nl=False)
    else:
        _write(file, shared("config"), force, 0o600)
    if systemd_dir:
        for name in UNITS:
            _write(os.path.join(systemd_dir, SHARED[name]), shared(name), force, 0o644)
        _binary_note()
    if logrotate_file:
        _write(logrotate_file, shared("logrotate"), force, 0o644)
    if file == "-":
        return
    click.echo(
        f"kong-ship: next: edit [input] paths and the [sinks.*] tables in {file}, give the credentials "
        f"(environment or *_file keys), then: kong-ship check-config --config {file}",
        err=True,
    )


# What the units' ProtectHome=yes and PrivateTmp=yes hide from the service: a kong-ship under them does not start
# (status=203/EXEC), whatever links to it.
HIDDEN_FROM_UNITS = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")


def _binary_note() -> None:
    binary = _installed_binary()
    if binary is None:
        return
    real = os.path.realpath(binary)
    if real.startswith(HIDDEN_FROM_UNITS):
        click.echo(f"kong-ship: note: the units cannot run {real}: their ProtectHome=yes and PrivateTmp=yes hide "
                   f"/home, /root, /run/user and /tmp; install it where they can (python3 -m venv /opt/kong-ship && "
                   f"/opt/kong-ship/bin/pip install ...; ln -sf /opt/kong-ship/bin/kong-ship {UNIT_BINARY})", err=True)
    elif binary != UNIT_BINARY:
        click.echo(f"kong-ship: note: the units run {UNIT_BINARY}; this kong-ship is {binary} "
                   f"(ln -s {binary} {UNIT_BINARY}, or change ExecStart=)", err=True)
