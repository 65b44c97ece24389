"""Prometheus metrics on `--metrics-addr HOST:PORT` (prometheus-client: the exposition format, the HTTP
endpoint and histograms are its job, not ours).

Counters are read from the pipeline at scrape time by a custom collector, so the per-record path does no extra
work for them; only the two histograms are observed, once per request. Which counters are exported, under which
name and help, is said once in `shipper.counters.COUNTERS`. Names follow Vector's habits
(`*_total`, per-sink labels)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
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


def parse_addr(value: str, flag: str = "--metrics-addr") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {value}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]") or "0.0.0.0", int(port)


class WriteClock:
    """When each file reached which size, as the scrapes saw it: a (size, mtime) sample per scrape that finds the
    file grown. The age of the oldest byte a sink still owes (at its acknowledged offset) is interpolated between
    the samples around that offset, as kafka-lag-exporter does with offsets: accurate to about a scrape
    interval, with nothing added to the per-record path. A byte older than the first sample is dated at that
    sample (a lower bound: the start of a backfill of an old file reads as old as the file's last write)."""

    KEEP = 720  # samples per file: 3 h at a 15 s scrape interval, then the oldest go

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[int, float]]] = {}

    def note(self, path: str) -> int | None:
        """Sample the file's size and mtime; its size, None if it is gone."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        samples = self.samples.setdefault(path, [])
        if samples and st.st_size < samples[-1][0]:
            samples.clear()  # truncated, or another file under the name: the old samples are not its
        if not samples or st.st_size > samples[-1][0]:
            samples.append((st.st_size, st.st_mtime))
            del samples[:-self.KEEP]
        return st.st_size

    def age(self, path: str, offset: int, now: float) -> float:
        """Seconds since the byte at `offset` was written; 0 when `offset` is the file's end."""
        samples = self.samples.get(path)
        if not samples or offset >= samples[-1][0]:
            return 0.0
        written = samples[0][1]
        for (size0, time0), (size1, time1) in zip(samples, samples[1:]):
            if size0 <= offset < size1:
                written = time0 + (time1 - time0) * (offset - size0) / (size1 - size0)
                break
        return max(0.0, now - written)

    def keep_only(self, paths: set[str]) -> None:
        for path in self.samples.keys() - paths:
            del self.samples[path]


class PipelineCollector:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.clock = WriteClock()

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
        filtered = CounterMetricFamily(
            f"{PREFIX}_events_filtered", "Records dropped on purpose, by reason (filter:<name>, sample:<rule>, window).",
            labels=["sink", "reason"],
        )
        for lane in lanes:
            for reason, n in lane.counters.filtered_reasons().items():
                filtered.add_metric([lane.sink.name, reason], n)
        yield filtered
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
        age = GaugeMetricFamily(
            f"{PREFIX}_file_seconds_behind", "Age of the oldest byte not yet shipped (estimated from scrapes).",
            labels=["sink", "file"],
        )
        queue_bytes = GaugeMetricFamily(f"{PREFIX}_queue_bytes", "Bytes of the events waiting in the queue.", labels=["sink"])
        capacity = GaugeMetricFamily(
            f"{PREFIX}_queue_capacity_events", "Events the queue holds before reading waits.", labels=["sink"]
        )
        capacity_bytes = GaugeMetricFamily(
            f"{PREFIX}_queue_capacity_bytes", "Bytes the queue holds before reading waits.", labels=["sink"]
        )
        now = time.time()
        seen: set[str] = set()
        for lane in lanes:
            name = lane.sink.name
            queue.add_metric([name], len(lane.queue))
            queue_bytes.add_metric([name], lane.queue.nbytes)
            capacity.add_metric([name], lane.queue.max_items)
            capacity_bytes.add_metric([name], lane.queue.max_bytes)
            in_flight.add_metric([name], lane.acks.pending())
            last = lane.sender.last_success
            since.add_metric([name], now - last if last else now - self.pipeline.started_at)
            for path, nbytes in lane.behind().items():
                behind.add_metric([name, path], nbytes)
                size = self.clock.note(path)  # stat after behind()'s: a write between can only understate the age
                seen.add(path)
                age.add_metric([name, path], self.clock.age(path, size - nbytes, now) if size is not None else 0.0)
        self.clock.keep_only(seen)
        yield from (queue, queue_bytes, capacity, capacity_bytes, in_flight, since, behind, age)


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
    registry = build_registry(pipeline, collectors)
    from shipper.service.tap import TapHub, serve_http

    try:  # the metrics, and `kong-ship tap`'s /tap (local only)
        server = serve_http(host, port, make_wsgi_app(registry), TapHub(lane.sender for lane in pipeline.lanes))
    except OSError as exc:
        raise ConfigError(f"--metrics-addr {address}: cannot listen: {exc.strerror}") from None
    return server


def build_registry(pipeline: Pipeline, collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """Every metric `serve` exports, its histograms wired to the lanes' senders."""
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
    return registry
