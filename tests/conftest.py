"""Helpers to run the real `kong-ship` as a process, as users and systemd do."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

# Short intervals keep every end-to-end test at seconds, not minutes.
FAST = ["--flush-interval", "0.05", "--retry-initial-delay", "0.01", "--retry-max-delay", "0.2"]
FAST_FOLLOW = FAST + ["--poll-interval", "0.05", "--rotate-wait", "0.3"]  # for `tail`


def ship_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "MOESIF_", "RUNSCOPE_", "KONG_SHIP_"))}
    env.pop("STATE_DIRECTORY", None)
    env.update(extra)
    return env


def summary_rows(stderr: bytes | str) -> dict[str, dict[str, int]]:
    """The backfill summary table as {sink: {column: number}}."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["sink", "read"])
    header = lines[start].split()[1:]
    rows = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if len(cells) != len(header) + 1 or not cells[1].replace(",", "").isdigit():
            break
        rows[cells[0]] = {name: int(cell.replace(",", "")) for name, cell in zip(header, cells[1:])}
    return rows


def ship(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shipper", *args],
        capture_output=True,
        env=env if env is not None else ship_env(),
        timeout=timeout,
    )


class Shipper:
    """A running `kong-ship` process."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shipper", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else ship_env(),
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), err.decode()

    def wait(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), err.decode()


def read_terminal(master: int) -> bytes:
    """Everything a child wrote to the pseudo-terminal whose master side is `master`, until it closed it."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class LogBuilder:
    """A log file's bytes built line by line, each `add` returning the line's offset (what a dead letter names)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.size = 0

    def add(self, line: bytes) -> int:
        self.lines.append(line)
        start, self.size = self.size, self.size + len(line)
        return start

    def data(self) -> bytes:
        return b"".join(self.lines)


@contextlib.contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """`proc` (started with start_new_session=True), its process group SIGKILLed at the end if it still runs,
    so that a test that fails mid-run leaves no shipper or worker behind."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02):
    """The predicate's first truthy value, polled until `timeout`; its last (falsy) value after that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()


@pytest.fixture
def shippers():
    """Every process started through this fixture is killed at the end of the test, pass or fail."""
    started: list[Shipper] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Shipper:
        proc = Shipper(*args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)


@pytest.fixture
def nobody():
    """A listening socket nobody answers on: a dry run's endpoint. A connection to it would be a send."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        pass
    else:
        connection.close()
        pytest.fail("the dry run connected to its endpoint")
    finally:
        listener.close()


def every_byte_under(root) -> dict[str, bytes]:
    """Every file under `root`, by path, with its bytes (what a scan for leaked secrets reads)."""
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                out[path] = handle.read()
    return out


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 256 KiB tmpfs, to fill up and to make read-only mid-run (root bypasses file permissions; a full or
    read-only mount it cannot)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(mount) -> None:
    """Write into `mount` until its file system has not a byte left (ENOSPC)."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as exc:
                assert exc.errno == 28, exc
    finally:
        os.close(fd)


@pytest.fixture
def segment():
    """The strict fake Segment (a module may define its own `segment` instead)."""
    from fakes.segment import FakeSegment

    with FakeSegment() as fake:
        yield fake


@pytest.fixture
def tails():
    """Starts `kong-ship tail` processes (tests/tailrun.py); any still running is killed at the end."""
    from tailrun import tail_starter

    yield from tail_starter()
