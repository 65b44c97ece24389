"""systemd: the notify protocol against a real datagram socket and a real `kong-ship tail`, and
`systemd-analyze verify` on the shipped unit files."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import gen
from conftest import FAST_FOLLOW, ship_env, wait_until
from shipper.service.notify import Notifier

UNITS = pathlib.Path(__file__).resolve().parents[1] / "systemd"


class NotifySocket:
    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def collect_until(self, predicate, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        return predicate()

    def has(self, key: str) -> bool:
        return any(key in m for m in self.messages)


def test_ready_status_watchdog_and_stopping_over_a_real_socket(tmp_path, shippers):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    env = ship_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
    proc = shippers("tail", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "state"), *FAST_FOLLOW, env=env)
    assert listener.collect_until(lambda: listener.has("READY"))
    ready = next(m for m in listener.messages if "READY" in m)
    assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.proc.pid) and "tailing" in ready["STATUS"]
    assert listener.collect_until(lambda: sum("WATCHDOG" in m for m in listener.messages) >= 3, timeout=5)
    assert listener.collect_until(lambda: any("shipped" in m.get("STATUS", "") for m in listener.messages), timeout=10)
    proc.signal(signal.SIGTERM)
    assert listener.collect_until(lambda: listener.has("STOPPING"))
    code, _, err = proc.wait()
    assert code == 0, err


def test_abstract_socket_and_no_socket():
    name = f"kong-ship-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    notifier.status("hello")
    assert listener.recv(100) == b"STATUS=hello"
    silent = Notifier({})
    assert not silent.enabled and silent.send("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (.ci/run installs systemd)")
@pytest.mark.parametrize("unit, name", [("kong-ship.service", "kong-ship.service"), ("kong-ship@.service", "kong-ship@segment.service")])
def test_units_pass_systemd_analyze_verify(tmp_path, unit, name):
    # The units name /usr/local/bin/kong-ship (where `pip install` puts it system-wide); verify against the
    # kong-ship installed here, wherever that is: beside this Python (a virtual environment that was not
    # activated, as the README's test command runs it), else on PATH.
    binary = shutil.which("kong-ship", path=os.path.dirname(sys.executable)) or shutil.which("kong-ship")
    assert binary, "kong-ship is not installed beside this Python nor on PATH"
    text = (UNITS / unit).read_text().replace("/usr/local/bin/kong-ship", binary)
    (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines() if name.split("@")[0] in line or "kong-ship" in line]
    assert result.returncode == 0 and not problems, result.stderr


def shipped_patterns() -> dict[str, str]:
    """The log pattern each shipped way of running `tail` follows: the unit's ExecStart, the manifests' commands."""
    unit = next(line for line in (UNITS / "kong-ship.service").read_text().splitlines() if line.startswith("ExecStart="))
    kubernetes = UNITS.parent / "examples" / "kubernetes"
    found = {"unit": unit.split()[2]}
    for name in ("daemonset", "sidecar"):
        found[name] = (kubernetes / f"{name}.yaml").read_text().split("exec kong-ship tail '", 1)[1].split("'", 1)[0]
    return found


@pytest.mark.parametrize("way", ["unit", "daemonset", "sidecar"])
def test_the_shipped_pattern_finds_what_was_rotated_while_kong_ship_was_down(tmp_path, way):
    """Stopped (a restart, an upgrade, a crash loop) while Kong wrote more and logrotate renamed the file: the
    next start must find the renamed file by the pattern, or what was written before the rotation is lost (the
    pattern `/var/log/kong/*.json` did not match `kong.json.1`: 5 records of 18 never shipped)."""
    folder = tmp_path / "kong"
    folder.mkdir()
    pattern = str(folder / os.path.basename(shipped_patterns()[way]))
    log = folder / "kong.json"
    args = [sys.executable, "-m", "shipper", "tail", pattern, "--sink", "stdout", "--state-dir", str(tmp_path / "state"),
            *FAST_FOLLOW]  # fmt: skip

    def run_until(count: int) -> list[bytes]:
        """Run until `count` events are out (or 20 s have gone by), stop, and return every event it printed."""
        out = tmp_path / "out.jsonl"
        with open(out, "wb") as stdout:
            proc = subprocess.Popen(args, stdout=stdout, stderr=subprocess.PIPE, env=ship_env())
            wait_until(lambda: len(out.read_bytes().splitlines()) >= count, timeout=20)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        return out.read_bytes().splitlines()

    gen.write_records(log, range(10))
    first = run_until(10)
    gen.write_records(log, range(10, 15))  # written while kong-ship is down …
    os.rename(log, folder / "kong.json.1")  # … then rotated away
    gen.write_records(log, range(100, 103))
    second = run_until(8)
    seqs = sorted(int(re.search(rb"[?&]seq=(\d+)", line).group(1)) for line in first + second)  # type: ignore[union-attr]
    assert seqs == [*range(15), *range(100, 103)]
