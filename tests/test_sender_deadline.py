"""Every attempt has a total deadline (shipper/delivery/deadline.py): a vendor or proxy that trickles its status
line or headers a byte at a time, or reads our request body a few bytes at a time, keeps each socket operation
under httpx's per-operation timeout for ever, and held a sender slot for ever. Real loopback servers, the real
`Sender`, and one `kong-ship backfill` through a front that trickles the first attempt's answer."""

from __future__ import annotations

import collections
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

import gen
from conftest import FAST, ship, ship_env, wait_until
from fakes.segment import FakeSegment
from fakes.tls import private_ca
from shipper.deadletter import DeadLetter
from shipper.delivery.acks import AckTracker
from shipper.delivery.deadline import with_deadlines
from shipper.delivery.sender import MIN_UPLOAD_RATE, Aborted, Sender
from shipper.sinks.moesif_sampling import Sampler
from shipper.sinks.webhook import WebhookSink

TIMEOUT = 0.5  # the sender's --timeout: connect, write and read 0.5 s each, so an attempt ends within 1.5 s
TIMED_OUT = "timed out after 1.5 s"  # its verdict
ENDED_WITHIN = 10.0  # generous: a loaded machine is slow, a slot held for ever is not
DRIP = 0.1  # seconds between the bytes a trickling server sends: well under TIMEOUT
# A reader slow in total, never per send: Linux wakes a blocked send() once a third of its buffer (4 MB on
# loopback) is free, so a reader must take ~1.3 MB per write timeout to keep every send under it. 4 MB/s, with
# a write timeout of 1 s: a 48 MB body takes 12 s or more.
SLOW_READ, SLOW_READ_EVERY, SLOW_TIMEOUT = 65_536, 0.016, 1.0

Handler = Callable[[socket.socket, threading.Event], None]


class RawServer:
    """A loopback TCP server: the n-th connection is handed to handlers[n] (the last one for every later
    connection), each in a thread of its own. Closing it closes every connection and stops the handlers."""

    def __init__(self, *handlers: Handler):
        self.handlers = handlers
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.connections: list[socket.socket] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            handler = self.handlers[min(len(self.connections), len(self.handlers) - 1)]
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(handler, conn), daemon=True).start()

    def _serve(self, handler: Handler, conn: socket.socket) -> None:
        try:
            handler(conn, self.stop)
        except OSError:
            pass  # the client gave up on us: what these servers are for

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., RawServer]]:
    made: list[RawServer] = []

    def make(*handlers: Handler) -> RawServer:
        made.append(RawServer(*handlers))
        return made[-1]

    yield make
    for server in made:
        server.close()


def read_head(conn: socket.socket) -> tuple[bytes, int]:
    """The request's head, and its Content-Length."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("closed")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return head, length - len(rest)


def read_request(conn: socket.socket) -> None:
    _, left = read_head(conn)
    while left > 0:
        chunk = conn.recv(min(left, 65536))
        if not chunk:
            raise OSError("closed")
        left -= len(chunk)


def drip(conn: socket.socket, stop: threading.Event, first: bytes, then: bytes) -> None:
    """Send `first` a byte at a time, then `then` a byte at a time over and over, until stopped or cut off."""
    for i in range(len(first)):
        if stop.wait(DRIP):
            return
        conn.sendall(first[i : i + 1])
    while not stop.is_set():
        for i in range(len(then)):
            if stop.wait(DRIP):
                return
            conn.sendall(then[i : i + 1])


def status_line_for_ever(conn: socket.socket, stop: threading.Event) -> None:
    """A status line whose reason phrase never ends (h11 gives up only after 16 KiB: half an hour here)."""
    read_request(conn)
    drip(conn, stop, b"HTTP/1.1 200 OK", b"K")


def headers_for_ever(conn: socket.socket, stop: threading.Event) -> None:
    read_request(conn)
    drip(conn, stop, b"HTTP/1.1 200 OK\r\n", b"X-Trickle: 1\r\n")


def body_taken_slowly(conn: socket.socket, stop: threading.Event) -> None:
    """Takes the request body in small reads, each soon after the last: every send of the client completes
    within its write timeout, the body not for a long while."""
    read_head(conn)
    while not stop.wait(SLOW_READ_EVERY):
        if not conn.recv(SLOW_READ):
            return


def answers_ok(conn: socket.socket, stop: threading.Event) -> None:
    while not stop.is_set():
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def items(count: int, size: int = 100) -> list:
    event = b'{"pad":"' + b"x" * size + b'"}'
    return [("f", seq, seq + 1, event) for seq in range(count)]


def make_sender(url: str, acks: AckTracker, abort: threading.Event, counted: collections.Counter,
                timeout: float = TIMEOUT, stop_at_retry: bool = True, ca_file: str | None = None,
                min_upload_rate: float = MIN_UPLOAD_RATE) -> Sender:
    def count(key: str, n: int) -> None:
        counted.update({key: n})
        if key == "retries" and stop_at_retry:
            abort.set()  # the first attempt's verdict is what we judge: stop at its retry

    return Sender(WebhookSink(url), acks, DeadLetter(None), abort, count, timeout=timeout, retry_initial=0.01,
                  retry_max=0.05, ca_file=ca_file, min_upload_rate=min_upload_rate)  # fmt: skip


def deliver_in_thread(sender: Sender, items: list) -> dict:
    """Runs sender.deliver(items) in a thread (a slot held for ever must fail the test, not hang it)."""
    outcome: dict = {}

    def run() -> None:
        try:
            sender.deliver(items)
            outcome["result"] = "delivered"
        except Aborted:
            outcome["result"] = "aborted"
        except Exception as exc:  # noqa: BLE001 - reported by the test
            outcome["result"] = repr(exc)

    threading.Thread(target=run, daemon=True).start()
    return outcome


def retried_then_delivered(url: str, caplog, **options) -> tuple[dict, collections.Counter, AckTracker]:
    """Three items delivered by a Sender to `url` that retries (a trickled first answer) until delivered: its
    outcome, counts and acknowledgements, once the attempt has ended."""
    acks = AckTracker()
    acks.start("f", 0)
    abort, counted = threading.Event(), collections.Counter()
    sender = make_sender(url, acks, abort, counted, stop_at_retry=False, **options)
    caplog.set_level(logging.WARNING, logger="kong-ship")
    try:
        outcome = deliver_in_thread(sender, items(3))
        assert wait_until(lambda: "result" in outcome, timeout=ENDED_WITHIN), "the attempt held its slot"
    finally:
        sender.close()
    return outcome, counted, acks


# The slow reader: 24 MB taken at 4 MB/s at most (6 s), where an attempt may take 3 s plus the body at 16 MB/s
# (1.5 s): a reader slower than the floor it is given is cut. (The floor is 16 KiB/s in a run: a test cannot wait
# for a reader under it to be cut.)
@pytest.mark.parametrize(("vendor", "timeout", "batch", "upload_rate", "timed_out"), [
    (status_line_for_ever, TIMEOUT, items(3), MIN_UPLOAD_RATE, TIMED_OUT),
    (headers_for_ever, TIMEOUT, items(3), MIN_UPLOAD_RATE, TIMED_OUT),
    (body_taken_slowly, SLOW_TIMEOUT, items(480, 50_000), 16_000_000, "timed out after 4.5 s"),
], ids=["status-line", "headers", "slow-body-reader"])  # fmt: skip
def test_a_trickling_vendor_ends_the_attempt_as_a_retry(servers, caplog, vendor, timeout, batch, upload_rate,
                                                         timed_out):  # fmt: skip
    server = servers(vendor, answers_ok)
    acks = AckTracker()
    acks.start("f", 0)
    abort, counted = threading.Event(), collections.Counter()
    sender = make_sender(server.url, acks, abort, counted, timeout, min_upload_rate=upload_rate)
    caplog.set_level(logging.WARNING, logger="kong-ship")
    try:
        outcome = deliver_in_thread(sender, batch)
        assert wait_until(lambda: "result" in outcome, timeout=ENDED_WITHIN), "the attempt held its slot"
        # Retried, as a read timeout is (the abort set at the retry ends the batch unacknowledged)
        assert outcome["result"] == "aborted" and counted["retries"] == 1 and not counted["sent"]
        assert timed_out in caplog.text, caplog.text
        assert acks.committed() == {"f": 0}
    finally:
        sender.close()


def body_taken_slowly_then_ok(conn: socket.socket, stop: threading.Event) -> None:
    """An honest vendor behind a slow link: the whole body, at most SLOW_READ every SLOW_READ_EVERY, then 200."""
    _, left = read_head(conn)
    while left > 0 and not stop.wait(SLOW_READ_EVERY):
        chunk = conn.recv(min(left, SLOW_READ))
        if not chunk:
            return
        left -= len(chunk)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_a_body_slower_than_the_write_timeout_on_an_honest_link_is_delivered(servers):
    """16 MB taken at 4 MB/s at most: 4 s, more than the attempt's connect + write + read (3 s). Cut there, it was
    retried for ever (a Moesif batch of a megabyte over a slow uplink, with its 2 s write timeout); the deadline
    now grows by the body at MIN_UPLOAD_RATE."""
    server = servers(body_taken_slowly_then_ok)
    acks = AckTracker()
    acks.start("f", 0)
    abort, counted = threading.Event(), collections.Counter()
    sender = make_sender(server.url, acks, abort, counted, SLOW_TIMEOUT)
    try:
        outcome = deliver_in_thread(sender, items(320, 50_000))
        assert wait_until(lambda: "result" in outcome, timeout=60), "still sending"
    finally:
        sender.close()
    assert outcome["result"] == "delivered" and counted["retries"] == 0 and counted["sent"] == 320


def test_a_normal_vendor_still_gets_its_batch(servers):
    server = servers(answers_ok)
    acks = AckTracker()
    acks.start("f", 0)
    abort, counted = threading.Event(), collections.Counter()
    sender = make_sender(server.url, acks, abort, counted)
    try:
        sender.deliver(items(3))
        sender.deliver(items(3))  # the connection kept alive, under a deadline of its own
    finally:
        sender.close()
    assert counted["sent"] == 6 and not counted["retries"] and acks.committed() == {"f": 3}


def test_over_tls_a_trickled_first_answer_is_retried_and_the_next_delivered(servers, caplog, tmp_path):
    """The deadline holds over TLS (the handshake and every read of the TLS stream), and TLS with --ca-file
    still verifies and delivers."""
    ca_pem, cert_pem, key_pem = private_ca(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_pem), str(key_pem))

    def over_tls(handler: Handler) -> Handler:
        return lambda conn, stop: handler(context.wrap_socket(conn, server_side=True), stop)

    server = servers(over_tls(status_line_for_ever), over_tls(answers_ok))
    outcome, counted, acks = retried_then_delivered(server.url.replace("http:", "https:"), caplog, ca_file=str(ca_pem))
    assert outcome["result"] == "delivered" and counted["retries"] == 1 and counted["sent"] == 3
    assert TIMED_OUT in caplog.text and acks.committed() == {"f": 3}


def test_through_a_proxy_from_the_environment_too(servers, caplog, monkeypatch):
    """$HTTP_PROXY is still honoured (httpx's own handling, kept), and the proxy's connections keep the deadline."""
    proxy = servers(status_line_for_ever, answers_ok)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url.rsplit("/", 1)[0])
    outcome, counted, _ = retried_then_delivered("http://vendor.test/hook", caplog)
    assert outcome["result"] == "delivered" and counted["retries"] == 1 and len(proxy.connections) == 2
    assert TIMED_OUT in caplog.text


def test_backfill_through_a_vendor_that_trickles_its_first_answer(servers, tmp_path):
    """`kong-ship backfill` to a front whose first connection trickles its status line and whose later ones
    are passed to a strict fake Segment: every record arrives once, exit 0."""
    with FakeSegment() as segment:
        port = int(segment.url.rsplit(":", 1)[1].split("/")[0])

        def to_segment(conn: socket.socket, stop: threading.Event) -> None:
            upstream = socket.create_connection(("127.0.0.1", port))
            threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
            pump(conn, upstream)

        front = servers(status_line_for_ever, to_segment)
        log = tmp_path / "kong.json"
        gen.write_records(log, range(20))
        endpoint = front.url.rsplit("/", 1)[0]
        result = ship("backfill", str(log), "--sink", "segment", "--endpoint", endpoint, "--state-dir",
                      str(tmp_path / "state"), "--timeout", str(TIMEOUT), *FAST, env=ship_env(SEGMENT_WRITE_KEY="test-key"),
                      timeout=20)  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        # 1.5 s, and the body's time at MIN_UPLOAD_RATE (a few KB: 0.2 s)
        assert re.search(r"ReadTimeout: timed out after 1\.[5-9] s", result.stderr.decode()), result.stderr.decode()
        seqs = collections.Counter(gen.seq_of_segment_message(m) for m in list(segment.messages))
        assert sorted(seqs) == list(range(20)) and set(seqs.values()) == {1}


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_moesifs_configuration_fetch_ends_at_its_deadline_too(servers, caplog):
    """Moesif's /v1/config is fetched on a thread of its own with the sender's client: a status line trickled a byte
    at a time held that fetch for ever (only the body read was bounded), and with it every refresh after."""
    def status_line_for_ever_to_a_get(conn: socket.socket, stop: threading.Event) -> None:
        head = b""
        while b"\r\n\r\n" not in head:  # a GET: no body to read
            head += conn.recv(65536) or b"\r\n\r\n"
        drip(conn, stop, b"HTTP/1.1 200 OK", b"K")

    vendor = servers(status_line_for_ever_to_a_get)
    client = httpx.Client()
    assert with_deadlines(client)
    # enabled=False: the sender's client without the timer thread; the one fetch is this test's.
    sampler = Sampler(vendor.url.rpartition("/")[0], "app", httpx.Timeout(0.5), enabled=False)
    sampler.use_client(client)
    fetched = threading.Thread(target=sampler.refresh, daemon=True)
    try:
        with caplog.at_level(logging.WARNING, logger="kong-ship"):
            fetched.start()
            fetched.join(10)
            assert not fetched.is_alive(), "the fetch is still held by the trickle"
        assert "cannot fetch /v1/config" in caplog.text and "sampling keeps its last settings" in caplog.text
    finally:
        client.close()
