"""A running `kong-ship receive` for the tests that feed it the way Kong does (test_http_log.py,
test_tcp_udp_log.py, test_receive_metrics.py): free ports, and the start that waits until the listener accepts
(or shows why the process ended)."""

from __future__ import annotations

import socket

from conftest import wait_until


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def start_receive(shippers, args, env, port: int):
    """`kong-ship receive ARGS`, once its TCP `port` (HTTP or tcp-log, bound last) accepts. A receive that
    exits instead fails the test with its stderr."""
    proc = shippers("receive", *args, env=env)
    assert wait_until(lambda: proc.proc.poll() is not None or accepts(port), timeout=20) and proc.proc.poll() is None, \
        proc.wait()[2]
    return proc
