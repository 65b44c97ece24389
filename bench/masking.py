"""Microbenchmark: the mask processor alone, and the whole per-line hot path (parse, processors, encode) per
sink, on the lines of examples/kong-3x.jsonl (and the other examples), in µs/line. Run by hand:
    python bench/masking.py
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from shipper.formats import Parser  # noqa: E402
from shipper.model import Position  # noqa: E402
from shipper.processors import build_chain  # noqa: E402
from shipper.processors.identity import identify  # noqa: E402
from shipper.sinks.moesif import MoesifSink  # noqa: E402
from shipper.sinks.segment import SegmentSink  # noqa: E402
from shipper.sinks.webhook import WebhookSink  # noqa: E402
from shipper.transform import Transformer  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
ROUNDS = 9


def lines(name: str) -> list[bytes]:
    return [line for line in (EXAMPLES / name).read_bytes().splitlines() if line.strip()]


def best(func, n: int) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return min(times) / n * 1e6


def mask_only(sample: list[bytes], copies: int) -> float:
    parser = Parser()
    chain = build_chain()
    mask = chain[-2]  # identify, mask_secrets, drop_raw
    who = identify()
    txns_rounds = []
    for _ in range(ROUNDS):
        txns = [who(parser.parse(line, Position("f", i, i + 1))) for i, line in enumerate(sample * copies)]
        txns_rounds.append(txns)
    it = iter(txns_rounds)

    def run():
        for txn in next(it):
            mask(txn)

    return best(run, len(sample) * copies)


def hot_path(sample: list[bytes], copies: int, sink) -> float:
    work = Transformer(Parser(), build_chain(), sink)
    batch = sample * copies

    def run():
        for i, line in enumerate(batch):
            work("f", line, i, i + 1)

    return best(run, len(batch))


def main() -> None:
    sample = lines("kong-3x.jsonl")
    copies = 5000 // len(sample)
    print(f"mask processor, kong-3x: {mask_only(sample, copies):.2f} µs/line")
    everything = sum((lines(n) for n in ("kong-0x.jsonl", "kong-2x.jsonl", "kong-3x.jsonl", "nginx-json.jsonl")), [])
    print(f"mask processor, all examples: {mask_only(everything, 5000 // len(everything)):.2f} µs/line")
    sinks = {
        "segment": SegmentSink("wk"),
        "moesif": MoesifSink("app", fetch_config=False),
        "webhook": WebhookSink("http://127.0.0.1:9/"),
    }
    for name, sink in sinks.items():
        print(f"hot path (parse+chain+encode) → {name}, kong-3x: {hot_path(sample, copies, sink):.2f} µs/line")


if __name__ == "__main__":
    main()
