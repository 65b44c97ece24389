"""What one record costs at each stage of kong-ship's hot path, in microseconds, on one core, in this process
(no threads, no network): the budget the profile is read against.

    python bench/stages.py [--records 50000]

Stages are timed cumulatively (each row includes the ones above it), then the per-batch work (join, gzip)
and the cost of handing lines to and events back from a worker process (pickling), per record.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
import zlib
from collections.abc import Callable

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import cached_log  # noqa: E402
from shipper.formats import Parser  # noqa: E402
from shipper.model import Position  # noqa: E402
from shipper.processors import build_chain, run_chain  # noqa: E402
from shipper.sinks.segment import SegmentSink  # noqa: E402


def best_of(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "kong-ship-bench"))
    args = ap.parse_args()
    log, _ = cached_log(args.data_dir, 100_000)
    with open(log, "rb") as f:
        lines = [line for _, line in zip(range(args.records), f)]
    n = len(lines)
    positions = [Position("bench", i * 3000, i * 3000 + len(line)) for i, line in enumerate(lines)]
    parser = Parser("auto")
    chain = build_chain()
    sink = SegmentSink("key", "http://127.0.0.1:1")
    loads, parse, encode, message = orjson.loads, parser.parse, sink.encode, sink.message

    def identify_only() -> None:
        for line, pos in zip(lines, positions):
            chain[0](parse(line, pos))

    def through_message() -> None:
        for line, pos in zip(lines, positions):
            message(run_chain(chain, parse(line, pos)))

    events: list[bytes] = []

    def everything() -> None:
        events.clear()
        for line, pos in zip(lines, positions):
            events.append(bytes(memoryview(encode(run_chain(chain, parse(line, pos))))))

    rows = [
        ("read: orjson.loads only (the floor)", lambda: [loads(x) for x in lines]),
        ("+ Parser.parse (Transaction built)", lambda: [parse(x, p) for x, p in zip(lines, positions)]),
        ("+ identity (JWT → user id)", identify_only),
        ("+ masks + drop raw", lambda: [run_chain(chain, parse(x, p)) for x, p in zip(lines, positions)]),
        ("+ SegmentSink.message (dict built)", through_message),
        ("+ orjson.dumps + copy (SegmentSink.encode)", everything),
    ]
    print(f"{n:,} records, {sum(map(len, lines)) / n:,.0f} bytes each; µs per record, best of 3, one core\n")
    print("| stage (cumulative) | µs/record | records/s |")
    print("|---|---:|---:|")
    for name, work in rows:
        seconds = best_of(3, work)
        print(f"| {name} | {seconds / n * 1e6:.2f} | {n / seconds:,.0f} |")

    everything()
    mean_event = sum(map(len, events)) / n
    per_batch = max(1, int(475_000 // (mean_event + 1)))
    batches = [events[i : i + per_batch] for i in range(0, n, per_batch)]

    def gzip_level(level: int) -> Callable[[], None]:
        def work() -> None:
            for batch in batches:
                body = b'{"batch":[' + b",".join(batch) + b'],"sentAt":"2025-01-01T00:00:00.000Z"}'
                packer = zlib.compressobj(level, zlib.DEFLATED, 31)
                packer.compress(body)
                packer.flush()

        return work

    print(f"\nper batch ({per_batch} events of {mean_event:,.0f} bytes), counted per record:\n")
    print("| stage | µs/record |")
    print("|---|---:|")
    for level in (1, 6):
        seconds = best_of(3, gzip_level(level))
        print(f"| join + gzip level {level} | {seconds / n * 1e6:.2f} |")
    print(f"| SegmentSink.request (join + gzip + httpx.Request) | "
          f"{best_of(3, lambda: [sink.request(b) for b in batches]) / n * 1e6:.2f} |")  # fmt: skip

    chunk_lines = [("file-id", line, pos.offset, pos.end) for line, pos in zip(lines, positions)]
    chunks = [chunk_lines[i : i + 512] for i in range(0, n, 512)]
    outcomes = [[(0, e, False) for e in events[i : i + 512]] for i in range(0, n, 512)]
    print(f"| pickle + unpickle 512-line chunks to a worker (lines out) | "
          f"{best_of(3, lambda: [pickle.loads(pickle.dumps(c)) for c in chunks]) / n * 1e6:.2f} |")  # fmt: skip
    print(f"| pickle + unpickle outcomes back (events in) | "
          f"{best_of(3, lambda: [pickle.loads(pickle.dumps(o)) for o in outcomes]) / n * 1e6:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
