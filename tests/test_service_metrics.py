"""Metrics over real HTTP after a small run, and the JSON log format."""

from __future__ import annotations

import socket

import httpx
import pytest
import orjson

import gen
from conftest import FAST_FOLLOW, ship, ship_env, wait_until
from fakes.segment import FakeSegment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_names_and_values_after_a_small_run(tmp_path, shippers):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(40))
    with open(log, "ab") as handle:
        handle.write(b"not json\n[1]\n\n \t \n")
    port = free_port()
    with FakeSegment() as segment:
        segment.script([503])
        proc = shippers("tail", str(log), "--sink", "segment", "--endpoint", segment.url,
                        "--state-dir", str(tmp_path / "state"), "--metrics-addr", f"127.0.0.1:{port}", *FAST_FOLLOW,
                        env=ship_env(SEGMENT_WRITE_KEY="test-key"))
        segment.wait_for(lambda: len(segment.messages) >= 40, timeout=15)

        def settled():
            try:
                values = scrape(port)
            except httpx.HTTPError:
                return None
            return values if values.get(f'kong_ship_file_bytes_behind{{file="{log}",sink="segment"}}') == 0 else None

        values = wait_until(settled, timeout=10)
        assert values, "bytes behind never reached 0"
        code, _, err = proc.stop()
        assert code == 0, err
    assert values["kong_ship_lines_read_total"] == 44
    assert values["kong_ship_blank_lines_total"] == 2
    assert values["kong_ship_records_parsed_total"] == 40
    assert values['kong_ship_dead_letters_total{reason="not_json"}'] == 1
    assert values['kong_ship_dead_letters_total{reason="not_object"}'] == 1
    assert values['kong_ship_events_acknowledged_total{sink="segment"}'] == 40
    assert values['kong_ship_events_sent_total{sink="segment"}'] > 40  # the 503'd attempt counts too
    assert values['kong_ship_requests_retried_total{sink="segment"}'] >= 1
    assert values['kong_ship_events_rejected_total{sink="segment"}'] == 0
    assert values['kong_ship_queue_events{sink="segment"}'] == 0
    assert values['kong_ship_queue_bytes{sink="segment"}'] == 0
    assert values['kong_ship_queue_capacity_events{sink="segment"}'] == 10_000  # --queue-size's default
    assert values['kong_ship_queue_capacity_bytes{sink="segment"}'] == 16 << 20
    assert values[f'kong_ship_file_seconds_behind{{file="{log}",sink="segment"}}'] == 0  # caught up
    assert values['kong_ship_events_in_flight{sink="segment"}'] == 0
    assert 0 <= values['kong_ship_seconds_since_last_delivery{sink="segment"}'] < 30
    assert values['kong_ship_batch_events_count{sink="segment"}'] >= 2
    assert values['kong_ship_request_duration_seconds_count{sink="segment"}'] >= 2


def test_write_clock_dates_the_oldest_unshipped_byte_between_scrapes(tmp_path):
    """The lag in seconds: samples of (size, mtime) taken at scrapes, interpolated at the acknowledged offset."""
    import os

    from shipper.service.metrics import WriteClock

    log = tmp_path / "kong.json"
    clock = WriteClock()
    assert clock.note(str(log)) is None and clock.age(str(log), 0, 1000.0) == 0.0  # not there yet
    for size, mtime in ((100, 1000.0), (300, 1100.0), (300, 1150.0), (700, 1200.0)):
        log.write_bytes(b"x" * size)
        os.utime(log, (mtime, mtime))
        assert clock.note(str(log)) == size
    assert clock.samples[str(log)] == [(100, 1000.0), (300, 1100.0), (700, 1200.0)]  # unchanged size: no sample
    assert clock.age(str(log), 700, 1300.0) == 0.0  # caught up
    assert clock.age(str(log), 500, 1300.0) == 150.0  # half-way from 300 (t=1100) to 700 (t=1200)
    assert clock.age(str(log), 200, 1300.0) == 250.0
    assert clock.age(str(log), 50, 1300.0) == 300.0  # before the first sample: dated at it (a lower bound)
    log.write_bytes(b"x" * 10)  # copytruncate: a new file under the name
    os.utime(log, (1250.0, 1250.0))
    clock.note(str(log))
    assert clock.samples[str(log)] == [(10, 1250.0)]
    clock.keep_only(set())
    assert clock.samples == {}


def test_lag_in_seconds_grows_while_the_vendor_is_down(tmp_path, shippers):
    """A vendor that answers 503: the file's oldest unshipped byte ages, scrape after scrape; queue and capacity
    are exported for the queue-fill panel."""
    import os
    import time

    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    written = time.time() - 60
    os.utime(log, (written, written))  # the records were written a minute ago
    port = free_port()
    with FakeSegment() as segment:
        segment.script([503] * 1000)
        proc = shippers("tail", str(log), "--sink", "segment", "--endpoint", segment.url, "--queue-size", "7",
                        "--state-dir", str(tmp_path / "state"), "--metrics-addr", f"127.0.0.1:{port}", *FAST_FOLLOW,
                        env=ship_env(SEGMENT_WRITE_KEY="test-key"))
        key = f'kong_ship_file_seconds_behind{{file="{log}",sink="segment"}}'

        def scraped():
            try:
                return scrape(port)
            except httpx.HTTPError:
                return None

        first = wait_until(lambda: (v := scraped()) and key in v and v, timeout=10)
        assert first, "no lag series"
        assert 60 <= first[key] < 90
        assert first[f'kong_ship_file_bytes_behind{{file="{log}",sink="segment"}}'] == log.stat().st_size
        assert first['kong_ship_queue_capacity_events{sink="segment"}'] == 7
        time.sleep(1.1)
        assert scrape(port)[key] >= first[key] + 1
        proc.stop()


def test_bad_metrics_address_is_a_usage_error(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(1))
    result = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path), "--metrics-addr", "nope")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr.decode()


def test_json_log_format(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3))
    with open(log, "ab") as handle:
        handle.write(b"garbage\n")
    with FakeSegment(write_key="test-key-do-not-log") as segment:
        segment.script([500])
        result = ship("backfill", str(log), "--sink", "segment", "--endpoint", segment.url, "--state-dir",
                      str(tmp_path / "s"), "--log-format", "json", "--retry-initial-delay", "0.01",
                      env=ship_env(SEGMENT_WRITE_KEY="test-key-do-not-log"))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    records = [orjson.loads(line) for line in lines if line.startswith("{")]
    assert records and all({"time", "level", "message"} <= set(r) for r in records)
    assert any(r["level"] == "warning" and "500" in r["message"] for r in records)
    assert "test-key-do-not-log" not in result.stderr.decode()


def test_receive_listener_metrics_http_log_tcp_log_udp_log(shippers, tmp_path):
    """A real `receive` with all three listeners over TLS (HTTP and tcp-log) and a vendor that is down, so that
    the backlog fills on purpose: each listener's counts, scraped, are exactly what was sent."""
    import socket
    import ssl
    import time

    from fakes.tls import private_ca
    from receiving import free_port as free, start_receive
    from test_tcp_udp_log import line

    ca, cert, key = private_ca(tmp_path)
    token = "metrics-token"
    http_port, tcp_port, udp_port, metrics_port = free(), free(), free(socket.SOCK_DGRAM), free()
    proc = start_receive(shippers, [
        "--listen", f"127.0.0.1:{http_port}", "--listen-tcp", f"127.0.0.1:{tcp_port}",
        "--listen-udp", f"127.0.0.1:{udp_port}", "--tls-cert", str(cert), "--tls-key", str(key),
        "--sink", "segment", "--endpoint", f"http://127.0.0.1:{free()}", "--state-dir", str(tmp_path / "state"),
        "--max-backlog-bytes", "100000", "--metrics-addr", f"127.0.0.1:{metrics_port}",
    ], ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_HTTP_LOG_TOKEN=token), tcp_port)  # the probe: a failed handshake
    url = f"https://127.0.0.1:{http_port}/http-log"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    context = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(verify=context, timeout=10) as client:
        assert client.post(url, content=orjson.dumps(gen.kong_record(1)), headers=headers).status_code == 200
        assert client.post(url, content=orjson.dumps([gen.kong_record(2), gen.kong_record(3)]),
                           headers=headers).status_code == 200
        assert client.post(url, content=b"{}", headers={**headers, "Authorization": "Bearer nope"}).status_code == 401
        assert client.post(url, content=b"{nope", headers=headers).status_code == 400
        with pytest.raises(httpx.TransportError):  # plain HTTP to the HTTPS port: a failed handshake
            httpx.post(url.replace("https:", "http:"), content=b"{}", headers=headers, timeout=5)

        with context.wrap_socket(socket.create_connection(("127.0.0.1", tcp_port), timeout=10),
                                 server_hostname="127.0.0.1") as tls:
            tls.sendall(b"".join(line(n) for n in range(10, 20)) + b"not json\n")
            assert wait_until(lambda: scrape(metrics_port).get(
                'kong_ship_listener_records_received_total{listener="tcp-log"}') == 10)
        plain = socket.create_connection(("127.0.0.1", tcp_port), timeout=10)  # no handshake
        plain.sendall(line(99))
        plain.close()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for n in range(20, 25):
            sender.sendto(orjson.dumps(gen.kong_record(n)), ("127.0.0.1", udp_port))
        sender.sendto(b"not json", ("127.0.0.1", udp_port))
        assert wait_until(lambda: scrape(metrics_port).get('kong_ship_listener_records_received_total{listener="udp-log"}') == 5
                          and scrape(metrics_port).get('kong_ship_listener_records_dead_lettered_total{listener="udp-log"}') == 1)

        # Over the backlog (nothing ships: the vendor is down): the next request is 503, datagrams are dropped.
        assert client.post(url, content=orjson.dumps([gen.kong_record(n) for n in range(100, 200)]),
                           headers=headers).status_code == 200
        time.sleep(0.3)  # the backlog is measured at most every 0.1 s
        assert client.post(url, content=orjson.dumps(gen.kong_record(200)), headers=headers).status_code == 503
        for n in range(300, 303):
            sender.sendto(orjson.dumps(gen.kong_record(n)), ("127.0.0.1", udp_port))
        sender.close()

    expected = {
        'kong_ship_listener_records_received_total{listener="http-log"}': 103,
        'kong_ship_listener_records_received_total{listener="event-hooks"}': 0,
        'kong_ship_listener_records_received_total{listener="tcp-log"}': 10,
        'kong_ship_listener_records_received_total{listener="udp-log"}': 5,
        'kong_ship_listener_records_dead_lettered_total{listener="tcp-log"}': 1,
        'kong_ship_listener_records_dead_lettered_total{listener="udp-log"}': 1,
        'kong_ship_listener_connections_total{listener="tcp-log"}': 3,  # the start-up probe, TLS, plain
        'kong_ship_listener_tls_handshakes_failed_total{listener="tcp-log"}': 2,  # the probe and the plain one
        'kong_ship_listener_tls_handshakes_failed_total{listener="http"}': 1,
        'kong_ship_listener_datagrams_dropped_total{listener="udp-log"}': 3,
        'kong_ship_listener_requests_total{listener="http-log",status="200"}': 3,
        'kong_ship_listener_requests_total{listener="http-log",status="400"}': 1,
        'kong_ship_listener_requests_total{listener="http-log",status="401"}': 1,
        'kong_ship_listener_requests_total{listener="http-log",status="503"}': 1,
    }

    def listener_series() -> dict[str, float]:
        return {k: v for k, v in scrape(metrics_port).items() if k.startswith("kong_ship_listener_")
                and not k.split("{")[0].endswith("_created")}

    wait_until(lambda: listener_series() == expected, timeout=10)
    assert listener_series() == expected
    code, _, err = proc.stop()
    assert code == 0, err
    assert "tcp-log: received 10 records on 3 connections; 1 dead-lettered; 2 failed TLS handshakes" in err, err
