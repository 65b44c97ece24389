"""Kong stream (L4: TCP, TLS, UDP) sessions, as Kong's log plugins send them from a stream route, through a
real `kong-ship receive` — one by http-log, one by tcp-log, one by udp-log — reach the fake Segment as
`Kong Stream Session` tracks: exactly these three, once each, with what each record says."""

from __future__ import annotations

import socket

import httpx

from conftest import FAST, ship_env
from fakes.segment import FakeSegment
from receiving import free_port, start_receive
from test_corpus import LINES
from test_tcp_udp_log import close_and_wait

TOKEN = "stream-token"
POSTGRES_TCP, REDIS_TLS, DNS_UDP = LINES[23], LINES[24], LINES[25]  # corpus records 24, 25 and 26


def test_stream_sessions_by_http_log_tcp_log_and_udp_log_arrive_as_kong_stream_session_tracks(shippers, tmp_path):
    http_port, tcp_port, udp_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    with FakeSegment() as fake:
        proc = start_receive(shippers, [
            "--listen", f"127.0.0.1:{http_port}", "--listen-tcp", f"127.0.0.1:{tcp_port}",
            "--listen-udp", f"127.0.0.1:{udp_port}", "--sink", "segment", "--endpoint", fake.url,
            "--state-dir", str(tmp_path / "state"), *FAST,
        ], ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_HTTP_LOG_TOKEN=TOKEN), tcp_port)
        answer = httpx.post(f"http://127.0.0.1:{http_port}/http-log", content=POSTGRES_TCP, timeout=10,
                            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200 and answer.json() == {"accepted": 1}
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as sock:
            sock.sendall(REDIS_TLS + b"\n")
            close_and_wait(sock)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(DNS_UDP, ("127.0.0.1", udp_port))
        fake.wait_for(lambda: len(fake.messages) >= 3, timeout=20)
        code, _, err = proc.stop()
        assert code == 0, err
        messages = list(fake.messages)

    assert len(messages) == 3 and len({m["messageId"] for m in messages}) == 3, messages
    assert {m["type"] for m in messages} == {"track"} and {m["event"] for m in messages} == {"Kong Stream Session"}
    sessions = {
        (m["properties"]["protocol"], m["properties"]["serverPort"], m["properties"]["bytesReceived"],
         m["properties"]["bytesSent"], m["properties"].get("service"), m.get("userId"))
        for m in messages
    }
    assert sessions == {
        ("tcp", 5432, 112, 4096, "postgres", None),  # by http-log
        ("tls", 9443, 2048, 65536, "redis", "foo"),  # by tcp-log; the consumer is its user
        ("udp", 53, 64, 512, "dns", None),  # by udp-log
    }
    assert "http-log records in 1 deliveries" in err and "tcp-log: received 1 records" in err
    assert "udp-log: received 1 records in 1 datagrams" in err
