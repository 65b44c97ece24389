"""`kong-ship receive` against hostile clients, as a real process on loopback with raw sockets: malformed and
smuggling-shaped HTTP requests (a Content-Length with Transfer-Encoding, chunked bodies with bad sizes, a header
line without a colon, huge header lines, too many headers, a body cut short, gzip, invalid UTF-8 and NULs,
pipelined requests, HTTP/1.0, `Expect: 100-continue`), slowloris on headers and bodies while a good client is
served, tcp-log and udp-log garbage, and running out of file descriptors. After each: the receiver still
answers, every good record reaches the fake Segment exactly once, its memory stays bounded, and its stderr
holds no traceback and its exit is 0."""

from __future__ import annotations

import collections
import gzip
import hashlib
import hmac
import os
import resource
import socket
import threading
import time
import urllib.request

import gen
import orjson

from conftest import FAST, ship_env, wait_until
from fakes.segment import FakeSegment
from receiving import free_port, start_receive
from test_receive_limits import answer

TOKEN = "hostile-http-log-token-3b9d"
ENV = ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_HTTP_LOG_TOKEN=TOKEN)


def vm_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for row in handle:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def shipped(fake: FakeSegment) -> collections.Counter:
    with fake._lock:
        return collections.Counter(gen.seq_of_segment_message(m) for m in fake.messages)


class Hostile:
    """A running `kong-ship receive` with http-log (a token), tcp-log and udp-log listeners, shipping to `fake`."""

    def __init__(self, shippers, tmp_path, fake, *more):
        self.port, self.tcp_port = free_port(), free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.state = tmp_path / "state"
        self.proc = start_receive(shippers, [
            "--listen-udp", f"127.0.0.1:{self.udp_port}", "--listen-tcp", f"127.0.0.1:{self.tcp_port}",
            "--listen", f"127.0.0.1:{self.port}", "--sink", "segment", "--endpoint", fake.url,
            "--state-dir", str(self.state), *FAST, *more,
        ], ENV, self.port)
        self.pid = self.proc.proc.pid

    def exchange(self, data: bytes, *, shut: bool = False, timeout: float = 10) -> bytes:
        """Send raw bytes on a new connection; everything answered until the server closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
            return read_all(sock)

    def good(self, seq: int) -> None:
        answer = self.exchange(request(orjson.dumps(gen.kong_record(seq)), b"Connection: close\r\n"))
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"accepted":1}'), answer

    def dead_letter_reasons(self) -> list[str]:
        path = self.state / "receive" / "dead-letter.jsonl"
        return [orjson.loads(raw)["reason"] for raw in path.read_bytes().splitlines()] if path.exists() else []

    def stop_cleanly(self) -> str:
        code, _, err = self.proc.stop()
        assert code == 0, err
        assert "Traceback" not in err and "Logging error" not in err, err
        return err


def read_all(sock: socket.socket) -> bytes:
    """All the server sends until it closes, within the socket's own timeout."""
    return answer(sock, sock.gettimeout() or 60.0)


def request(body: bytes, extra: bytes = b"", *, length: bool = True, version: bytes = b"HTTP/1.1",
            auth: bytes = TOKEN.encode()) -> bytes:
    """An http-log request as Kong sends it, with `extra` header lines (each ending in CRLF) after the others."""
    head = (b"POST /http-log " + version + b"\r\nHost: kong-ship\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + auth + b"\r\n")  # fmt: skip
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def record(seq: int) -> bytes:
    return orjson.dumps(gen.kong_record(seq))


def test_malformed_requests_are_refused_and_the_good_ones_around_them_ship_exactly_once(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake)
        before = vm_rss_mib(rx.pid)
        close = b"Connection: close\r\n"
        refused = {
            # Smuggling shapes: a Content-Length and Transfer-Encoding together, chunked with a bad size and a
            # huge chunk extension. Chunked is never read: 411, and the connection closed.
            "cl+te": (request(record(901), b"Transfer-Encoding: chunked\r\n"), 411),
            "bad chunk": (request(b"zzzz;" + b"e" * 100_000 + b"\r\n", b"Transfer-Encoding: chunked\r\n",
                                  length=False), 411),
            "negative length": (request(b"{}", b"Content-Length: -1\r\n", length=False), 400),  # not 1*DIGIT
            "huge length": (request(b"{}", b"Content-Length: " + b"9" * 40 + b"\r\n", length=False), 413),
            # A line without a colon first: what follows is not read as headers (no token seen).
            "no colon": (b"POST /http-log HTTP/1.1\r\nno colon here\r\n" + request(record(902))[25:], 401),
            "long header line": (b"POST /http-log HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
            "too many headers": (b"POST /http-log HTTP/1.1\r\n" + b"X-A: a\r\n" * 200 + b"\r\n", 431),
            "long target": (b"POST /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
            "gzip body": (request(gzip.compress(record(903)), b"Content-Encoding: gzip\r\n" + close), 400),
            "invalid utf-8": (request(b'{"request": {"uri": "/?seq=904&x=\xff\xfe"}}', close), 400),
            "raw NUL": (request(b'{"request": {"uri": "/?seq=905&x=\x00"}}', close), 400),
            "lone surrogate": (request(b'{"request": {"uri": "/?seq=906&x=\\ud800"}}', close), 400),
            "too deep": (request(b"[" * 2_000 + b"]" * 2_000, close), 400),  # over orjson's 1,024 levels
            "too many arrays": (request(b"[" * 100_000 + b"]" * 100_000, close), 413),  # counted before parsing
            "not an object": (request(b"[" + record(907) + b", 1]", close), 400),
        }
        answers = {name: rx.exchange(data) for name, (data, _) in refused.items()}
        assert {name: status(a) for name, a in answers.items()} == {name: s for name, (_, s) in refused.items()}
        # Bytes that are not HTTP (a TLS ClientHello to the plain port): refused, nothing more.
        assert b"400" in rx.exchange(b"\x16\x03\x01\x00\xff\x01\x00\x00\xfb\x03\x03" + b"\x00" * 300 + b"\r\n\r\n")
        # A body shorter than its Content-Length, then the close: no answer, nothing stored.
        cut = record(908)
        assert rx.exchange(request(cut[:-10], b"Content-Length: %d\r\n" % len(cut), length=False), shut=True) == b""

        rx.good(1)
        # HTTP/1.0 without keep-alive: answered, then closed by the server (read_all returns).
        assert status(rx.exchange(request(record(2), version=b"HTTP/1.0"))) == 200
        # Expect: 100-continue: the interim answer, then the final one.
        expect = rx.exchange(request(record(3), b"Expect: 100-continue\r\n" + close))
        assert expect.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), expect
        # Three requests pipelined in one write: three answers, in order, each record once.
        pipelined = rx.exchange(request(record(4)) + request(record(5)) + request(record(6), close))
        assert pipelined.count(b"HTTP/1.1 200 OK") == 3 and pipelined.count(b'{"accepted":1}') == 3, pipelined
        # An escaped NUL is valid JSON: stored and shipped.
        nul = gen.kong_record(7)
        nul["request"]["headers"]["x-nul"] = "a\x00b"
        assert status(rx.exchange(request(orjson.dumps(nul), close))) == 200
        rx.good(8)

        good = set(range(1, 9))
        fake.wait_for(lambda: set(shipped(fake)) >= good, timeout=20)
        assert vm_rss_mib(rx.pid) - before < 100
        rx.stop_cleanly()
        assert shipped(fake) == collections.Counter(good)  # none of 901-908, and each good one once


def trickle(port: int, data: bytes, stop: threading.Event, cut: list[bool]) -> None:
    """Send `data` a byte every 0.2 s until the server cuts the connection (recorded in `cut`) or `stop`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for byte in data:
                if stop.wait(0.2):
                    return
                sock.sendall(bytes([byte]))
    except OSError:
        cut.append(True)


def test_slowloris_on_headers_and_bodies_is_cut_off_while_a_good_client_is_served(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake, "--read-timeout", "1", "--max-connections", "64")
        stop, cut = threading.Event(), []
        slow_headers = request(record(990))
        slow_body = request(record(991))
        attackers = [threading.Thread(target=trickle, args=(rx.port, slow_headers, stop, cut)) for _ in range(20)]
        attackers += [threading.Thread(target=trickle, args=(rx.port, slow_body[:len(slow_body) - 400], stop, cut))
                      for _ in range(20)]
        for t in attackers:
            t.start()
        try:
            time.sleep(0.5)  # all 40 trickling
            for seq in range(1, 6):  # served while they trickle (slots are left: no 503)
                rx.good(seq)
            # Each is cut at its read timeout (1 s; the watchdog looks every 0.25 s): all 40 well within 10 s.
            assert wait_until(lambda: len(cut) == len(attackers), timeout=10), f"{len(cut)} of {len(attackers)} cut"
        finally:
            stop.set()
            for t in attackers:
                t.join(10)
        rx.good(6)
        fake.wait_for(lambda: set(shipped(fake)) >= set(range(1, 7)), timeout=20)
        rx.stop_cleanly()
        assert shipped(fake) == collections.Counter(range(1, 7))


def tcp_line(seq: int) -> bytes:
    return record(seq) + b"\n"


def test_tcp_log_and_udp_log_garbage_costs_only_itself(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake)
        before = vm_rss_mib(rx.pid)
        # Idle connections held open meanwhile: they neither block the others nor cost much.
        idle = [socket.create_connection(("127.0.0.1", rx.tcp_port), timeout=10) for _ in range(200)]
        with socket.create_connection(("127.0.0.1", rx.tcp_port), timeout=10) as sock:
            sock.sendall(tcp_line(1) + record(2) + b"\r\n")  # LF and CRLF ends (Kong 0.11 sent CRLF)
            sock.sendall(b"\x00\xff\xfe garbage\n" + b"A" * (3 << 20) + b"\n" + tcp_line(3))  # 3 MiB: over the limit
            sock.sendall(b"{}" * 10 + b"\n" + tcp_line(4))
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""  # tcp-log never answers; its close says the records are durable
        with socket.create_connection(("127.0.0.1", rx.tcp_port), timeout=10) as sock:
            sock.sendall(b"B" * (2 << 20))  # megabytes and no newline, then the close
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(os.urandom(65507), ("127.0.0.1", rx.udp_port))  # the largest IPv4 datagram, random bytes
        udp.sendto(b"{" * 65000, ("127.0.0.1", rx.udp_port))
        udp.sendto(b"\x00" * 100, ("127.0.0.1", rx.udp_port))
        udp.sendto(record(5), ("127.0.0.1", rx.udp_port))
        udp.close()
        for sock in idle:
            sock.close()
        rx.good(6)
        fake.wait_for(lambda: set(shipped(fake)) >= set(range(1, 7)), timeout=20)
        assert wait_until(lambda: len(rx.dead_letter_reasons()) == 7, timeout=10), rx.dead_letter_reasons()
        reasons = collections.Counter(rx.dead_letter_reasons())
        assert reasons["too_long"] == 1 and reasons["unterminated"] == 1, reasons
        assert vm_rss_mib(rx.pid) - before < 100
        err = rx.stop_cleanly()
        assert shipped(fake) == collections.Counter(range(1, 7))
        assert "udp-log: received 1 records in 4 datagrams; 3 dead-lettered" in err, err


def test_running_out_of_file_descriptors_refuses_and_recovers(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake)
        rx.good(1)
        fake.wait_for(lambda: set(shipped(fake)) == {1}, timeout=20)
        # The receiver's own limit lowered under it: 200 connections cannot all be accepted.
        soft, hard = resource.prlimit(rx.pid, resource.RLIMIT_NOFILE)
        used = len(os.listdir(f"/proc/{rx.pid}/fd"))
        resource.prlimit(rx.pid, resource.RLIMIT_NOFILE, (used + 40, hard))
        flood = []
        for n in range(200):
            flood.append(socket.create_connection(("127.0.0.1", rx.tcp_port if n % 2 else rx.port), timeout=10))
        assert wait_until(lambda: len(os.listdir(f"/proc/{rx.pid}/fd")) >= used + 39, timeout=10)
        time.sleep(0.5)  # accepts failing with EMFILE meanwhile
        for sock in flood:
            sock.close()
        resource.prlimit(rx.pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert rx.proc.proc.poll() is None
        rx.good(2)
        with socket.create_connection(("127.0.0.1", rx.tcp_port), timeout=10) as sock:
            sock.sendall(tcp_line(3))
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""
        fake.wait_for(lambda: set(shipped(fake)) == {1, 2, 3}, timeout=20)
        rx.stop_cleanly()
        assert shipped(fake) == collections.Counter({1: 1, 2: 1, 3: 1})


def served_hog(port: int) -> socket.socket:
    """A kept-alive connection holding the receiver's only slot: its first request answered 200 (record 2)."""
    def connect() -> socket.socket | None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request(record(2)))
        answer = b""
        while not answer.endswith(b"}") and (chunk := sock.recv(4096)):
            answer += chunk
        if status(answer) == 200:
            return sock
        sock.close()  # 503: the start-up check's connection still held the slot
        return None

    hog = wait_until(connect, timeout=10, interval=0.1)
    assert hog, "the only slot never came free"
    return hog


def test_a_client_pipelining_without_reading_the_answers_is_cut_off(shippers, tmp_path):
    with FakeSegment() as fake:
        # One slot: while the hog holds it, every other client is answered 503; it comes back only once the
        # receiver gives up on the hog.
        rx = Hostile(shippers, tmp_path, fake, "--read-timeout", "1", "--max-connections", "1")
        hog = served_hog(rx.port)
        empty = request(b"[]")  # answered {"accepted": 0}: nothing stored, only answers to write
        try:
            # Its answers fill both buffers (the receiver's autotuned send buffer grows to 4 MiB: seconds of
            # answers here), then the receiver's write blocks, for --read-timeout at most.
            started = time.monotonic()
            while time.monotonic() - started < 60:
                hog.sendall(empty * 200)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # reset by the receiver, or our sends block
            pass

        def served() -> bool:
            answer = rx.exchange(request(record(1), b"Connection: close\r\n"))
            assert status(answer) in (200, 503), answer
            return status(answer) == 200

        # The hog is still open and still not reading: the receiver let go of it by itself.
        assert wait_until(served, timeout=15, interval=0.2), "a client that never reads held the only slot"
        hog.close()
        fake.wait_for(lambda: set(shipped(fake)) == {1, 2}, timeout=20)
        rx.stop_cleanly()
        assert shipped(fake) == collections.Counter({1: 1, 2: 1})


def test_kill_9_under_attack_loses_no_answered_record_and_duplicates_none(shippers, tmp_path):
    with FakeSegment() as fake:
        fake.set_down(True)  # everything answered is still only in the spool at the crash
        rx = Hostile(shippers, tmp_path, fake)
        stop, cut = threading.Event(), []
        attackers = [threading.Thread(target=trickle, args=(rx.port, request(record(999)), stop, cut))
                     for _ in range(10)]
        for t in attackers:
            t.start()
        answered: list[int] = []
        # Pipelined on kept-alive connections, as Kong's workers send: each 200 read is a record made durable.
        with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as sock:
            for seq in range(1, 61):
                sock.sendall(request(record(seq)))
                head = b""
                while not head.endswith(b'{"accepted":1}'):
                    head += sock.recv(4096)
                answered.append(seq)
            sock.sendall(request(record(61))[:-20])  # mid-body at the crash: never answered
            rx.proc.kill9()
        stop.set()
        for t in attackers:
            t.join(10)
        fake.set_down(False)
        rx2 = start_receive(shippers, [
            "--listen", f"127.0.0.1:{rx.port}", "--sink", "segment", "--endpoint", fake.url,
            "--state-dir", str(rx.state), *FAST,
        ], ENV, rx.port)
        fake.wait_for(lambda: set(shipped(fake)) >= set(answered), timeout=30)
        time.sleep(0.3)  # a duplicate would arrive in the same batches or right after
        code, _, err = rx2.stop()
        assert code == 0 and "Traceback" not in err, err
        assert shipped(fake) == collections.Counter(answered)  # 61 (cut mid-body) and 999 (trickled) never stored


def test_tls_listeners_shrug_off_stalled_handshakes_and_plain_bytes(shippers, tmp_path):
    import ssl

    from fakes.tls import private_ca

    ca, cert, key = private_ca(tmp_path)
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake, "--tls-cert", str(cert), "--tls-key", str(key),
                     "--read-timeout", "1", "--max-connections", "20")
        # 30 connections that never start their handshake: 20 take every slot, 10 are over the cap.
        stalled = [socket.create_connection(("127.0.0.1", rx.port), timeout=10) for _ in range(30)]
        # Plain HTTP and megabytes of random bytes to both TLS ports: handshakes that fail, nothing stored.
        plain = [socket.create_connection(("127.0.0.1", port), timeout=10) for port in (rx.port, rx.tcp_port)]
        for sock in plain:
            try:
                sock.sendall(request(record(990)) + os.urandom(1 << 20) + b"\n" + tcp_line(991))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the receiver closed at the first bad record
        # Each stalled one is closed by the receiver (over the cap at once, the others at the read timeout),
        # and none is answered in plain text.
        answers = [read_all(sock) for sock in stalled + plain]
        assert not any(a.startswith(b"HTTP/") for a in answers), answers
        for sock in stalled + plain:
            sock.close()
        context = ssl.create_default_context(cafile=str(ca))
        with context.wrap_socket(socket.create_connection(("127.0.0.1", rx.port), timeout=10),
                                 server_hostname="127.0.0.1") as tls:
            tls.sendall(request(record(1), b"Connection: close\r\n"))
            assert status(read_all(tls)) == 200
        with context.wrap_socket(socket.create_connection(("127.0.0.1", rx.tcp_port), timeout=10),
                                 server_hostname="127.0.0.1") as tls:
            tls.sendall(tcp_line(2))
        fake.wait_for(lambda: set(shipped(fake)) >= {1, 2}, timeout=20)
        err = rx.stop_cleanly()
        assert "failed TLS handshakes" in err, err
        assert shipped(fake) == collections.Counter({1: 1, 2: 1})


class PeakRss:
    """The highest VmRSS of `pid` seen (every 20 ms) until `done()`."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, vm_rss_mib(pid), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, vm_rss_mib(self.pid))
            except (OSError, AssertionError):
                return

    def done(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def test_header_floods_without_credentials_are_431_and_keep_memory_bounded(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake, "--read-timeout", "3")
        before = vm_rss_mib(rx.pid)
        watch = PeakRss(rx.pid)

        def flood() -> None:  # no token, no Content-Length: 99 lines of 65,000 bytes (the stdlib allowed 100)
            try:
                with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as sock:
                    sock.sendall(b"POST /http-log HTTP/1.1\r\n")
                    for i in range(99):
                        sock.sendall(b"X-%d: " % i + b"a" * 65000 + b"\r\n")
            except OSError:
                pass  # cut off once over the bound

        threads = [threading.Thread(target=flood) for _ in range(60)]  # under --max-connections 64
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        grown = watch.done() - before
        assert grown < 100, f"60 connections sending header lines grew RSS by {grown:.0f} MiB"  # was 364-1,232
        # Over 64 KiB of header lines in all, however split: 431 and closed (and read by the client).
        many = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 4000) for i in range(17))
        assert status(rx.exchange(request(record(900), many))) == 431
        assert status(rx.exchange(request(record(901), b"X-Big: %s\r\n" % (b"c" * 40000) * 2))) == 431
        rx.good(1)  # 60 KiB of header lines in all still pass
        assert status(rx.exchange(request(record(2), b"".join(b"X-%d: %s\r\n" % (i, b"d" * 4000)
                                                              for i in range(15)) + b"Connection: close\r\n"))) == 200
        fake.wait_for(lambda: set(shipped(fake)) >= {1, 2}, timeout=20)
        rx.stop_cleanly()
        assert shipped(fake) == collections.Counter({1: 1, 2: 1})


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the highest RSS since the start, or since `reset_peak_rss`."""
    with open(f"/proc/{pid}/status") as handle:
        return next(int(row.split()[1]) / 1024 for row in handle if row.startswith("VmHWM:"))


def reset_peak_rss(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")


def tiny_kong_record(seq: int) -> bytes:
    """About the smallest record Kong's serializer writes (a real one weighs 1-3 KB)."""
    return orjson.dumps({
        "request": {"uri": f"/?seq={seq}", "url": f"http://k/?seq={seq}", "querystring": {"seq": str(seq)},
                    "method": "GET", "headers": {"host": "k"}, "size": 60},
        "upstream_uri": "/", "response": {"status": 200, "headers": {}, "size": 80}, "tries": [],
        "latencies": {"kong": 0, "proxy": 1, "request": 1, "receive": 0}, "client_ip": "10.0.0.1",
        "started_at": 1700000000000, "source": "upstream"})


def filled(unit: bytes, size: int = (1 << 20) - 300, head: bytes = b"[", tail: bytes = b"]") -> bytes:
    """A body of `size` bytes or just under: `unit` repeated (each ends in a comma) between `head` and `tail`."""
    return head + (unit * ((size - len(head) - len(tail)) // len(unit)))[:-1] + tail


def test_bodies_of_tiny_json_values_are_refused_before_they_weigh_a_hundred_times_their_size(shippers, tmp_path):
    """1 MiB of `{}` was 349,525 records, each a dict and a spooled line held until the fsync: RSS grew by
    150 MiB for one body, and 32 bodies are read at once. Bodies holding more JSON objects and arrays, or more
    records, than a body may (one per 32 and per 256 bytes of --max-body-bytes) are 413, nothing of them
    stored; Kong's batches that fill --max-body-bytes, of its smallest records too, pass."""
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake)
        close = b"Connection: close\r\n"
        hostile = {
            "empty objects": (filled(b"{},"), 413),
            "empty arrays": (filled(b"[],"), 413),
            "nested arrays": (filled(b"[" * 200 + b"]" * 200 + b","), 413),
            "objects in one record": (filled(b"{},", head=b'{"request": {"x": [', tail=b"]}}"), 413),
            "4,097 records": (b"[" + b",".join(b'{"n":%d}' % n for n in range(4097)) + b"]", 413),
            "ones": (filled(b"1,"), 400),
            "empty strings": (filled(b'"",'), 400),
        }
        reset_peak_rss(rx.pid)
        before = peak_rss_mib(rx.pid)
        for name, (body, expected) in hostile.items():
            got = rx.exchange(request(body, close), timeout=60)
            assert status(got) == expected, (name, got[-300:])
            assert expected != 413 or b"nothing of this request was stored" in got, (name, got[-300:])
        grown = peak_rss_mib(rx.pid) - before
        assert grown < 40, f"1 MiB bodies of tiny JSON values grew the peak RSS by {grown:.0f} MiB"  # was 150
        # Kong's own batches filling --max-body-bytes: records of a usual size, and of the smallest.
        usual, seq = [], 1
        while len(orjson.dumps(usual)) < (1 << 20) - 6000:
            usual.append(gen.kong_record(seq))
            seq += 1
        assert status(rx.exchange(request(orjson.dumps(usual), close), timeout=60)) == 200
        smallest = []
        while sum(map(len, smallest)) + len(smallest) < (1 << 20) - 600:
            smallest.append(tiny_kong_record(seq))
            seq += 1
        answered = rx.exchange(request(b"[" + b",".join(smallest) + b"]", close), timeout=60)
        assert answered.endswith(b'{"accepted":%d}' % len(smallest)), answered[-300:]
        fake.wait_for(lambda: len(shipped(fake)) >= seq - 1, timeout=60)
        rx.stop_cleanly()
        assert shipped(fake) == collections.Counter(range(1, seq))  # none of the refused bodies' records


def posted_together(port: int, bodies: list[bytes]) -> collections.Counter:
    """Post every body on its own connection, all of them read by the receiver at the same moment (each
    connection sends all but its last byte first); the answers' statuses."""
    socks = []
    for body in bodies:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=60))
        socks[-1].sendall(request(body, b"Connection: close\r\n")[:-1])
    time.sleep(0.5)
    for sock, body in zip(socks, bodies):
        sock.sendall(body[-1:])
    statuses = collections.Counter(status(read_all(sock)) for sock in socks)
    for sock in socks:
        sock.close()
    return statuses


def test_bodies_dense_in_values_take_more_of_the_reading_budget_and_kongs_no_more(shippers, tmp_path):
    """The reading budget counts a body by its length, which stands for what Kong's records weigh parsed (16
    batches of 1 MiB: ~115 MiB). 1 MiB of 2-character strings in one record weighs 20 MiB parsed: 16 of them at
    once grew the peak RSS by 280 MiB. Such a body takes the rest of its weight from the budget before it is
    parsed (a 503 to come back later when there is none); Kong's own batches still all pass at once."""
    from shipper.sources.http_limits import parsing_charge

    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake)
        dense = [orjson.dumps(gen.kong_record(seq, extra={"x": ["ab"] * 200_000})) for seq in range(1, 17)]
        assert all(len(body) < 1 << 20 for body in dense)
        reset_peak_rss(rx.pid)
        before = peak_rss_mib(rx.pid)
        statuses = posted_together(rx.port, dense)
        grown = peak_rss_mib(rx.pid) - before
        assert grown < 200, f"16 dense bodies at once grew the peak RSS by {grown:.0f} MiB"  # was 280
        assert statuses[503] >= 1 and statuses[200] + statuses[503] == 16, statuses
        batches, seq = [], 100
        for _ in range(16):  # Kong batches filling --max-body-bytes, charged their length only
            batch: list = []
            while len(orjson.dumps(batch)) < (1 << 20) - 6000:
                batch.append(gen.kong_record(seq))
                seq += 1
            batches.append(orjson.dumps(batch))
        assert {parsing_charge(body) for body in batches} == {0}
        assert posted_together(rx.port, batches) == collections.Counter({200: 16})
        err = rx.stop_cleanly()
        assert f"and {statuses[200] + seq - 100:,} http-log records in" in err, err[-2000:]


def test_ambiguous_content_lengths_and_transfer_encodings_are_400_and_closed(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake)
        body = record(950)
        digits = str(len(body)).encode()
        answers = {  # each on a kept-alive connection: one answer, then the close (nothing parsed after it)
            "right then 5": rx.exchange(request(body, b"Content-Length: 5\r\n"), shut=True),
            "5 then right": rx.exchange(request(body, b"Content-Length: %s\r\n" % digits, length=False)
                                        .replace(b"Content-Length", b"Content-Length: 5\r\nContent-Length", 1),
                                        shut=True),
            "plus sign": rx.exchange(request(body, b"Content-Length: +%s\r\n" % digits, length=False), shut=True),
            "underscores": rx.exchange(request(body, b"Content-Length: %s\r\n" % b"_".join(digits[i:i + 1]
                                                                                       for i in range(len(digits))),
                                               length=False), shut=True),
            "two encodings": rx.exchange(request(body, b"Transfer-Encoding: identity\r\n"
                                                       b"Transfer-Encoding: chunked\r\n"), shut=True),
        }
        for name, reply in answers.items():
            assert status(reply) == 400 and reply.count(b"HTTP/1.1") == 1, (name, reply)
            assert b"Connection: close" in reply and b"ambiguous" in reply, (name, reply)
        # The same length twice is not ambiguous (RFC 9112 6.3 lets it through).
        twice = rx.exchange(request(record(1), b"Content-Length: %d\r\nConnection: close\r\n" % len(record(1))))
        assert status(twice) == 200, twice
        fake.wait_for(lambda: set(shipped(fake)) >= {1}, timeout=20)
        rx.stop_cleanly()
        assert shipped(fake) == collections.Counter({1: 1})


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_file_descriptors_the_accept_loops_wait_and_say_so(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake)
        rx.good(1)  # the pipeline started (its file watch opened) before the descriptors run out
        fake.wait_for(lambda: set(shipped(fake)) == {1}, timeout=20)
        soft, hard = resource.prlimit(rx.pid, resource.RLIMIT_NOFILE)
        used = len(os.listdir(f"/proc/{rx.pid}/fd"))
        resource.prlimit(rx.pid, resource.RLIMIT_NOFILE, (used + 10, hard))
        flood = [socket.create_connection(("127.0.0.1", rx.tcp_port if n % 2 else rx.port), timeout=10)
                 for n in range(60)]  # half of them cannot be accepted: EMFILE
        try:
            time.sleep(1)
            started, cpu = time.monotonic(), cpu_seconds(rx.pid)
            time.sleep(2)
            share = (cpu_seconds(rx.pid) - cpu) / (time.monotonic() - started)
        finally:
            for sock in flood:
                sock.close()
            resource.prlimit(rx.pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert rx.proc.proc.poll() is None, rx.proc.stop()[2][-3000:]
        assert share < 0.2, f"{share:.0%} of a CPU while out of file descriptors"  # was 55-100 %
        rx.good(2)
        fake.wait_for(lambda: set(shipped(fake)) == {1, 2}, timeout=20)
        err = rx.stop_cleanly()
        for listener in ("http", "tcp-log"):
            assert f"receive: {listener}: cannot accept connections (Too many open files" in err, err


def held_back(rx: Hostile) -> collections.Counter:
    """What the `held_back` dead letters say was not written one by one, by reason."""
    held: collections.Counter = collections.Counter()
    for raw in (rx.state / "receive" / "dead-letter.jsonl").read_bytes().splitlines():
        entry = orjson.loads(raw)
        if entry["reason"] == "held_back":
            for part in entry["detail"].rsplit(": ", 1)[1].split(", "):
                n, reason = part.split(" ")
                held[reason] += int(n.replace(",", ""))
    return held


def test_garbage_on_tcp_log_and_udp_log_is_counted_not_amplified_into_the_dead_letter_file(shippers, tmp_path):
    with FakeSegment() as fake:
        rx = Hostile(shippers, tmp_path, fake)
        path = rx.state / "receive" / "dead-letter.jsonl"
        sent = b"x\n" * 20_000  # 40 KB: 20,000 lines that are not JSON (each dead letter weighs ~150 bytes)
        with socket.create_connection(("127.0.0.1", rx.tcp_port), timeout=60) as sock:
            sock.sendall(sent)
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""  # closed once everything it sent is handled, its summary written
        size = path.stat().st_size
        assert size < 10 * len(sent), f"{len(sent)} bytes sent, {size} bytes of dead letters"  # was 3,100,000
        reasons = collections.Counter(rx.dead_letter_reasons())
        assert reasons["held_back"] >= 1 and reasons["not_json"] >= 20, reasons
        assert reasons["not_json"] + held_back(rx)["not_json"] == 20_000, (reasons, held_back(rx))  # every one counted
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(200):
            udp.sendto(b"y", ("127.0.0.1", rx.udp_port))
        udp.sendto(record(1), ("127.0.0.1", rx.udp_port))
        udp.close()
        fake.wait_for(lambda: set(shipped(fake)) == {1}, timeout=20)
        err = rx.stop_cleanly()  # the udp-log summary is written by the time it stops, at the latest
        written_by_tcp, reasons = reasons["not_json"], collections.Counter(rx.dead_letter_reasons())
        held = held_back(rx)
        assert reasons["not_json"] + held["not_json"] == 20_200, (reasons, held)
        assert reasons["not_json"] - written_by_tcp <= 60, reasons  # 200 datagrams in well under 2 s: 20 a second
        tcp_held = 20_000 - written_by_tcp
        assert f"tcp-log: received 0 records on 1 connection; 20,000 dead-lettered ({tcp_held:,} of them summarised)" \
            in err, err
        assert "udp-log: received 1 records in 201 datagrams; 200 dead-lettered (" in err, err


def test_stalled_unsigned_hook_bodies_do_not_turn_kongs_http_log_away(shippers, tmp_path):
    """Event hooks on (a secret): a hook's signature is checked only once its body is read, so 16 connections
    announcing 1 MiB bodies and stalling held the whole reading budget, and Kong's http-log, whose token is
    checked from its headers, got 503 each --read-timeout. Senders their headers authenticated read on a budget
    of their own."""
    with FakeSegment() as fake:
        port = free_port()
        env = {**ENV, "KONG_SHIP_RECEIVE_SECRET": "hook-secret-7c1d"}
        rx = start_receive(shippers, ["--listen", f"127.0.0.1:{port}", "--sink", "segment", "--endpoint", fake.url,
                                      "--state-dir", str(tmp_path / "state"), "--read-timeout", "30", *FAST],
                           env, port)  # fmt: skip
        stalled = []
        stall = b"POST /hooks HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{"
        try:
            for _ in range(16):
                stalled.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                stalled[-1].sendall(stall)

            def budget_full() -> bool:  # one more unsigned body is turned away: stalled ones hold the hooks' budget
                probe = socket.create_connection(("127.0.0.1", port), timeout=10)
                probe.sendall(stall)
                try:
                    got = answer(probe, 1)
                except TimeoutError:  # being read (on a loaded machine one of the 16 came late and was refused):
                    stalled.append(probe)  # it holds its part of the budget until --read-timeout, as they do
                    return False
                probe.close()
                return status(got) == 503 and b"too many deliveries being read" in got

            assert wait_until(budget_full, timeout=20)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request(record(1), b"Connection: close\r\n"))
                assert status(read_all(sock)) == 200
            fake.wait_for(lambda: set(shipped(fake)) == {1}, timeout=20)
        finally:
            for sock in stalled:
                sock.close()
        code, _, err = rx.stop()
        assert code == 0 and "Traceback" not in err, err


def test_a_flood_of_connections_at_start_out_of_descriptors_does_not_end_the_run(shippers, tmp_path):
    """`receive` accepted before the run had imported what it imports on first use (the metrics server's
    prometheus_client, the file watcher's watchdog): a flood as the listeners came up took every descriptor,
    the import raised OSError (Too many open files) and the run ended with exit 1. Now: it waits, and once the
    flood lets go, it serves and ships."""
    with FakeSegment() as fake:
        port, tcp_port, metrics_port = free_port(), free_port(), free_port()
        proc = shippers("receive", "--listen", f"127.0.0.1:{port}", "--listen-tcp", f"127.0.0.1:{tcp_port}",
                        "--metrics-addr", f"127.0.0.1:{metrics_port}", "--sink", "segment", "--endpoint", fake.url,
                        "--state-dir", str(tmp_path / "state"), *FAST, env=ENV)
        resource.prlimit(proc.proc.pid, resource.RLIMIT_NOFILE, (40, 40))  # long before the interpreter is up
        flood: list[socket.socket] = []
        # Connections queued as soon as the ports listen, accepted as soon as the listeners start: every
        # descriptor the process has left is taken before the run gets to its first-use imports.
        deadline = time.monotonic() + 20
        while len(flood) < 300 and time.monotonic() < deadline and proc.proc.poll() is None:
            for target in (port, tcp_port):
                try:
                    flood.append(socket.create_connection(("127.0.0.1", target), timeout=1))
                except OSError:
                    time.sleep(0.002)
        assert wait_until(lambda: proc.proc.poll() is not None or len(os.listdir(f"/proc/{proc.proc.pid}/fd")) >= 39,
                          timeout=10)
        time.sleep(1)  # accepts failing with EMFILE meanwhile, and the run starting
        assert proc.proc.poll() is None, proc.wait()[2][-3000:]  # was exit 1: OSError importing prometheus_client
        for sock in flood:
            sock.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request(record(1), b"Connection: close\r\n"))
            assert status(read_all(sock)) == 200
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as sock:
            sock.sendall(tcp_line(2))
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""
        fake.wait_for(lambda: set(shipped(fake)) == {1, 2}, timeout=20)
        code, _, err = proc.stop()
        assert code == 0 and "Traceback" not in err, err[-3000:]
        assert shipped(fake) == collections.Counter({1: 1, 2: 1})


def test_nothing_is_imported_once_the_listeners_accept(shippers, tmp_path):
    """Any module first imported while serving can fail for want of descriptors (an import opens files), and that
    ends the run. With Python's import-time report on standard error, in order with the log: between the
    listeners' start and the last request, deliveries of every kind, refusals, garbage, retried and refused
    vendor answers, a metrics scrape and a tap import nothing."""
    with FakeSegment() as fake:
        fake.script([500, (429, {"Retry-After": "1"}), "reset", 400, 502])
        udp_port, tcp_port, port, metrics_port = free_port(socket.SOCK_DGRAM), free_port(), free_port(), free_port()
        env = {**ENV, "PYTHONPROFILEIMPORTTIME": "1", "KONG_SHIP_RECEIVE_SECRET": "hook-secret-5e2a"}
        proc = start_receive(shippers, [
            "--listen-udp", f"127.0.0.1:{udp_port}", "--listen-tcp", f"127.0.0.1:{tcp_port}",
            "--listen", f"127.0.0.1:{port}", "--metrics-addr", f"127.0.0.1:{metrics_port}", "--sink", "segment",
            "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"), *FAST], env, port)

        def exchange(data: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(data)
                return read_all(sock)

        close = b"Connection: close\r\n"
        assert status(exchange(request(orjson.dumps([gen.kong_record(1, jwt_sub="u1"), gen.kong_record(2)]),
                                       close))) == 200
        for bad in (b"nope", b"[" + b"{}," * 40_000 + b"{}]", b"[{}, 1]", b"[" * 300 + b"]" * 300):
            assert status(exchange(request(bad, close))) in (400, 413)
        event = orjson.dumps({"source": "crud", "event": "consumers", "entity": {"id": "x", "password": "p"}})
        signature = "sha1=" + hmac.new(b"hook-secret-5e2a", event, hashlib.sha1).hexdigest()
        for sign in (signature, "sha1=00"):
            assert status(exchange(b"POST /hooks HTTP/1.1\r\nContent-Type: application/json\r\nx-kong-signature: "
                                   + sign.encode() + b"\r\nContent-Length: %d\r\n" % len(event) + close + b"\r\n"
                                   + event)) in (200, 401)
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as sock:
            sock.sendall(tcp_line(3) + b"xx\n\xff\n[1]\n" + b"A" * (2 << 20) + b"\ncut")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b""
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for datagram in [record(4)] + [b"zz"] * 30:
            udp.sendto(datagram, ("127.0.0.1", udp_port))
        udp.close()
        fake.wait_for(lambda: len(fake.messages) >= 5, timeout=30)  # 1-4, and the event
        assert b"kong_ship" in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/tap", timeout=0.5).read(1)
        except OSError:
            pass  # a stream that never ends: opened is enough
        # The last request: a refusal the log says (its warning marks the end of what is looked at).
        assert status(exchange(request(b"{}", close, auth=b"wrong"))) == 401
        code, _, err = proc.stop()
        assert code == 0, err[-3000:]
        # The tcp-log listener's startup line: logged as the listeners start accepting, the HTTP one just before.
        serving = err.split("INFO: receiving Kong tcp-log at", 1)[1].split("refused an http-log request", 1)[0]
        imported = [row.rsplit("|", 1)[1].strip() for row in serving.splitlines() if row.startswith("import time:")]
        assert imported == [], f"imported while serving: {imported}"
