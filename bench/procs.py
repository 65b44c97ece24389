"""Run a process and measure its memory, sampled every 50 ms from /proc: the high-water RSS (`VmHWM`) of the
process itself and of the largest of its worker processes, and the peak of the whole tree counted as PSS, so
pages the forked workers share with their parent count once.

Not `ru_maxrss` from wait4: on Linux it also holds the RSS of the parent that forked the process before it
exec'd (here: the benchmark itself), so it overstates a small child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

SAMPLE_INTERVAL = 0.05


@dataclass
class Finished:
    returncode: int
    elapsed: float  # seconds from start to exit
    peak_rss_main: float  # MiB: VmHWM of the process itself
    peak_rss_worker: float  # MiB: the largest VmHWM of its descendants (0 without any)
    peak_pss_tree: float  # MiB: the peak of the PSS sum over the process and all its descendants
    peak_processes: int  # most processes seen in the tree at once
    cpu_seconds: float  # user + system of the process and the workers it reaped
    cpu_seconds_workers: float = 0.0  # of that, the descendants' (their last reading: up to 50 ms short)
    stderr: str = ""
    extra: dict = field(default_factory=dict)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _own_ticks(pid: int) -> int:
    """User + system clock ticks of the process itself (proc(5) fields 14 and 15)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return int(fields[11]) + int(fields[12])


class Sampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.peak_processes = 0
        self.hwm_kib: dict[int, int] = {}  # pid → its high-water RSS, as last read
        self.cpu_ticks: dict[int, int] = {}  # pid → its own user + system clock ticks, as last read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            pids = _tree(self.pid)
            for p in pids:
                # The last reading before a process exits is its peak but for the last 50 ms.
                self.hwm_kib[p] = max(self.hwm_kib.get(p, 0), _hwm_kib(p))
                self.cpu_ticks[p] = max(self.cpu_ticks.get(p, 0), _own_ticks(p))
            total = sum(_pss_kib(p) for p in pids)
            self.peak_kib = max(self.peak_kib, total)
            self.peak_processes = max(self.peak_processes, len(pids))


def run(argv: list[str], env: dict[str, str], stderr_path: str, *, stop_when=None, timeout: float = 600.0) -> Finished:
    """Run argv to its end (or, with `stop_when`, until that returns True, then SIGTERM it) and measure it.
    Raises TimeoutError (after killing the process) when it outlives `timeout`."""
    with open(stderr_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        signalled = False
        with Sampler(proc.pid) as sampler:
            # Only wait4 reaps the process: Popen.poll() would take the exit status and its resource usage.
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if stop_when is not None and not signalled and stop_when():
                    proc.send_signal(signal.SIGTERM)
                    signalled = True
                if time.monotonic() > deadline:
                    proc.kill()
                    os.wait4(proc.pid, 0)
                    proc.returncode = -9
                    raise TimeoutError(f"{' '.join(argv[:5])} still running after {timeout:.0f} s")
                time.sleep(0.005)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for a pid already reaped
    with open(stderr_path, errors="replace") as f:
        stderr = f.read()
    return Finished(
        returncode=proc.returncode,
        elapsed=elapsed,
        peak_rss_main=sampler.hwm_kib.get(proc.pid, 0) / 1024,
        peak_rss_worker=max((v for p, v in sampler.hwm_kib.items() if p != proc.pid), default=0) / 1024,
        peak_pss_tree=sampler.peak_kib / 1024,
        peak_processes=sampler.peak_processes,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        cpu_seconds_workers=sum(t for p, t in sampler.cpu_ticks.items() if p != proc.pid) / os.sysconf("SC_CLK_TCK"),
        stderr=stderr,
    )


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process and its descendants, those alive and those reaped
    (/proc/PID/stat: utime, stime, cutime, cstime), for a process stopped by signal rather than waited for."""
    ticks = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ticks += sum(int(v) for v in fields[11:15])  # fields 14-17 of proc(5); index 0 is field 3
    return ticks / os.sysconf("SC_CLK_TCK")
