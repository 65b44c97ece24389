"""`kong-ship tap` against a real `kong-ship tail` (metrics on loopback) shipping to the fake Segment and a fake
webhook: the events arrive as the vendors get them, masked, no marker secret ever shows, the rate limit holds,
Ctrl-C ends it with 0, and a reader that never reads does not slow the shipper."""

from __future__ import annotations

import signal
import socket
import threading
import time

import orjson
import pytest

from conftest import FAST_FOLLOW, ship, ship_env, wait_until
from fakes.segment import FakeSegment
from fakes.webhook import FakeWebhook
from gen import kong_line, kong_record
from receiving import accepts, free_port
from shipper.service.tap import EventFilter, is_local

MARKERS = ("Bearer tap-MARKER-bearer-0001", "tap-MARKER-apikey-0002", "tap-MARKER-cookie-0003",
           "tap-MARKER-custom-0004")
ENV = ship_env(SEGMENT_WRITE_KEY="test-key")


def secret_line(seq: int) -> bytes:
    """A Kong record carrying a marker in every place a mask must clear: Authorization, a cookie, an apikey
    query argument and a header masked only by --mask-header."""
    record = kong_record(seq)
    request = record["request"]
    request["headers"].update({"authorization": MARKERS[0], "cookie": f"session={MARKERS[2]}",
                               "x-custom-secret": MARKERS[3]})
    request["querystring"]["apikey"] = MARKERS[1]
    request["uri"] = f"/orders/{seq}?seq={seq}&apikey={MARKERS[1]}"
    request["url"] = f"https://api.example.com:443/orders/{seq}?seq={seq}&apikey={MARKERS[1]}"
    return kong_line(record)


def append(path, seqs) -> None:
    with open(path, "ab") as handle:
        handle.write(b"".join(secret_line(seq) for seq in seqs))


class Lines:
    """A process's stdout and stderr lines, collected by threads as they come."""

    def __init__(self, proc):
        self.proc = proc
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        for stream, into in ((proc.stdout, self.out), (proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, i=into: [i.append(line) for line in s], daemon=True).start()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(10)


@pytest.fixture
def running(tmp_path, shippers):
    """A `tail` with two sinks and its metrics port."""
    log = tmp_path / "kong.log"
    log.touch()
    port = free_port()
    with FakeSegment() as segment, FakeWebhook() as webhook:
        tail = shippers("tail", str(log), "--sink", "segment", "--sink", "webhook",
                        "--endpoint", f"segment={segment.url}", "--endpoint", f"webhook={webhook.url}",
                        "--state-dir", str(tmp_path / "state"), "--metrics-addr", f"127.0.0.1:{port}",
                        "--mask-header", "X-Custom-Secret", *FAST_FOLLOW, env=ENV)
        assert wait_until(lambda: tail.proc.poll() is not None or accepts(port), timeout=20)
        assert tail.proc.poll() is None, tail.proc.stderr.read().decode()
        yield log, port, segment, webhook
        tail.stop()


def start_tap(shippers, port: int, *args: str) -> Lines:
    tap = Lines(shippers("tap", "--address", f"127.0.0.1:{port}", *args).proc)
    assert wait_until(lambda: any(b"attached to" in line for line in tap.err) or tap.proc.poll() is not None,
                      timeout=15)
    assert tap.proc.poll() is None, b"".join(tap.err).decode()
    return tap


def test_tap_shows_masked_events_of_every_sink_and_never_a_marker(running, shippers):
    log, port, segment, webhook = running
    tap = start_tap(shippers, port, "--rate", "0")
    append(log, range(1, 31))
    assert wait_until(lambda: len(tap.out) >= 60, timeout=20), (len(tap.out), b"".join(tap.err))
    assert webhook.wait_for(lambda: len(webhook.snapshot()) >= 30, timeout=10)
    assert tap.stop() == 0
    shown = [orjson.loads(line) for line in tap.out]
    by_sink = {sink: [e["event"] for e in shown if e["sink"] == sink] for sink in ("segment", "webhook")}
    assert len(by_sink["segment"]) == len(by_sink["webhook"]) == 30
    # What the tap showed is what the vendors got.
    assert sorted(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in by_sink["webhook"]) == \
        sorted(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in webhook.snapshot())
    for event in by_sink["webhook"]:
        headers = event["request_headers"]
        assert headers["authorization"] == headers["cookie"] == headers["x-custom-secret"] == "*****"
    text = b"".join(tap.out + tap.err).decode()
    for marker in MARKERS:
        assert marker.split()[-1] not in text
    assert "60 event(s) shown" in b"".join(tap.err).decode()


def test_tap_filters_by_sink_and_field_and_holds_its_rate(running, shippers):
    log, port, segment, webhook = running
    tap = start_tap(shippers, port, "--sink", "webhook", "--filter", "method=GET", "--rate", "5")
    started = time.monotonic()
    for start in range(1, 301, 50):  # 300 records over about 1.5 s
        append(log, range(start, start + 50))
        time.sleep(0.25)
    assert webhook.wait_for(lambda: len(webhook.snapshot()) >= 300, timeout=20)
    time.sleep(0.5)
    assert tap.stop() == 0
    elapsed = time.monotonic() - started
    shown = [orjson.loads(line) for line in tap.out]
    gets = sum(1 for e in webhook.snapshot() if e["method"] == "GET")
    assert shown and all(e["sink"] == "webhook" and e["event"]["method"] == "GET" for e in shown)
    assert len(shown) <= 5 * elapsed + 5 < gets  # a second's burst, then 5/s; fewer than matched


def test_a_reader_that_never_reads_does_not_slow_the_shipper(running):
    """A tap client that connects and never reads: the shipper's socket buffer fills, that reader's HTTP thread
    blocks, and every event still reaches the vendors."""
    log, port, segment, webhook = running
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", port))
    stuck.sendall(b"GET /tap?rate=0 HTTP/1.0\r\nHost: x\r\n\r\n")
    try:
        time.sleep(0.3)
        append(log, range(1, 2001))
        assert segment.wait_for(lambda: len(segment.messages) >= 2000, timeout=30), len(segment.messages)
        assert webhook.wait_for(lambda: len(webhook.snapshot()) >= 2000, timeout=30)
    finally:
        stuck.close()


def test_tap_without_a_shipper_is_one_line_and_exit_1():
    result = ship("tap", "--address", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "cannot connect" in lines[0], lines


def test_only_local_peers_and_field_filters():
    assert is_local("127.0.0.1") and is_local("::1") and is_local("::ffff:127.0.0.1")
    assert not is_local("10.0.0.1") and not is_local("") and not is_local("192.0.2.7")
    wanted = EventFilter(["orders"], [EventFilter.parse_field("properties.status=500")])
    assert wanted.matches(b'{"properties":{"status":500,"path":"/orders"}}')
    assert not wanted.matches(b'{"properties":{"status":200,"path":"/orders"}}')
    assert not wanted.matches(b'{"properties":{"status":500,"path":"/users"}}')
    with pytest.raises(ValueError):
        EventFilter.parse_field("no-equals-sign")
