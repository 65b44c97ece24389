"""Prometheus metrics on `--metrics-addr HOST:PORT` (prometheus-client: the exposition format, the HTTP
endpoint and histograms are its job, not ours).

Counters are read from the pipeline at scrape time by a custom collector, so the per-record path does no extra
work for them; only the two histograms are observed, once per request. Which counters are exported, under which
name and help, is said once in `shipper.counters.COUNTERS`. Names follow Vector's habits
(`*_total`, per-sink labels)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shipper.counters import COUNTERS
from shipper.errors import ConfigError

if TYPE_CHECKING:
    from shipper.commands.listeners import Listeners
    from shipper.pipeline import Pipeline
    from shipper.sources.event_hooks import Receiver


class Collector(Protocol):
    def collect(self) -> Iterable[Any]: ...

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
        per_lane = [(lane, lane.counters.snapshot()) for lane in lanes]
        first = per_lane[0][1]
        exported = [spec for spec in COUNTERS if spec.metric]
        for spec in exported:
            if not spec.per_sink:
                yield CounterMetricFamily(f"{PREFIX}_{spec.metric}", spec.help, value=first[spec.name])
        dead = CounterMetricFamily(f"{PREFIX}_dead_letters", "Lines and events written to the dead-letter file.", labels=["reason"])
        for reason, n in sorted(self.pipeline.dead_letter.counts.items()):
            dead.add_metric([reason], n)
        yield dead
        for spec in exported:
            if spec.per_sink:
                family = CounterMetricFamily(f"{PREFIX}_{spec.metric}", spec.help, labels=["sink"])
                for lane, counts in per_lane:
                    family.add_metric([lane.sink.name], counts[spec.name])
                yield family
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
            queue.add_metric([name], len(lane.queue))
            in_flight.add_metric([name], lane.acks.pending())
            last = lane.sender.last_success
            since.add_metric([name], now - last if last else now - self.pipeline.started_at)
            for path, nbytes in lane.behind().items():
                behind.add_metric([name, path], nbytes)
        yield from (queue, in_flight, since, behind)


class ReceiveCollector:
    """`receive`'s listeners, each under its `listener` label: the HTTP listener's deliveries (`http-log`,
    `event-hooks`) by answer, and the tcp-log and udp-log listeners' records, read from their own counters at
    scrape time (none of them counts anything for the metrics' sake). A listener not configured has no series."""

    def __init__(self, receiver: Receiver | None, listeners: Listeners):
        self.receiver = receiver
        self.listeners = listeners

    def collect(self) -> Iterator[CounterMetricFamily]:
        from shipper.sources import event_hooks, http_log

        def family(name: str, help_: str, labels: tuple[str, ...] = ("listener",)) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_listener_{name}", help_, labels=list(labels))

        received = family("records_received", "Records received and spooled (http-log and event hooks: answered 200).")
        dead = family("records_dead_lettered",
                      "Records a tcp-log or udp-log listener dead-lettered (not JSON objects, too long, cut off).")
        connections = family("connections", "tcp-log connections accepted.")
        dropped = family("datagrams_dropped", "udp-log datagrams read and dropped (backlog full, spool writer behind).")
        handshakes = family("tls_handshakes_failed",
                            "TLS handshakes that failed (plain-text clients, wrong protocol, timeouts).")
        requests = family("requests", "HTTP requests by delivery and answer.", ("listener", "status"))
        receiver = self.receiver
        if receiver is not None:
            received.add_metric([http_log.NAME], receiver.records_accepted.get(http_log.KIND, 0))
            received.add_metric([event_hooks.NAME], receiver.records_accepted.get(event_hooks.KIND, 0))
            handshakes.add_metric(["http"], receiver.failed_handshakes)
            for (delivery, status), n in sorted(dict(receiver.requests).items()):
                requests.add_metric([delivery, str(status)], n)
        for name, counts in self.listeners.counts().items():
            received.add_metric([name], counts["records"])
            dead.add_metric([name], counts["dead_lettered"])
            if "connections" in counts:
                connections.add_metric([name], counts["connections"])
                handshakes.add_metric([name], counts["failed_handshakes"])
            if "datagrams" in counts:
                dropped.add_metric([name], counts["dropped"])
        yield from (received, dead, connections, dropped, handshakes, requests)


def serve(pipeline: Pipeline, address: str, collectors: Iterable[Collector] = ()):
    """Serve the pipeline's metrics, and those of `collectors` (a command's own sources: `receive`'s listeners)."""
    host, port = parse_addr(address)
    registry = CollectorRegistry()
    registry.register(PipelineCollector(pipeline))
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
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
