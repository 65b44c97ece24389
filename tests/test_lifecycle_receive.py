"""The lifecycle of the spool-fed commands and of the final checkpoint save under real signals and real processes
(a real `kong-ship` against the fake Segment on loopback, every record with a seq of its own and the set that
arrived checked): `receive` stopped by SIGTERM/SIGINT while clients post (a body half sent, the spool being
written, the pipeline shipping), forced by a second SIGTERM, killed with -9 and started again; `audit tail`
stopped mid-poll and mid-shipping, killed and started again; SIGHUP to `tail` at a rename rotation; SIGTERM to
`tail` and `backfill` while they save their last checkpoints."""

from __future__ import annotations

import collections
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import orjson
import pytest

import gen
from conftest import FAST, ship_env, wait_until
from fakes.segment import FakeSegment
from receiving import accepts, free_port

TOKEN = "http-log-token-lifecycle"
ENV = ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_HTTP_LOG_TOKEN=TOKEN)
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def counts(fake: FakeSegment) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in list(fake.messages))


def no_traceback(text: str) -> str:
    assert "Traceback" not in text, text[-3000:]
    return text


class Receive:
    """`python -m shipper receive` in its own process group (as systemd runs it), stderr to a file; started
    once its HTTP port accepts."""

    def __init__(self, tmp_path, fake: FakeSegment, *more: str, port: int | None = None):
        self.port = port or free_port()
        self.state = tmp_path / "state"
        self.err_path = tmp_path / f"receive-{time.monotonic_ns()}.txt"
        argv = [sys.executable, "-m", "shipper", "receive", "--listen", f"127.0.0.1:{self.port}", "--sink", "segment",
                "--endpoint", fake.url, "--state-dir", str(self.state), *FAST, *more]  # fmt: skip
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=ENV, start_new_session=True)
        assert wait_until(lambda: self.proc.poll() is not None or accepts(self.port), timeout=20), self.stderr()
        assert self.proc.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        return code, no_traceback(self.stderr())

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def receivers():
    started: list[Receive] = []

    def start(*args, **kw) -> Receive:
        rx = Receive(*args, **kw)
        started.append(rx)
        return rx

    yield start
    for rx in started:
        rx.kill()


def http_log_body(seqs) -> bytes:
    return orjson.dumps([gen.kong_record(s) for s in seqs])


def request_bytes(body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    return (f"POST /http-log HTTP/1.1\r\nHost: kong-ship\r\n{head}Content-Length: {len(body)}\r\n\r\n").encode() + body


class Posters:
    """Clients posting one record a request on keep-alive connections, each seq once, until told to stop or
    refused; `answers` maps each seq to the status it got (None: no answer, the connection failed)."""

    def __init__(self, port: int, clients: int = 4, per_request: int = 1):
        self.port = port
        self.per_request = per_request
        self.answers: dict[int, int | None] = {}
        self.stop = threading.Event()
        self._next = iter(range(10**9))
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _seqs(self) -> list[int]:
        with self._lock:
            return [next(self._next) for _ in range(self.per_request)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        while not self.stop.is_set():
            seqs = self._seqs()
            status: int | None = None
            try:
                conn.request("POST", "/http-log", body=http_log_body(seqs), headers=HEADERS)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            with self._lock:
                for s in seqs:
                    self.answers[s] = status
            if status is None or status != 200:
                if not accepts(self.port):
                    break
        conn.close()

    def accepted(self) -> set[int]:
        with self._lock:
            return {s for s, status in self.answers.items() if status == 200}

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive()


def half_sent(port: int, seq: int) -> tuple[socket.socket, bytes]:
    """A connection that sent its headers and half of a body; the rest to send."""
    data = request_bytes(http_log_body([seq]))
    cut = len(data) - len(http_log_body([seq])) // 2
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(data[:cut])
    return sock, data[cut:]


def answer_of(sock: socket.socket, rest: bytes) -> int | None:
    """Send the rest of the body, read the status; None when the connection failed or closed unanswered."""
    try:
        sock.sendall(rest)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            reply += chunk
        return int(reply.split(b" ", 2)[1])
    except OSError:
        return None
    finally:
        sock.close()


def left_behind(state) -> list[str]:
    """Files a stopped receive must not leave: temp files of the checkpoint saves."""
    return sorted(str(p) for p in state.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name)


# -- receive: stopped while clients post ---------------------------------------------------------------------------
HALF = 10**8  # the seq of the body half sent when the stop comes


class Gate:
    """Cleared, it holds every request at a fake (answered once it is set again); `held` counts those waiting:
    a stop waiting on a delivery or a poll is held there while the test looks at it."""

    def __init__(self, fake) -> None:
        self.opened = threading.Event()
        self.opened.set()
        self.held = 0
        self._lock = threading.Lock()
        respond = fake.respond

        def held(req):
            with self._lock:
                self.held += 1
            try:
                self.opened.wait(60)
                return respond(req)
            finally:
                with self._lock:
                    self.held -= 1

        fake.respond = held

    def close(self) -> None:
        self.opened.clear()

    def open(self) -> None:
        self.opened.set()


EXIT = {"sigterm": 0, "sigint-group": 0, "forced": 128 + signal.SIGTERM, "kill-9": -signal.SIGKILL}


@pytest.mark.parametrize("how", list(EXIT))
def test_receive_stopped_while_clients_post_ships_every_accepted_record(tmp_path, receivers, how):
    """Clients post (keep-alive, 10 records a request: the spool is being written) while the pipeline ships; one
    client has sent half a body. The stop (SIGTERM, SIGINT to the group, a second SIGTERM, kill -9) while the
    vendor holds what is in flight: the listener stops accepting, and the rest of the half-sent body, sent then, is
    answered 503 (a record spooled after the stop would wait for the next start; the client retries it), never
    200; exit code as the README says, no error line. A restart on the same state directory ships the rest: every
    record that got a 200 arrives; twice only after a forced stop or a kill -9, and then only one the vendor
    already had before (in flight)."""
    with FakeSegment() as fake:
        vendor = Gate(fake)
        rx = receivers(tmp_path, fake, "--shutdown-timeout", "20", "--batch-size", "20")
        posters = Posters(rx.port, per_request=10)
        fake.wait_for(lambda: len(fake.messages) >= 60, timeout=30)
        sock, rest = half_sent(rx.port, HALF)
        vendor.close()
        if how == "kill-9":
            os.killpg(rx.proc.pid, signal.SIGKILL)
        else:
            rx.proc.send_signal(signal.SIGTERM) if how != "sigint-group" else os.killpg(rx.proc.pid, signal.SIGINT)
            assert wait_until(lambda: "stopping" in rx.stderr() and not accepts(rx.port), timeout=20), rx.stderr()
        half = answer_of(sock, rest)
        if how == "forced":
            rx.proc.send_signal(signal.SIGTERM)
        vendor.open()
        code, err = rx.wait()
        posters.join()
        assert code == EXIT[how], err[-3000:]
        assert half == (None if how == "kill-9" else 503)
        assert not accepts(rx.port)
        accepted = posters.accepted()
        assert wait_until(lambda: vendor.held == 0, timeout=20)  # what was in flight arrived
        first = counts(fake)
        fake.clear_script()
        again = receivers(tmp_path, fake, port=rx.port)
        fake.wait_for(lambda: accepted <= set(counts(fake)), timeout=30,
                      what=f"{sorted(accepted - set(counts(fake)))[:10]} accepted and not shipped")
        again.proc.send_signal(signal.SIGTERM)
        code2, _ = again.wait()
        assert code2 == 0
    got = counts(fake)
    doubled = {s for s, n in got.items() if n > 1}
    assert set(got) <= set(posters.answers)
    if how in ("sigterm", "sigint-group"):
        assert not doubled, sorted(doubled)[:20]
    else:
        assert doubled <= set(first), sorted(doubled - set(first))[:20]
    assert not left_behind(rx.state)
    if how != "kill-9":
        assert err.count("stopping") == 1 and "received" in err and "ERROR" not in err, err[-3000:]


# -- audit tail: stopped mid-poll, mid-shipping, killed ---------------------------------------------------------------
T0 = 1_763_800_000


def audit_ids(records) -> set[str]:
    return {f"kong-audit-request-{r['request_id']}" for r in records}


class AuditTail:
    def __init__(self, tmp_path, admin, fake: FakeSegment):
        token = tmp_path / "admin-token"
        token.write_text("admin-token")
        self.err_path = tmp_path / f"audit-{time.monotonic_ns()}.txt"
        argv = [sys.executable, "-m", "shipper", "audit", "tail", "--admin-url", admin.url, "--admin-token-file",
                str(token), "--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"),
                "--interval", "0.1", "--page-size", "5", "--batch-size", "5", *FAST]  # fmt: skip
        environ = {k: v for k, v in ENV.items() if k not in ("KONG_ADMIN_TOKEN", "KONG_ADMIN_URL")}
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=environ,
                                         start_new_session=True)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.mark.parametrize("how", ["sigterm-mid-poll", "sigterm-mid-shipping", "kill-9"])
def test_audit_tail_stopped_then_restarted_ships_every_record(tmp_path, how):
    """`audit tail` polling a live Admin API: SIGTERM while a poll waits on the Admin API (exit 0, within the
    poll's stop wait), SIGTERM while deliveries wait on the vendor (exit 0 once delivered), or kill -9. Started
    again, every audit record arrives: once after a SIGTERM; after a kill -9 twice only if the vendor already had
    it before (the cursor never passes what is spooled, the checkpoints never what is acknowledged)."""
    from fakes.kong_admin import FakeKongAdmin

    started: list[AuditTail] = []
    with FakeKongAdmin("admin-token") as admin, FakeSegment() as fake:
        try:
            records = [admin.add_request(T0 + i, signed=False) for i in range(40)]
            vendor, kong = Gate(fake), Gate(admin)
            tail = AuditTail(tmp_path, admin, fake)
            started.append(tail)
            fake.wait_for(lambda: len(fake.messages) >= 20, timeout=30)
            held = kong if how == "sigterm-mid-poll" else vendor
            held.close()
            records += [admin.add_request(T0 + 100 + i, signed=False) for i in range(20)]
            assert wait_until(lambda: held.held > 0, timeout=20)
            if how == "kill-9":
                tail.kill()
            else:
                tail.proc.send_signal(signal.SIGTERM)
                if how == "sigterm-mid-shipping":
                    assert wait_until(lambda: "stopping" in tail.stderr(), timeout=20), tail.stderr()
                    held.open()
                code = tail.proc.wait(30)
                err = no_traceback(tail.stderr())
                assert code == 0, err[-3000:]
                assert err.count("stopping") == 1 and "ERROR" not in err, err[-3000:]
            held.open()
            assert wait_until(lambda: vendor.held == 0 and kong.held == 0, timeout=20)  # what was in flight arrived
            first = collections.Counter(fake.message_ids())
            assert set(first) <= audit_ids(records)
            records += [admin.add_request(T0 + 200 + i, signed=False) for i in range(10)]
            again = AuditTail(tmp_path, admin, fake)
            started.append(again)
            fake.wait_for(lambda: audit_ids(records) <= set(fake.message_ids()), timeout=30,
                          what="every audit record")
            again.proc.send_signal(signal.SIGTERM)
            assert again.proc.wait(30) == 0, again.stderr()[-3000:]
        finally:
            for t in started:
                t.kill()
        got = collections.Counter(fake.message_ids())
    doubled = {i for i, n in got.items() if n > 1}
    assert set(got) == audit_ids(records)
    if how == "kill-9":
        assert doubled <= set(first)
    else:
        assert not doubled, sorted(doubled)[:10]


# -- tail: SIGHUP at a rename rotation ---------------------------------------------------------------------------------
@pytest.fixture
def tails():
    from tailrun import tail_starter

    yield from tail_starter()


def test_sighup_at_each_rename_rotation_ships_every_record_once(tmp_path, tails):
    """logrotate's `create` and its postrotate SIGHUP, five times: the writer still appends to the renamed file
    after the rename and the SIGHUP, then moves to the new one. Every record once."""
    from tailrun import arrived, exactly_once

    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    with FakeSegment() as fake:
        tail = tails(tmp_path, fake, tmp_path / "kong.json*")
        arrived(fake, 20)
        seq = 20
        for n in range(5):
            old = os.open(log, os.O_WRONLY | os.O_APPEND)  # the writer's descriptor, kept over the rename
            try:
                for s in range(seq, seq + 10):
                    os.write(old, gen.kong_line(gen.kong_record(s)))
                os.rename(log, tmp_path / f"kong.json.{n}")
                tail.proc.send_signal(signal.SIGHUP)
                for s in range(seq + 10, seq + 20):
                    os.write(old, gen.kong_line(gen.kong_record(s)))
            finally:
                os.close(old)
            gen.write_records(log, range(seq + 20, seq + 30))
            seq += 30
            assert wait_until(lambda: tail.stderr().count("SIGHUP") == n + 1, timeout=20)
        arrived(fake, seq)
        err = tail.stop()
        exactly_once(fake, range(seq))
    assert err.count("SIGHUP") == 5


# -- tail and backfill: SIGTERM during the final checkpoint save -------------------------------------------------------
def test_signals_during_the_final_checkpoint_save_leave_them_whole(tmp_path):
    """A backfill of 400 files (a checkpoint file of 400 entries, saved at the end) stopped by SIGTERM, then
    SIGTERM after SIGTERM while it stops and saves: exit 143 or 0, no traceback, a checkpoint file that reads (or
    whose previous copy recovers it); the re-run ships every record not acknowledged before, none twice that was."""
    from blockrun import args, env

    logs = tmp_path / "logs"
    logs.mkdir()
    for f in range(400):
        gen.write_records(logs / f"kong-{f:03d}.json", range(f * 3, f * 3 + 3))
    seqs = range(1200)
    with FakeSegment() as fake:
        vendor = Gate(fake)
        argv = [sys.executable, "-m", "shipper", "backfill", str(logs / "*.json"),
                *args(fake, tmp_path, "state", "--batch-size", "50")]
        err_path = tmp_path / "backfill.txt"
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env(20_000), start_new_session=True)
        try:
            fake.wait_for(lambda: len(fake.messages) >= 300, timeout=30)
            vendor.close()
            assert wait_until(lambda: vendor.held > 0, timeout=20)
            proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: "stopping" in err_path.read_text(), timeout=20)
            vendor.open()
            while proc.poll() is None:  # a signal after the first, again and again, through the final save
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.001)
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        text = no_traceback(err_path.read_text())
        # 143 (forced), 0 (done before the second was taken), or ended by SIGTERM itself once the run gave the
        # handlers back (after the final save, at the summary): what a shell shows as 143 too
        assert code in (0, 128 + signal.SIGTERM, -signal.SIGTERM), text[-3000:]
        assert wait_until(lambda: vendor.held == 0, timeout=20)
        first = counts(fake)
        saved = orjson.loads((tmp_path / "state" / "checkpoints-segment.json").read_bytes())
        assert saved["files"]
        assert not left_behind(tmp_path / "state")
        again = subprocess.run(argv, capture_output=True, env=env(20_000), timeout=60)
        assert again.returncode == 0, again.stderr.decode()[-3000:]
        got = counts(fake)
    assert set(got) == set(seqs)
    doubled = {s for s, n in got.items() if n > 1}
    assert doubled <= set(first)
