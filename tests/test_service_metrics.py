"""Metrics over real HTTP after a small run, and the JSON log format."""

from __future__ import annotations

import socket

import httpx
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
    assert values['kong_ship_events_in_flight{sink="segment"}'] == 0
    assert 0 <= values['kong_ship_seconds_since_last_delivery{sink="segment"}'] < 30
    assert values['kong_ship_batch_events_count{sink="segment"}'] >= 2
    assert values['kong_ship_request_duration_seconds_count{sink="segment"}'] >= 2


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
