"""Small real file systems for the tests of full and read-only state directories: a tmpfs of a given size,
mounted on a directory inside the test's tmp_path, unmounted afterwards. A test that needs one is skipped
(with the reason) only where mounting is not permitted."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def tmpfs(path: os.PathLike | str, size: str = "256k") -> Iterator[str]:
    path = str(path)
    os.makedirs(path, exist_ok=True)
    try:
        done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=10)


def remount(path: str, mode: str) -> None:
    """mode "ro" or "rw"; fails the test if the kernel refuses (e.g. a file open for writing on it)."""
    done = _mount("-o", f"remount,{mode}", path)
    assert done.returncode == 0, done.stderr


def fill(path: str, leave: int = 0) -> str:
    """Fill the file system holding `path` up to `leave` free bytes with a file; returns its name."""
    filler = os.path.join(path, "filler")
    with open(filler, "ab") as handle:
        while True:
            stat = os.statvfs(path)
            free = stat.f_bavail * stat.f_frsize
            if free <= leave:
                break
            try:
                handle.write(b"\0" * min(65536, max(1, free - leave)))
                handle.flush()
            except OSError:
                break
    return filler
