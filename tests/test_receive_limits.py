"""`kong-ship receive` at its edges, as a real process: stalled and too many connections, a burst of connects,
bodies nested too deep, the operator's warnings, and a full disk under the spool (a real tmpfs)."""

from __future__ import annotations

import os
import socket
import time

import orjson

from conftest import FAST, wait_until
from fakes.webhook import FakeWebhook
from mounts import fill, tmpfs
from test_receive import ENV, Receive, delivered, free_port, kong_event


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stalled(port: int, length: int = 1 << 20, sent: int = 1000) -> socket.socket:
    """A client that announces a body, sends a little of it and stops."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /hooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % length + b"[" + b" " * (sent - 1))  # fmt: skip
    return sock


def answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sent before closing (b"" when it closed without an answer)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_stalled_unauthenticated_connections_are_bounded_and_timed_out(shippers, tmp_path):
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake, "--max-connections", "20", "--read-timeout", "1")
        pid = rx.proc.proc.pid
        before = vm_rss_kib(pid)
        socks = [stalled(rx.port) for _ in range(200)]
        time.sleep(0.5)
        grown_mib = (vm_rss_kib(pid) - before) / 1024
        answers = [answer(s, timeout=10) for s in socks]
        for s in socks:
            s.close()
        assert grown_mib < 48, f"RSS grew by {grown_mib:.0f} MiB for 200 stalled connections"
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert len(refused) >= 180, f"{len(refused)} of 200 refused"  # 20 at most were let in
        assert all(b"Retry-After" in a for a in refused)
        # A well-formed answer: its Content-Length is the body's.
        head, _, body = refused[0].partition(b"\r\n\r\n")
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        assert len(body) == length and orjson.loads(body)["error"]
        # Those let in were disconnected after --read-timeout: all 200 sockets are closed by now.
        assert rx.post(kong_event(1)).status_code == 200
        fake.wait_for(lambda: sorted(delivered(fake)) == [1], timeout=10)


def test_a_burst_of_connections_is_accepted_at_once(shippers, tmp_path):
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake, "--max-connections", "500")
        started = time.monotonic()
        socks = []
        for _ in range(400):
            sock = socket.socket()
            sock.settimeout(20)
            sock.connect(("127.0.0.1", rx.port))
            socks.append(sock)
        took = time.monotonic() - started
        for s in socks:
            s.close()
        # With the stdlib's listen backlog of 5 this took a minute (SYN retransmits); now it is immediate.
        assert took < 10, f"400 connects took {took:.1f} s"


def test_too_deep_a_body_is_400_and_the_receiver_goes_on(shippers, tmp_path):
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        for depth in (300, 1000):
            body = b'{"n": 5, "deep": ' + b"[" * depth + b"]" * depth + b"}"
            response = rx.post(None, body=body)
            assert response.status_code == 400 and "deep" in response.json()["error"]
        assert rx.post(kong_event(1)).status_code == 200
        fake.wait_for(lambda: sorted(delivered(fake)) == [1], timeout=10)


def test_event_hook_bodies_of_tiny_objects_are_413_and_nothing_of_them_is_stored(shippers, tmp_path):
    """Signed, so past every check but their weight: 1 MiB of `{}` (349,525 events, +150 MiB of RSS) and
    4,097 small events are refused whole; the events around them ship, each once."""
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        assert rx.post(kong_event(1)).status_code == 200
        for body in (b"[" + b"{}," * 349_000 + b"{}]", b"[" + b",".join(b'{"n":%d}' % n for n in range(4097)) + b"]"):
            response = rx.post(None, body=body)
            assert response.status_code == 413, response.text
            assert "nothing of this request was stored" in response.json()["error"]
        assert rx.post([kong_event(2), kong_event(3)]).status_code == 200
        fake.wait_for(lambda: sorted(delivered(fake)) == [1, 2, 3], timeout=10)
        code, _, err = rx.proc.stop()
        assert code == 0 and "Traceback" not in err, err
        assert delivered(fake) == {1: 1, 2: 1, 3: 1}


def test_refused_signatures_are_warned_and_listen_everywhere_is_said(shippers, tmp_path):
    with FakeWebhook() as fake:
        port = free_port()
        proc = shippers("receive", "--listen", f":{port}", "--sink", "webhook", "--endpoint", fake.url,
                        "--state-dir", str(tmp_path / "state"), *FAST, env=ENV)  # fmt: skip
        rx = Receive.__new__(Receive)
        rx.port, rx.url, rx.proc = port, f"http://127.0.0.1:{port}/hooks", proc
        import httpx

        rx.client = httpx.Client(timeout=10)
        assert wait_until(rx._listening, timeout=20) and proc.proc.poll() is None
        assert rx.post(kong_event(1), secret="wrong").status_code == 401
        code, _, err = proc.stop()
        assert code == 0, err
        assert "Logging error" not in err and "Traceback" not in err, err
        assert "refused a delivery from 127.0.0.1: bad x-kong-signature" in err, err
        assert "EVERY address" in err, err


def test_a_delivery_refused_on_a_full_disk_is_never_shipped(shippers, tmp_path):
    with FakeWebhook() as fake, tmpfs(tmp_path / "small", "1m") as state:
        rx = Receive(shippers, tmp_path, fake, "--state-dir", state)
        assert rx.post(kong_event(1)).status_code == 200
        fake.wait_for(lambda: sorted(delivered(fake)) == [1], timeout=10)
        filler = fill(state, leave=4096)
        for n in (2, 4):
            response = rx.post(kong_event(n, padding="x" * 40_000))
            assert response.status_code == 503, response.text
        os.unlink(filler)
        assert rx.post(kong_event(3)).status_code == 200
        fake.wait_for(lambda: 3 in delivered(fake), timeout=10)
        code, _, err = rx.proc.stop()
        assert code == 0, err
        assert sorted(delivered(fake)) == [1, 3]  # the refused ones stayed refused
        assert err.count("cannot write the spool (No space left on device)") == 1, err
        assert "spool is written again" in err
        spooled = b"".join(
            open(os.path.join(state, "receive", name), "rb").read()
            for name in os.listdir(os.path.join(state, "receive")) if name.startswith("spool-")
        )
        assert all(orjson.loads(line)["record"]["n"] in (1, 3) for line in spooled.splitlines())


def test_a_client_trickling_its_headers_is_cut_off_at_the_read_timeout(shippers, tmp_path):
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake, "--read-timeout", "1")
        sock = socket.create_connection(("127.0.0.1", rx.port), timeout=5)
        sock.sendall(b"POST /hooks HTTP/1.1\r\n")
        started, closed = time.monotonic(), False
        try:
            while time.monotonic() - started < 6:  # a byte every 0.2 s: no single wait reaches the timeout
                sock.sendall(b"X")
                sock.settimeout(0.2)
                try:
                    if sock.recv(1024) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        finally:
            sock.close()
        assert closed, "a trickling client held its connection for 6 s with --read-timeout 1"
        assert rx.post(kong_event(1)).status_code == 200
