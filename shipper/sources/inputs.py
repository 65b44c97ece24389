"""Which files the patterns name, and, for one-shot commands, which inputs cannot be read at all."""

from __future__ import annotations

import glob
import os
import resource
import stat


def expand(patterns: list[str]) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths.extend(sorted(glob.glob(pattern)))
        elif os.path.exists(pattern):
            paths.append(pattern)
    return paths


def input_problems(patterns: list[str]) -> list[str]:
    """One line per input a one-shot command cannot read: a pattern that matches nothing, a path that is not a
    regular file, a file that cannot be opened. Never opens a FIFO for reading (that would block)."""
    problems = []
    for pattern in patterns:
        paths = expand([pattern])
        if not paths:
            problems.append(f"{pattern}: no file matches" if glob.has_magic(pattern) else f"{pattern}: no such file")
        elif glob.has_magic(pattern) and all(os.path.isdir(path) for path in paths):
            problems.append(f"{pattern}: matches only directories, no log file")
        for path in paths:
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}")
                continue
            if stat.S_ISDIR(mode):
                if not glob.has_magic(pattern):
                    problems.append(f"{path}: is a directory, not a log file (use a glob such as {path}/*.json)")
                continue  # a glob that also matches directories (kong.json* and a kong.json.d/) is not an error
            if not stat.S_ISREG(mode):
                kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
                problems.append(f"{path}: is {kind}, not a regular file (not read)")
                continue
            try:
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)))
            except OSError as exc:
                problems.append(f"{path}: cannot be opened: {exc.strerror}")
    return problems


def mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def open_files_cap() -> int:
    """Half the soft limit of descriptors (at least 8): how many log files a source holds open at once."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else max(8, soft // 2)
