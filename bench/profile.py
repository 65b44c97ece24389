"""Profile `kong-ship backfill` to the counting fake Segment with py-spy (all threads, worker processes too),
and print where the time goes: samples per process and thread, then the top functions by own time and by
inclusive time.

    python bench/profile.py                 # the benchmark's 100k-record log, --workers auto
    python bench/profile.py --workers 0     # everything in one process: the single-core cost per record
    python bench/profile.py --gil           # only samples holding the GIL (who the threads queue behind)

Needs py-spy (`pip install -e '.[bench]'`); the raw stacks are kept beside the report under bench/results/.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.fake_vendors import CountingSegment  # noqa: E402
from bench.run import WRITE_KEY, cached_log  # noqa: E402

_LINE_NUMBER = re.compile(r":\d+\)$")
_THREAD = re.compile(r"^thread \(\d+\): (.*)$")
_ENTRY_POINTS = ("Thread.run (threading.py)", "worker (multiprocessing/pool.py)", "_run_code (<frozen runpy>)")


def _function(frame: str) -> str:
    """`Lane._pump (shipper/pipeline.py:232)` → `Lane._pump (shipper/pipeline.py)`."""
    return _LINE_NUMBER.sub(")", frame)


def summarize(raw_path: str, main_pid_hint: str = "") -> dict:
    """Aggregate py-spy's raw output (one `frame;frame;… count` line per distinct stack)."""
    by_process: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own_by_role: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = stack.split(";")
            processes = [fr for fr in frames if fr.startswith("process ")]
            role = "worker" if len(processes) > 1 else "main"
            thread = next((m.group(1) for fr in frames if (m := _THREAD.match(fr))), "?")
            code = [_function(fr) for fr in frames if not fr.startswith(("process ", "thread ("))]
            if not code:
                continue
            # Inclusive time starts below the thread's or the pool worker's entry point: the frames above it
            # (runpy, click, the fork from Lane.__init__) are on every stack and say nothing.
            entry = max((i for i, fn in enumerate(code) if fn.startswith(_ENTRY_POINTS)), default=-1)
            body = code[entry + 1 :] or code
            total += count
            by_process[role] += count
            by_thread[f"{role}: {thread}"] += count
            own[code[-1]] += count
            own_by_role[role][code[-1]] += count
            for fn in set(body):
                inclusive[fn] += count
    return {"total": total, "by_process": by_process, "by_thread": by_thread, "own": own, "inclusive": inclusive,
            "own_by_role": own_by_role}  # fmt: skip


def report(s: dict, top: int) -> str:
    total = s["total"] or 1
    out = [f"{s['total']:,} samples (all processes and threads; idle threads excluded)", ""]

    def section(title: str, counter: Counter, n: int) -> None:
        out.append(f"{title}")
        out.append("| % of samples | samples | where |")
        out.append("|---:|---:|---|")
        for name, count in counter.most_common(n):
            out.append(f"| {100 * count / total:5.1f} | {count:,} | `{name}` |")
        out.append("")

    section("By process", s["by_process"], 10)
    section("By thread", s["by_thread"], 12)
    section(f"Top {top} by own time (the function on top of the stack)", s["own"], top)
    for role, counter in sorted(s["own_by_role"].items()):
        section(f"Top {top} by own time, {role} process", counter, top)
    section(f"Top {top} by inclusive time (the function anywhere on the stack below its thread's entry point)",
            s["inclusive"], top)
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workers", default="auto", help="passed to kong-ship backfill --workers")
    ap.add_argument("--rate", type=int, default=250, help="samples per second per thread")
    ap.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "kong-ship-bench"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args()

    log, size = cached_log(args.data_dir, args.records)
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = f"profile-{stamp}-workers-{args.workers}" + ("-gil" if args.gil else "")
    raw = os.path.join(args.out, tag + ".raw")
    env = dict(os.environ, SEGMENT_WRITE_KEY=WRITE_KEY)
    with CountingSegment(WRITE_KEY, args.records) as fake, tempfile.TemporaryDirectory() as state:
        # --nonblocking: py-spy otherwise stops the process for every sample, and the profile of a stopped
        # process is the profile of the stopping.
        spy = ["py-spy", "record", "--subprocesses", "--threads", "--nonblocking", "--rate", str(args.rate),
               "--format", "raw", "--output", raw] + (["--gil"] if args.gil else [])  # fmt: skip
        command = [sys.executable, "-m", "shipper", "backfill", log, "--sink", "segment", "--endpoint", fake.url,
                   "--state-dir", state, "--workers", args.workers]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(spy + ["--"] + command, env=env, capture_output=True, text=True, cwd=ROOT)
        elapsed = time.perf_counter() - start
        tally = fake.tally(args.records)
    if done.returncode != 0 or tally["once"] != args.records:
        sys.exit(f"profiled run failed (exit {done.returncode}, {tally}): {done.stderr[-1500:]}")
    text = (f"kong-ship backfill of {args.records:,} records ({size / 1e6:.0f} MB) → fake Segment, --workers "
            f"{args.workers}, under py-spy{' --gil' if args.gil else ''}: {elapsed:.1f} s, "
            f"{args.records / elapsed:,.0f} records/s (sampling slows it)\n\n") + report(summarize(raw), args.top)
    with open(os.path.join(args.out, tag + ".md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"\nreport: {os.path.join(args.out, tag + '.md')}; raw stacks: {raw}")


if __name__ == "__main__":
    main()
