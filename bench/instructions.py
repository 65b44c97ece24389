"""Instructions per record, counted by valgrind's callgrind: the same count for the same code and input whatever
else the machine is doing, so a change on the hot path can be compared with an older tree on a noisy machine
where seconds cannot (run by hand, never by the test suite; needs `valgrind`):

    git worktree add /tmp/before <commit>
    python bench/instructions.py --against /tmp/before          # this tree vs that one
    python bench/instructions.py --records 5000 --small 500     # more records, steadier
    python bench/instructions.py --transform --records 1000 --small 200   # Segment's transform step alone

For each tree, `kong-ship backfill --workers 0 --sink segment` (or `--sink moesif`) to a counting fake runs twice under callgrind, on
`--small` and on `--records` records of the benchmark's log; the difference divided by the difference in
records is the cost of one record end to end (read, parse, identify, mask, encode, batch, gzip, send), start-up
excluded. Start-up (the small run less its records) is printed too. `--transform` counts the transform step alone
(Transformer on lines in memory, after a warm-up round over the same lines), the Transaction path and the flat
path (`SegmentSink.flat_path`), so the two can be compared without reading, batching, gzip and sending.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.fake_vendors import CountingMoesif, CountingSegment  # noqa: E402
from bench.run import APP_ID, WRITE_KEY, cached_log  # noqa: E402

FAKES = {"segment": lambda records: CountingSegment(WRITE_KEY, records), "moesif": lambda records: CountingMoesif(APP_ID, records)}


def count(tree: str, records: int, data_dir: str, sink: str = "segment") -> int:
    log, _ = cached_log(data_dir, records)
    env = dict(os.environ, SEGMENT_WRITE_KEY=WRITE_KEY, MOESIF_APPLICATION_ID=APP_ID, PYTHONPATH=tree)
    with FAKES[sink](records) as fake, tempfile.TemporaryDirectory() as state:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", "shipper",
             "backfill", log, "--sink", sink, "--endpoint", fake.url, "--state-dir", state, "--workers", "0"],
            cwd=tree, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        tally = fake.tally(records)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or not found or tally["once"] != records:
        raise SystemExit(f"{tree}: run of {records} records failed (exit {out.returncode}, {tally}): {out.stderr[-600:]}")
    return int(found.group(1))


# `--transform`: the transform step alone (Transformer on lines already in memory), flat path or not.
TRANSFORM = """
import sys
sys.path.insert(0, {tree!r})
from shipper.formats import Parser
from shipper.processors import build_chain
from shipper.sinks.segment import SegmentSink
from shipper.transform import Transformer
with open({log!r}, "rb") as f:
    lines = [line.rstrip(b"\\n") for _, line in zip(range({warm}), f)]
parser, chain, sink = Parser(), build_chain(), SegmentSink("k")
transform = Transformer(parser, chain, sink, sink.flat_path(parser, chain) if {flat} else None)
for rounds in (lines, lines[:{records}]):  # a warm-up round first: each JWT decoded, each entity masked once
    fates = [transform("bench", line, i * 4000, i * 4000 + len(line))[0] for i, line in enumerate(rounds)]
    assert fates.count(0) == len(rounds), fates[:5]
"""


def count_transform(tree: str, records: int, warm: int, data_dir: str, flat: bool) -> int:
    log, _ = cached_log(data_dir, max(warm, 5000))
    code = TRANSFORM.format(tree=tree, log=log, records=records, warm=warm, flat=flat)
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", code],
        cwd=tree, env=dict(os.environ, PYTHONPATH=tree), capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or not found:
        raise SystemExit(f"{tree}: transform of {records} records failed (exit {out.returncode}): {out.stderr[-600:]}")
    return int(found.group(1))


def transform_only(trees: dict[str, str], args: argparse.Namespace) -> None:
    """Segment's transform step per record, the Transaction path and the flat path (SegmentSink.flat_path), with
    warm caches (a long run's state: JWTs decoded, entities masked, names classified once)."""
    for name, tree in trees.items():
        for flat in (False, True):
            small, large = (count_transform(tree, n, args.records, args.data_dir, flat) for n in (args.small, args.records))
            per = (large - small) / (args.records - args.small)
            print(f"{name:9s} transform {'flat' if flat else 'full'}: {per / 1000:8.1f} k instructions/record   ({tree})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transform", action="store_true", help="the Segment transform step alone, full and flat path")
    ap.add_argument("--against", help="another checkout of kong-ship (e.g. a git worktree of an older commit)")
    ap.add_argument("--sink", choices=sorted(FAKES), default="segment", help="the sink shipped to (a counting fake of it)")
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "kong-ship-bench"))
    args = ap.parse_args()
    trees = {"this tree": ROOT, **({"against": os.path.abspath(args.against)} if args.against else {})}
    if args.transform:
        return transform_only(trees, args)
    per_record = {}
    for name, tree in trees.items():
        small, large = (count(tree, n, args.data_dir, args.sink) for n in (args.small, args.records))
        per_record[name] = (large - small) / (args.records - args.small)
        startup = small - per_record[name] * args.small
        print(f"{name:9s} {per_record[name] / 1000:8.1f} k instructions/record   start-up {startup / 1e6:7.0f} M   ({tree})")
    if args.against:
        change = per_record["this tree"] / per_record["against"] - 1
        print(f"this tree vs against: {change:+.1%} instructions per record")


if __name__ == "__main__":
    main()
