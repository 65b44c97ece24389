"""The operator-facing surface against a hostile or careless environment: the metrics endpoint's HTTP server
(which serves `/tap`) against connections that never send a request and tap readers that never read, `status`
against a state directory it cannot read or make sense of, and `init` against a symlink or a FIFO where it
writes. Real sockets, real threads, real processes."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import orjson
import pytest

from conftest import ship, ship_env, wait_until
from receiving import free_port
from shipper.service.tap import BUFFER_BYTES, Reader, TapHub, serve_http


def _metrics(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"kong_ship_up 1\n"]


@pytest.fixture
def server():
    """The metrics endpoint's server with its bounds made small: 4 connections, 0.5 s of silence."""
    hub = TapHub([SimpleNamespace(sink=SimpleNamespace(name="segment"), tap=None)])  # type: ignore[list-item]
    port = free_port()
    http = serve_http("127.0.0.1", port, _metrics, hub, connections=4, idle_timeout=0.5)
    yield port, hub
    http.shutdown()
    http.server_close()


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes `sock` within `timeout` (whatever it sent first is read and dropped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def scrape(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_connections_that_send_nothing_are_bounded_and_closed(server, capfd):
    """Whoever reaches the port held a thread per connection for ever by sending nothing: 200 such connections
    were 200 threads. Beyond the cap a connection is closed at once; within it, after the idle timeout; then a
    scrape answers, and nothing was said on stderr."""
    port, _ = server
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    # accepted, each in its thread (the server's, in this process): only then is the next one beyond the cap
    assert wait_until(lambda: sum("process_request_thread" in t.name for t in threading.enumerate()) >= 4, timeout=10)
    extra = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        assert closed_by_peer(extra, timeout=0.4)  # at once, well before the idle timeout
        assert all(closed_by_peer(sock, timeout=5) for sock in idle)  # the silent ones, after 0.5 s
        assert wait_until(lambda: b"kong_ship_up 1" in scrape(port), timeout=5)
    finally:
        for sock in (*idle, extra):
            sock.close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_reader_that_never_reads_is_let_go_quietly(server, capfd):
    """A tap reader that takes none of its bytes: its thread was blocked in a write for ever, attached, holding
    its buffer. After the idle timeout it is detached, without a traceback in the journal."""
    port, hub = server
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", port))
    stuck.sendall(b"GET /tap?rate=0 HTTP/1.0\r\nHost: x\r\n\r\n")
    try:
        assert wait_until(lambda: hub.readers, timeout=5)
        event = orjson.dumps({"pad": "p" * 60_000})
        deadline = time.monotonic() + 10
        while hub.readers and time.monotonic() < deadline:  # keep its socket full until it is let go
            hub.offer("segment", [(0, 0, 0, event)])  # type: ignore[list-item]
            time.sleep(0.01)
        assert not hub.readers
    finally:
        stuck.close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_stalled_readers_buffer_is_bounded_in_bytes():
    """10,000 events was the only bound: a stalled reader kept 150 MB of 100 KB events alive in a real `tail`
    (RSS 51 MB without a reader, 184 MB with one). Now at most BUFFER_BYTES; the rest is counted as lost."""
    hub = TapHub([])
    reader = Reader(None)
    hub.attach(reader)
    event = b"x" * (1 << 20)
    for _ in range(BUFFER_BYTES // len(event) + 8):
        hub.offer("segment", [(0, 0, 0, event)])  # type: ignore[list-item]
    held = sum(len(e) for _, events in reader.batches for e in events)
    assert held <= BUFFER_BYTES and reader.lost >= 8
    reader.take(0)  # taken: room again
    hub.offer("segment", [(0, 0, 0, event)])  # type: ignore[list-item]
    assert len(reader.batches) == 1


# -- status: a state directory it cannot read or make sense of -----------------------------------------------------
def unprivileged() -> list[str]:
    """A command prefix under which file modes hold for root too (no CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a mode-000 file would still be readable")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


def run_status(*args: str, prefix: list[str] | None = None) -> tuple[int, list[str], bytes]:
    done = subprocess.run([*(prefix or []), sys.executable, "-m", "shipper", "status", *args],
                          capture_output=True, env=ship_env(), timeout=60)
    return done.returncode, done.stderr.decode().splitlines(), done.stdout


def test_status_on_a_state_it_cannot_read_fails_in_one_line(tmp_path):
    """Unreadable or corrupt state: exit 1 (a failure), one line naming what; a permission problem is said as one,
    not as the corrupt file's "move it aside to start over" (which would throw every checkpoint away)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    checkpoints = state / "checkpoints-segment.json"
    checkpoints.write_bytes(orjson.dumps({"version": 1, "files": {}}))
    checkpoints.chmod(0)
    code, err, out = run_status("--state-dir", str(state), prefix=unprivileged())
    assert (code, len(err), out) == (1, 1, b""), err
    assert f"cannot read the checkpoint file {checkpoints}: Permission denied" in err[0]
    assert "move it aside" not in err[0]
    checkpoints.chmod(0o600)
    state.chmod(0)
    try:
        code, err, out = run_status("--state-dir", str(state), "--json", prefix=unprivileged())
    finally:
        state.chmod(0o700)
    assert (code, len(err), out) == (1, 1, b""), err
    assert f"cannot read {state}: Permission denied" in err[0]
    checkpoints.write_bytes(b"{not json")
    code, err, out = run_status("--state-dir", str(state))
    assert (code, len(err), out) == (1, 1, b""), err
    assert str(checkpoints) in err[0] and "Traceback" not in err[0]
    code, err, _ = run_status("--state-dir", str(tmp_path / "missing"))  # a wrong flag: usage
    assert (code, len(err)) == (2, 1) and "does not exist" in err[0]


# -- init: what is at the target ------------------------------------------------------------------------------------
def test_init_force_replaces_a_symlink_rather_than_writing_through_it(tmp_path):
    """`init --force FILE` where FILE is a symlink rewrote the link's target (any file root can write) with the
    example configuration and made it 0600; a FIFO there hung the command. Now the link itself is replaced."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    link = tmp_path / "kong-ship.toml"
    link.symlink_to(victim)
    refused = ship("init", str(link))
    assert refused.returncode == 2 and b"exists: not replaced" in refused.stderr
    assert ship("init", "--force", str(link)).returncode == 0
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o600
    assert "[sinks" in link.read_text() or "[input]" in link.read_text()
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert ship("init", "--force", str(fifo), timeout=20).returncode == 0
    assert fifo.is_file() and stat.S_IMODE(fifo.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.toml", "kong-ship.toml", "victim"]  # no temp left
