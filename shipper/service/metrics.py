"""Prometheus metrics on `--metrics-addr HOST:PORT` (prometheus-client: the exposition format, the HTTP
endpoint and histograms are its job, not ours).

Counters are read from the pipeline at scrape time by a custom collector, so the per-record path does no extra
work for them; only the two histograms are observed, once per request. Names follow Vector's habits
(`*_total`, per-sink labels)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shipper.errors import ConfigError

if TYPE_CHECKING:
    from shipper.pipeline import Pipeline

PREFIX = "kong_ship"


def parse_addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics-addr {value}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]") or "0.0.0.0", int(port)


class PipelineCollector:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    def collect(self):
        lanes = self.pipeline.lanes
        first = lanes[0]
        counts = first.counts
        yield CounterMetricFamily(f"{PREFIX}_lines_read", "Lines read from the log files.", value=counts["lines"])
        yield CounterMetricFamily(f"{PREFIX}_records_parsed", "Lines understood as transactions.", value=counts["parsed"])
        yield CounterMetricFamily(f"{PREFIX}_blank_lines", "Empty or whitespace-only lines (nothing to ship).", value=counts["blank"])
        dead = CounterMetricFamily(f"{PREFIX}_dead_letters", "Lines and events written to the dead-letter file.", labels=["reason"])
        for reason, n in sorted(self.pipeline.dead_letter.counts.items()):
            dead.add_metric([reason], n)
        yield dead
        families = {
            "events_sent": CounterMetricFamily(f"{PREFIX}_events_sent", "Events sent in requests, retries included.", labels=["sink"]),
            "events_acknowledged": CounterMetricFamily(f"{PREFIX}_events_acknowledged", "Events the vendor accepted.", labels=["sink"]),
            "requests_retried": CounterMetricFamily(f"{PREFIX}_requests_retried", "Requests tried again.", labels=["sink"]),
            "events_rejected": CounterMetricFamily(f"{PREFIX}_events_rejected", "Events the vendor refused for good (dead-lettered).", labels=["sink"]),
            "events_skipped": CounterMetricFamily(f"{PREFIX}_events_skipped", "Events deliberately not sent (sampling).", labels=["sink"]),
        }
        queue = GaugeMetricFamily(f"{PREFIX}_queue_events", "Events waiting between reading and sending.", labels=["sink"])
        in_flight = GaugeMetricFamily(f"{PREFIX}_events_in_flight", "Events read and not yet acknowledged.", labels=["sink"])
        since = GaugeMetricFamily(
            f"{PREFIX}_seconds_since_last_delivery", "Seconds since the vendor last acknowledged a batch.", labels=["sink"]
        )
        behind = GaugeMetricFamily(
            f"{PREFIX}_file_bytes_behind", "File size minus the checkpoint: bytes not yet shipped.", labels=["sink", "file"]
        )
        now = time.time()
        for lane in lanes:
            name = lane.sink.name
            with lane._out_lock:
                out = dict(lane.out_counts)
            families["events_sent"].add_metric([name], out.get("attempted", 0))
            families["events_acknowledged"].add_metric([name], out.get("sent", 0))
            families["requests_retried"].add_metric([name], out.get("retries", 0))
            families["events_rejected"].add_metric([name], out.get("rejected", 0))
            families["events_skipped"].add_metric([name], lane.counts["skipped"])
            queue.add_metric([name], len(lane.queue))
            in_flight.add_metric([name], lane.acks.pending())
            last = lane.sender.last_success
            since.add_metric([name], now - last if last else now - self.pipeline.started_at)
            for path, nbytes in lane.behind().items():
                behind.add_metric([name, path], nbytes)
        yield from families.values()
        yield from (queue, in_flight, since, behind)


def serve(pipeline: Pipeline, address: str):
    host, port = parse_addr(address)
    registry = CollectorRegistry()
    registry.register(PipelineCollector(pipeline))
    batch_events = Histogram(
        f"{PREFIX}_batch_events", "Events per request.", ["sink"], registry=registry,
        buckets=(1, 10, 50, 100, 200, 500, 1000, 2500),
    )
    latency = Histogram(f"{PREFIX}_request_duration_seconds", "Time to a vendor's answer.", ["sink"], registry=registry)
    for lane in pipeline.lanes:
        events, seconds = batch_events.labels(lane.sink.name), latency.labels(lane.sink.name)
        lane.sender.observe = lambda n, s, events=events, seconds=seconds: (events.observe(n), seconds.observe(s))
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-addr {address}: cannot listen: {exc.strerror}") from None
    return server
