"""The benchmark of issues 5 and 16: kong-ship against the parse floor and the peer, in one run on one generated log.

    python bench/run.py            # full: 100k-record log, 3 runs of each variant, tail for 20 s, 1M backfill
    python bench/run.py --quick    # smoke check: 20k records, 1 run of each, tail for 5 s, no 1M backfill

Measures, on the same generated Kong 3.x log (bench/records.py):
1. the parse floor: a loop that only does orjson.loads on each line (best of 2 passes; and one pass again
   before every run of every variant, so each run has a floor measured next to it on a machine whose load
   changes: the ratio reported is the median of run ÷ its floor);
2. the peer: a loop mapping each record to segment-analytics-python `track()`, then `flush()` (bench/peer.py);
3. `kong-ship backfill` to Segment, to Moesif, and to both in one run, served by the light checking fake in
   its own process (bench/light_fake.py: auth, gzip, each record's seq counted once), each variant run
   `--reps` times alternated with the floor; medians of records/s, ÷ floor and kong-ship's own CPU µs per
   record (user + system of its process tree, from wait4), the worst peak memory, and the fake's own CPU µs
   per record; the fake's capacity alone is measured first, so it is known not to be the bottleneck;
4. `kong-ship receive` at /http-log (bench/receive.py: 4 clients, batches of 100) to the light fake Segment,
   alternated with the floor as well;
5. tail latency: lines appended at a steady 2,000/s while `kong-ship tail` runs; append → acknowledgement
   (the counting fake of bench/fake_vendors.py, which notes each line's append time);
6. peak memory of backfills of 100k and 1M records, and the difference between the two.
Prints one table and writes the figures to bench/results/<time>.json and bench/results/latest-<mode>.json.

A run is only valid when every record arrived exactly once at the fake: otherwise it says so and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import light_fake, procs  # noqa: E402
from bench import receive as receive_bench  # noqa: E402
from bench.fake_vendors import CountingSegment, raw_post  # noqa: E402
from bench.light_fake import LightFakes  # noqa: E402
from bench.records import BASE_STARTED_AT, GENERATOR_VERSION, KongRecords, write_log  # noqa: E402
from bench.report import TARGETS, table, verdicts  # noqa: E402

WRITE_KEY = "bench-write-key"
APP_ID = "bench-moesif-application-id"
MIB = 1024 * 1024
TAIL_RATE = 2000  # lines per second


# -- the machine and the data --------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        # Which build: a venv's interpreter resolved (Debian's /usr/bin/python3.11 is built with PGO and LTO;
        # a pyenv build without --enable-optimizations runs the same Python code 15-20 % slower).
        "python_executable": os.path.realpath(sys.executable),
        "kernel": platform.release(),
        "orjson": orjson.__version__,
        "commit": commit,
    }


def cached_log(data_dir: str, count: int) -> tuple[str, int]:
    """The generated log of `count` records, written once and kept (generation takes longer than parsing)."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, f"kong3x-v{GENERATOR_VERSION}-{count}.log")
    meta_path = path + ".json"
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        fresh = meta.get("base_started_at") == BASE_STARTED_AT  # a log of another day may be too old for a vendor
        if fresh and meta.get("bytes") == os.path.getsize(path) and meta.get("records") == count:
            return path, meta["bytes"]
    print(f"generating {count:,} records into {path} …", file=sys.stderr, flush=True)
    size = write_log(path, count)
    with open(meta_path, "w") as f:
        json.dump({"records": count, "bytes": size, "generator": GENERATOR_VERSION, "base_started_at": BASE_STARTED_AT}, f)
    return path, size


def has_sink(name: str) -> bool:
    out = subprocess.run([sys.executable, "-m", "shipper", "backfill", "--help"], capture_output=True, text=True, cwd=ROOT)
    marker = "--sink ["
    start = out.stdout.find(marker)
    return start >= 0 and name in out.stdout[start : out.stdout.find("]", start)]


# -- 1. the parse floor --------------------------------------------------------------------------------------
def parse_floor(path: str, size: int, passes: int = 2) -> dict[str, Any]:
    """Best of `passes` (the first one also warms the page cache)."""
    loads = orjson.loads
    best = float("inf")
    count = 0
    for _ in range(passes):
        count = 0
        start = time.perf_counter()
        with open(path, "rb") as f:
            for line in f:
                loads(line)
                count += 1
        best = min(best, time.perf_counter() - start)
    return {"records": count, "seconds": best, "records_per_s": count / best, "mb_per_s": size / best / 1e6}


# -- 2. the peer ---------------------------------------------------------------------------------------------
def peer(path: str, count: int, work: str) -> dict[str, Any]:
    with CountingSegment(WRITE_KEY, count) as fake:
        env = dict(os.environ, SEGMENT_WRITE_KEY=WRITE_KEY)
        stderr_path = os.path.join(work, "peer.stderr")
        with open(stderr_path, "wb") as err:
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, os.path.join(ROOT, "bench", "peer.py"), path, fake.url, str(count)],
                env=env, stdout=subprocess.PIPE, stderr=err, timeout=1800, check=False,
            )
            wall = time.perf_counter() - start
        if out.returncode != 0:
            with open(stderr_path, errors="replace") as f:
                tail = f.read()[-800:]
            raise RuntimeError(f"the peer failed (exit {out.returncode}): {tail}")
        result = json.loads(out.stdout)
        received = fake.received()
        tally = fake.tally(count)
    return {
        "tracked": result["tracked"],
        "dropped_by_library": result["dropped"],
        "received": received,
        "lost": tally["missing"],
        "doubled": tally["doubled"],
        "seconds": result["elapsed"],
        "process_seconds": wall,
        # What reached the vendor per second: records the library dropped are not throughput.
        "records_per_s": received / result["elapsed"],
        "errors": result["errors"] or fake.errors[:5],
    }


# -- 3. kong-ship backfill -------------------------------------------------------------------------------------
def kong_ship(command: str, paths: list[str], sink: str, url: str, state: str, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "shipper", command, *paths, "--sink", sink, "--endpoint", url,
            "--state-dir", state, *(extra or [])]  # fmt: skip


def backfill(sinks: list[str], path: str, size: int, count: int, work: str, timeout: float) -> dict[str, Any]:
    """One `kong-ship backfill` of `path` to each of `sinks`, served by the light fake in its own process."""
    env = dict(os.environ, SEGMENT_WRITE_KEY=WRITE_KEY, MOESIF_APPLICATION_ID=APP_ID)
    name = "+".join(sinks)
    state = tempfile.mkdtemp(prefix=f"state-{name}-", dir=work)
    keys = {"segment_key": WRITE_KEY if "segment" in sinks else None, "moesif_app": APP_ID if "moesif" in sinks else None}
    with LightFakes(count, **keys) as fakes:
        argv = [sys.executable, "-m", "shipper", "backfill", path, "--state-dir", state]
        for sink in sinks:
            argv += ["--sink", sink, "--endpoint", f"{sink}={fakes.url(sink)}"]
        run = procs.run(argv, env, os.path.join(work, f"backfill-{name}-{count}.stderr"), timeout=timeout)
        report = fakes.tally()
    tallies = [report[sink] for sink in sinks]
    delivered = sum(t["records"] for t in tallies)
    return {
        "sink": name,
        "sinks": sinks,
        "records": count,
        "exit": run.returncode,
        "seconds": run.elapsed,
        "records_per_s": count / run.elapsed,
        "mb_per_s": size / run.elapsed / 1e6,
        "peak_pss_tree_mib": run.peak_pss_tree,
        "peak_rss_main_mib": run.peak_rss_main,
        "peak_rss_worker_mib": run.peak_rss_worker,
        "processes": run.peak_processes,
        "cpu_seconds": run.cpu_seconds,  # kong-ship and the workers it reaped (wait4)
        "cpu_us_per_record": run.cpu_seconds / count * 1e6,  # per input record, whatever the number of sinks
        # The main process's share and the workers' (issue 16: which side stands in the way).
        "cpu_us_per_record_main": (run.cpu_seconds - run.cpu_seconds_workers) / count * 1e6,
        "cpu_us_per_record_workers": run.cpu_seconds_workers / count * 1e6,
        "fake_cpu_seconds": report["cpu_seconds"],  # the light fake's process
        "fake_cpu_us_per_record": report["cpu_seconds"] / max(delivered, 1) * 1e6,
        "delivered_once": min(t["once"] for t in tallies),
        "missing": sum(t["missing"] for t in tallies),
        "doubled": sum(t["doubled"] for t in tallies),
        "unexpected": sum(t["unexpected"] for t in tallies),
        "fake_errors": [e for t in tallies for e in t["errors"]][:5],
        "summary": [line for line in run.stderr.splitlines() if not line.startswith("kong-ship: INFO")][-4:],
    }


def alternated(name: str, measure: Callable[[], dict[str, Any]], log: str, size: int, reps: int,
               floors: list[float], step: Callable[[str], None]) -> dict[str, Any]:
    """`reps` runs of `measure`, each after a parse floor of its own (floor, run, floor, run …): the medians
    (records/s, MB/s, ÷ floor of each pair, CPU µs/record), the worst memory and delivery, and every run."""
    runs = []
    for i in range(reps):
        step(f"{name}: floor, run {i + 1} of {reps}")
        floor = parse_floor(log, size, passes=1)["records_per_s"]
        floors.append(floor)
        one = measure()
        one["floor_records_per_s"] = floor
        one["floor_ratio"] = one["records_per_s"] / floor
        runs.append(one)
    out = dict(runs[-1])
    for key in ("records_per_s", "mb_per_s", "floor_ratio", "floor_records_per_s", "seconds", "cpu_us_per_record",
                "cpu_us_per_record_main", "cpu_us_per_record_workers", "fake_cpu_us_per_record", "one_request_ms"):  # fmt: skip
        if key in out:
            out[key] = statistics.median(run[key] for run in runs)
    for key in ("peak_pss_tree_mib", "peak_rss_main_mib", "peak_rss_worker_mib", "processes", "missing", "doubled",
                "unexpected"):  # fmt: skip
        if key in out:
            out[key] = max(run[key] for run in runs)
    if "exit" in out:
        out["exit"] = next((run["exit"] for run in runs if run["exit"]), 0)
        out["fake_errors"] = [e for run in runs for e in run["fake_errors"]][:5]
    out["runs"] = [{k: v for k, v in run.items() if k != "runs"} for run in runs]
    return out


def receive_runs(records: int, reps: int, log: str, size: int, floors: list[float], work: str,
                 step: Callable[[str], None]) -> dict[str, Any]:
    """bench/receive.py's run (4 clients posting batches of 100 to `kong-ship receive` at /http-log, shipping
    to the light fake Segment), alternated with the floor."""
    gen = KongRecords()
    batch, clients = 100, 4

    def measure() -> dict[str, Any]:
        one = receive_bench.one_run(records, batch, clients, gen, work, len(floors), None, light=True)
        return {"records_per_s": one["rate"], "mb_per_s": one["mbps"], "one_request_ms": one["one_request_ms"],
                "cpu_us_per_record": one["cpu_us_per_record"], "valid": bool(one["valid"])}

    out = alternated("receive http-log", measure, log, size, reps, floors, step)
    out.update(records=records, batch=batch, clients=clients, valid=all(run["valid"] for run in out["runs"]))
    return out


def fake_capacity(sink: str, rounds: int) -> dict[str, float]:
    """Records/s the light fake takes alone, and its CPU µs per record, from pre-built gzip batches shaped like
    kong-ship's."""
    gen = KongRecords(seed=99)
    per_batch = 400 if sink == "segment" else 200
    events = []
    for seq in range(per_batch):
        rec = gen.record(seq)
        req = rec["request"]
        if sink == "segment":
            events.append({
                "type": "track", "event": f"API Request: {req['method']}", "userId": f"user-{seq % 300}",
                "properties": {"method": req["method"], "uri": req["url"], "rawpath": req["uri"], "path": req["uri"].split("?")[0],
                               "queryString": req["uri"].partition("?")[2], "queryObject": req["querystring"],
                               "queryJson": orjson.dumps(req["querystring"]).decode(), "statusCode": rec["response"]["status"],
                               "timeOfRequest": 12.0, "timeOfKong": 1.0, "timeOfProxy": 10.0, "service": rec["service"]["name"],
                               "route": rec["route"]["name"]},
                "context": {"library": {"name": "kong-ship", "version": "0"}, "ip": rec["client_ip"],
                            "userAgent": req["headers"]["user-agent"]},
                "timestamp": "2025-11-22T08:26:40.000Z", "messageId": req["id"],
            })  # fmt: skip
        else:
            events.append({
                "request": {"time": "2025-11-22T08:26:40.000Z", "uri": req["url"], "verb": req["method"],
                            "headers": req["headers"], "ip_address": rec["client_ip"], "api_version": "1.0"},
                "response": {"time": "2025-11-22T08:26:40.012Z", "status": rec["response"]["status"],
                             "headers": rec["response"]["headers"]},
                "direction": "Incoming", "transaction_id": req["id"], "user_id": f"user-{seq % 300}",
                "metadata": {"kong": {"service": {"name": rec["service"]["name"]}, "route": {"name": rec["route"]["name"]}}},
            })  # fmt: skip
    if sink == "segment":
        body = orjson.dumps({"batch": events, "sentAt": "2025-11-22T08:26:41.000Z"})
        headers = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
                   "Content-Type": "application/json", "Content-Encoding": "gzip"}  # fmt: skip
        path = "/v1/batch"
    else:
        body = orjson.dumps(events)
        headers = {"X-Moesif-Application-Id": APP_ID, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        path = "/v1/events/batch"
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    gz = packer.compress(body) + packer.flush()
    return light_fake.capacity(sink, WRITE_KEY if sink == "segment" else APP_ID,
                               lambda port: raw_post(port, path, headers, gz), per_batch, rounds)


# -- 4. tail latency -----------------------------------------------------------------------------------------
class SteadyWriter(threading.Thread):
    """Appends line i at start + i/rate (one O_APPEND write each, as Kong's file-log does), stamping each
    with the monotonic time of its write in place of a fixed-width placeholder."""

    PLACEHOLDER = "0" * 19  # in the query string (`appended=…`) and in Kong's querystring object (`"appended":"…"`)
    _IN_URI, _IN_OBJECT = b"appended=" + PLACEHOLDER.encode(), b'"appended":"' + PLACEHOLDER.encode()

    def __init__(self, path: str, lines: list[bytes], rate: float) -> None:
        super().__init__(daemon=True, name="steady-writer")
        self.path, self.lines, self.rate = path, lines, rate
        self.worst_lag = 0.0
        self.elapsed = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            start = time.monotonic()
            for i, line in enumerate(self.lines):
                due = start + i / self.rate
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)
                else:
                    self.worst_lag = max(self.worst_lag, now - due)
                if self.stop.is_set():
                    return
                stamp = b"%019d" % time.monotonic_ns()
                os.write(fd, line.replace(self._IN_URI, b"appended=" + stamp).replace(self._IN_OBJECT, b'"appended":"' + stamp))
            self.elapsed = time.monotonic() - start
        finally:
            os.close(fd)


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def tail_latency(seconds: float, work: str) -> dict[str, Any]:
    count = int(seconds * TAIL_RATE)
    gen = KongRecords(seed=7)
    lines = [gen.line(seq, appended=SteadyWriter.PLACEHOLDER) for seq in range(count)]
    warmup = gen.line(count)  # seq `count`: proves kong-ship is following the file before the clock starts
    log = os.path.join(work, "tail.log")
    open(log, "wb").close()
    state = tempfile.mkdtemp(prefix="state-tail-", dir=work)
    env = dict(os.environ, SEGMENT_WRITE_KEY=WRITE_KEY)
    writer = SteadyWriter(log, lines, TAIL_RATE)
    failure: list[str] = []

    with CountingSegment(WRITE_KEY, count + 1) as fake:
        done = threading.Event()

        def drive() -> None:
            # Warm-up line first: the clock starts only once kong-ship is following the file.
            try:
                with open(log, "ab") as f:
                    f.write(warmup)
                fake.wait_for(lambda: fake.seen[count], timeout=60, what="the warm-up line acknowledged")
                writer.start()
                writer.join()
                fake.wait_for(lambda: fake.received() >= count + 1, timeout=30,
                              what="every appended line acknowledged within 30 s of the last append")
            except AssertionError as exc:
                failure.append(str(exc))
            finally:
                done.set()

        driver = threading.Thread(target=drive, daemon=True, name="tail-driver")
        driver.start()
        run = procs.run(kong_ship("tail", [log], "segment", fake.url, state), env,
                        os.path.join(work, "tail.stderr"), stop_when=done.is_set, timeout=seconds + 180)  # fmt: skip
        writer.stop.set()
        driver.join()
        tally = fake.tally(count)
        latencies = sorted(fake.latencies())
    ms = [v / 1e6 for v in latencies]
    return {
        "rate": TAIL_RATE,
        "lines": count,
        "writer_seconds": writer.elapsed,
        "writer_worst_lag_ms": writer.worst_lag * 1000,
        "acknowledged": len(ms),
        "missing": tally["missing"],
        "doubled": tally["doubled"],
        "p50_ms": percentile(ms, 0.50),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1] if ms else float("nan"),
        "exit": run.returncode,
        "peak_pss_tree_mib": run.peak_pss_tree,
        "peak_rss_main_mib": run.peak_rss_main,
        "failure": failure,
        "options": "defaults (--flush-interval 0.25, --poll-interval 0.25, --workers 0)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke check: 20k records, 1 run of each variant (beside its floor), 5 s of tail, no 1M backfill")
    ap.add_argument("--records", type=int, help="records in the main log (default 100,000; quick 20,000)")
    ap.add_argument("--big", type=int, help="records of the large memory backfill (default 1,000,000; quick: none; 0: none)")
    ap.add_argument("--tail-seconds", type=float, help="seconds of steady appends (default 20; quick 5)")
    ap.add_argument("--reps", type=int, help="runs of each variant, each beside a floor of its own (default 3; quick 1)")
    ap.add_argument("--receive-records", type=int, help="records posted per receive run (default 40,000; quick 5,000)")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "kong-ship-bench"),
                    help="where generated logs are kept between runs (default: %(default)s)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="where the JSON goes")
    args = ap.parse_args()
    records = args.records or (20_000 if args.quick else 100_000)
    big = args.big if args.big is not None else (0 if args.quick else 1_000_000)
    tail_seconds = args.tail_seconds or (5.0 if args.quick else 20.0)
    reps = args.reps or (1 if args.quick else 3)
    receive_records = args.receive_records or (5_000 if args.quick else 40_000)

    work = tempfile.mkdtemp(prefix="kong-ship-bench-")
    started = datetime.now(UTC)
    log, size = cached_log(args.data_dir, records)
    big_log = cached_log(args.data_dir, big) if big else None
    r: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "log": {"records": records, "bytes": size, "mean_record_bytes": round(size / records)},
        "targets": TARGETS,
        "notes": {},
        "backfill": {},
        "fake_capacity": {},  # records/s of the light fake alone, per vendor
        "light_fake": {},  # the same, with its CPU µs per record
        "floors": [],  # records/s of each floor measured beside a run
        "memory": [],
    }

    def step(name: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {name}", file=sys.stderr, flush=True)

    t0 = time.monotonic()
    # kong-ship as installed: its bytecode compiled once. With PYTHONDONTWRITEBYTECODE set (as in some
    # containers) and a tree being edited, every start would otherwise compile the changed modules again
    # (~0.2 s of CPU each time, counted against the run). compileall writes the caches whatever that says.
    compileall.compile_dir(os.path.join(ROOT, "shipper"), quiet=1)
    moesif = has_sink("moesif")
    if not moesif:
        r["notes"]["moesif"] = "n/a (no moesif sink yet)"
    rounds = 50 if args.quick else 150
    step("light fake capacity (alone)")
    for sink in ("segment", "moesif") if moesif else ("segment",):
        r["light_fake"][sink] = fake_capacity(sink, rounds)
        r["fake_capacity"][sink] = r["light_fake"][sink]["records_per_s"]
    step("parse floor")
    r["floor"] = parse_floor(log, size)
    step("peer (segment-analytics-python)")
    r["peer"] = peer(log, records, work)
    timeout = max(300.0, records / 500)
    floors: list[float] = r["floors"]
    variants = [["segment"], ["moesif"], ["segment", "moesif"]] if moesif else [["segment"]]
    for sinks in variants:
        name = "+".join(sinks)
        r["backfill"][name] = alternated(f"backfill → {name}", lambda sinks=sinks: backfill(sinks, log, size, records, work, timeout),
                                         log, size, reps, floors, step)  # fmt: skip
    r["receive"] = receive_runs(receive_records, reps, log, size, floors, work, step)
    step(f"kong-ship tail at {TAIL_RATE}/s for {tail_seconds:.0f} s")
    r["tail"] = tail_latency(tail_seconds, work)
    memory = [r["backfill"]["segment"]]
    if big_log:
        step(f"kong-ship backfill of {big:,} records → Segment")
        memory.append(backfill(["segment"], big_log[0], big_log[1], big, work, max(600.0, big / 500)))
    r["memory"] = memory
    r["seconds"] = time.monotonic() - t0
    step("done")

    runs = [run for b in r["backfill"].values() for run in b["runs"]] + memory[1:]
    bad = [b for b in runs if not (b["missing"] == b["doubled"] == b["unexpected"] == 0 and b["exit"] == 0 and not b["fake_errors"])]
    valid = not bad
    valid = valid and r["tail"]["missing"] == 0 and not r["tail"]["failure"] and r["receive"]["valid"]
    r["valid"] = valid
    r["table"] = table(r)
    r["verdicts"] = verdicts(r)

    os.makedirs(args.out, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    for name in (f"{stamp}-{r['mode']}.json", f"latest-{r['mode']}.json"):
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(r, f, indent=2)
    m = r["machine"]
    print(f"\nkong-ship benchmark ({r['mode']}), {r['started']}, commit {m['commit']}: {m['nproc']} × {m['cpu_model']}, "
          f"{m['memory_gib']} GiB, Python {m['python']} ({m.get('python_executable', '?')})")  # fmt: skip
    print(f"log: {records:,} Kong 3.x records, {size / MIB:.0f} MiB, {r['log']['mean_record_bytes']:,} bytes/record\n")
    print(r["table"])
    print()
    print("\n".join(r["verdicts"]))
    if not valid:
        problems = [f"{b['sink']} {b['records']}: exit {b['exit']}, missing {b['missing']}, doubled {b['doubled']}, "
                    f"errors {b['fake_errors']}, {b['summary']}" for b in bad]  # fmt: skip
        print("\nINVALID RUN: " + "; ".join(problems) + f"; tail {r['tail']['failure']}; "
              f"receive all once: {r['receive']['valid']}", file=sys.stderr)
        print(f"stderr of each process is in {work}", file=sys.stderr)
        sys.exit(1)
    latest = os.path.join(args.out, f"latest-{r['mode']}.json")
    print(f"\nfigures: {latest} ({r['seconds']:.0f} s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
