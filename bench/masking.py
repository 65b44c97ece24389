"""Microbenchmark of the masks on the per-line hot path (parse → identify → mask → encode), on the lines of
examples/kong-3x.jsonl, in µs/line. Run by hand, never by the test suite:

    python bench/masking.py                       # no masks vs the masks
    git show ce7f73b:shipper/processors/masking.py > /tmp/old_masking.py
    python bench/masking.py --against /tmp/old_masking.py     # ... vs an older masking module too

The variants run interleaved in short rounds (a shared, busy machine slows them alike) and the 10th and 25th
percentiles of the rounds are printed: the low percentiles are the code's cost, the rest is the neighbours.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from shipper.formats import Parser  # noqa: E402
from shipper.processors.identity import identify  # noqa: E402
from shipper.processors.masking import Masker, drop_raw  # noqa: E402
from shipper.sinks.moesif import MoesifSink  # noqa: E402
from shipper.sinks.segment import SegmentSink  # noqa: E402
from shipper.sinks.webhook import WebhookSink  # noqa: E402
from shipper.transform import Transformer  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SINKS = {
    "segment": lambda: SegmentSink("wk"),
    "moesif": lambda: MoesifSink("app", fetch_config=False),
    "webhook": lambda: WebhookSink("http://127.0.0.1:9/"),
}


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--against", help="an older masking.py whose mask_secrets() to compare with")
    args.add_argument("--rounds", type=int, default=300)
    opts = args.parse_args()
    lines = [line for line in (EXAMPLES / "kong-3x.jsonl").read_bytes().splitlines() if line.strip()]
    batch = lines * 50
    masks = {"none": None, "masks": Masker()}
    if opts.against:
        spec = importlib.util.spec_from_file_location("older_masking", opts.against)
        older = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(older)
        masks["older"] = older.mask_secrets()
    for sink_name, make_sink in SINKS.items():
        works = {
            name: Transformer(Parser(), [identify(), *([mask] if mask else []), drop_raw], make_sink())
            for name, mask in masks.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in works}
        for _ in range(opts.rounds):
            for name, work in works.items():
                started = time.perf_counter_ns()
                for i, line in enumerate(batch):
                    work("f", line, i, i + 1)
                samples[name].append((time.perf_counter_ns() - started) / len(batch) / 1000)
        for name, values in samples.items():
            values.sort()
            p10, p25 = values[len(values) // 10], values[len(values) // 4]
            print(f"{sink_name:8s} {name:6s} p10 {p10:6.2f}  p25 {p25:6.2f} µs/line")


if __name__ == "__main__":
    main()
