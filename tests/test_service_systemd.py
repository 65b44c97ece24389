"""systemd: the notify protocol against a real datagram socket and a real `kong-ship tail`, and
`systemd-analyze verify` on the shipped unit files."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import gen
from conftest import FAST_FOLLOW, ship_env
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
