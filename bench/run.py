"""The benchmark of issue 5: kong-ship against the parse floor and the peer, in one run on one generated log.

    python bench/run.py            # full: 100k-record log, tail for 20 s, backfills of 100k and 1M records
    python bench/run.py --quick    # smoke check: 20k records, tail for 5 s, no 1M backfill

Measures, on the same generated Kong 3.x log (bench/records.py):
1. the parse floor: a loop that only does orjson.loads on each line;
2. the peer: a loop mapping each record to segment-analytics-python `track()`, then `flush()` (bench/peer.py);
3. `kong-ship backfill` to a loopback fake Segment and a fake Moesif that count records without storing them
   (bench/fake_vendors.py): records/s, MB/s, peak memory of the kong-ship processes; each fake's capacity
   alone is measured too, so it is known not to be the bottleneck;
4. tail latency: lines appended at a steady 2,000/s while `kong-ship tail` runs; append → acknowledgement;
5. peak memory of backfills of 100k and 1M records.
Prints one table and writes the figures to bench/results/<time>.json and bench/results/latest.json.

A run is only valid when every record arrived exactly once at the fake: otherwise it says so and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import procs  # noqa: E402
from bench.fake_vendors import CountingMoesif, CountingSegment, capacity, raw_post  # noqa: E402
from bench.records import BASE_STARTED_AT, GENERATOR_VERSION, KongRecords, write_log  # noqa: E402

WRITE_KEY = "bench-write-key"
APP_ID = "bench-moesif-application-id"
MIB = 1024 * 1024
TAIL_RATE = 2000  # lines per second
TARGETS = {"floor_ratio": 0.5, "peer_ratio": 20.0, "rss_mib": 100.0, "tail_p99_ms": 500.0}


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


def backfill(sink: str, path: str, size: int, count: int, work: str, timeout: float) -> dict[str, Any]:
    fake_class = CountingSegment if sink == "segment" else CountingMoesif
    fake = fake_class(WRITE_KEY if sink == "segment" else APP_ID, count)
    env = dict(os.environ, SEGMENT_WRITE_KEY=WRITE_KEY, MOESIF_APPLICATION_ID=APP_ID)
    state = tempfile.mkdtemp(prefix=f"state-{sink}-", dir=work)
    with fake:
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        run = procs.run(kong_ship("backfill", [path], sink, fake.url, state), env,
                        os.path.join(work, f"backfill-{sink}-{count}.stderr"), timeout=timeout)  # fmt: skip
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        tally = fake.tally(count)
        errors = fake.errors[:5]
    bench_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "sink": sink,
        "records": count,
        "exit": run.returncode,
        "seconds": run.elapsed,
        "records_per_s": count / run.elapsed,
        "mb_per_s": size / run.elapsed / 1e6,
        "peak_pss_tree_mib": run.peak_pss_tree,
        "peak_rss_main_mib": run.peak_rss_main,
        "peak_rss_worker_mib": run.peak_rss_worker,
        "processes": run.peak_processes,
        "cpu_seconds": run.cpu_seconds,
        "fake_cpu_seconds": bench_cpu,  # the fake's threads and the memory sampler, in this process
        "delivered_once": tally["once"],
        "missing": tally["missing"],
        "doubled": tally["doubled"],
        "unexpected": tally["unexpected"],
        "fake_errors": errors,
        "summary": [line for line in run.stderr.splitlines() if not line.startswith("kong-ship: INFO")][-4:],
    }


def fake_capacity(sink: str, rounds: int) -> float:
    """Records/s the fake takes alone, from pre-built gzip batches shaped like kong-ship's."""
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
    make = (lambda n: CountingSegment(WRITE_KEY, n)) if sink == "segment" else (lambda n: CountingMoesif(APP_ID, n))
    return capacity(make, lambda port: raw_post(port, path, headers, gz), per_batch, rounds)


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


# -- the report ----------------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def memory_cell(m: dict[str, Any]) -> str:
    worker = m.get("peak_rss_worker_mib") or 0
    return f"{m['peak_pss_tree_mib']:.0f} / {m['peak_rss_main_mib']:.0f} / " + (f"{worker:.0f}" if worker else "–")


def table(r: dict[str, Any]) -> str:
    floor = r["floor"]["records_per_s"]
    peer_rate = r["peer"]["records_per_s"]
    rows = [("measure", "records/s", "MB/s", "peak MiB: all PSS / main RSS / worker RSS", "÷ floor", "÷ peer", "notes")]

    def add(name: str, rate: float | None, mbs: float | None, mem: str, notes: str) -> None:
        rows.append((name, fmt(rate), fmt(mbs, 1), mem, fmt(rate / floor, 3) if rate else "", fmt(rate / peer_rate, 1) if rate else "", notes))

    add("parse floor (orjson.loads per line)", floor, r["floor"]["mb_per_s"], "", "best of 2 passes")
    p = r["peer"]
    add("peer: segment-analytics-python", peer_rate, None, "",
        f"delivered/s; dropped {p['dropped_by_library']:,} of {r['log']['records']:,} (queue full), lost {p['lost']:,}")
    for name in ("segment", "moesif"):
        b = r["backfill"].get(name)
        cap = r["fake_capacity"].get(name)
        label = f"kong-ship backfill → fake {name.capitalize()}"
        if b is None:
            rows.append((label, "n/a", "", "", "", "", r["notes"].get(name, "not measured")))
            continue
        mem = memory_cell(b)
        check = "all once" if b["missing"] == b["doubled"] == b["unexpected"] == 0 else (
            f"missing {b['missing']}, doubled {b['doubled']}")
        add(label, b["records_per_s"], b["mb_per_s"], mem,
            f"{check}; {b['processes']} processes; fake alone {fmt(cap)} rec/s, used {b['fake_cpu_seconds']:.1f} CPU s")
    t = r.get("tail")
    if t:
        rows.append((f"tail at {t['rate']:,} lines/s → Segment", "", "", memory_cell(t),
                     "", "", f"append→ack p50 {t['p50_ms']:.0f} ms, p99 {t['p99_ms']:.0f} ms, max {t['max_ms']:.0f} ms "
                             f"({t['acknowledged']:,} lines, missing {t['missing']})"))  # fmt: skip
    for m in r["memory"]:
        rows.append((f"backfill {m['records']:,} records → Segment", fmt(m["records_per_s"]), fmt(m["mb_per_s"], 1),
                     memory_cell(m), "", "",
                     "all once" if m["missing"] == m["doubled"] == 0 else f"missing {m['missing']}, doubled {m['doubled']}"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdicts(r: dict[str, Any]) -> list[str]:
    out = []
    seg = r["backfill"].get("segment")
    if seg:
        ratio = seg["records_per_s"] / r["floor"]["records_per_s"]
        out.append(f"{'PASS' if ratio >= TARGETS['floor_ratio'] else 'MISS'} backfill ÷ floor = {ratio:.3f} (target ≥ {TARGETS['floor_ratio']})")
        ratio = seg["records_per_s"] / r["peer"]["records_per_s"]
        out.append(f"{'PASS' if ratio >= TARGETS['peer_ratio'] else 'MISS'} backfill ÷ peer = {ratio:.1f} (target ≥ {TARGETS['peer_ratio']:.0f})")
    for m in r["memory"]:
        mem = m["peak_pss_tree_mib"]
        out.append(f"{'PASS' if mem < TARGETS['rss_mib'] else 'MISS'} peak memory at {m['records']:,} records = {mem:.0f} MiB "
                   f"(all processes, PSS; main process RSS {m['peak_rss_main_mib']:.0f}, "
                   f"largest worker RSS {m['peak_rss_worker_mib']:.0f}) (target < 100)")
    t = r.get("tail")
    if t:
        out.append(f"{'PASS' if t['p99_ms'] < TARGETS['tail_p99_ms'] else 'MISS'} tail p99 = {t['p99_ms']:.0f} ms (target < 500)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke check: 20k records, 5 s of tail, no 1M backfill")
    ap.add_argument("--records", type=int, help="records in the main log (default 100,000; quick 20,000)")
    ap.add_argument("--big", type=int, help="records of the large memory backfill (default 1,000,000; quick: none; 0: none)")
    ap.add_argument("--tail-seconds", type=float, help="seconds of steady appends (default 20; quick 5)")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "kong-ship-bench"),
                    help="where generated logs are kept between runs (default: %(default)s)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="where the JSON goes")
    args = ap.parse_args()
    records = args.records or (20_000 if args.quick else 100_000)
    big = args.big if args.big is not None else (0 if args.quick else 1_000_000)
    tail_seconds = args.tail_seconds or (5.0 if args.quick else 20.0)

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
        "fake_capacity": {},
        "memory": [],
    }

    def step(name: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {name}", file=sys.stderr, flush=True)

    t0 = time.monotonic()
    moesif = has_sink("moesif")
    if not moesif:
        r["notes"]["moesif"] = "n/a (no moesif sink yet)"
    rounds = 50 if args.quick else 150
    step("fake capacity")
    for sink in ("segment", "moesif") if moesif else ("segment",):
        r["fake_capacity"][sink] = fake_capacity(sink, rounds)
    step("parse floor")
    r["floor"] = parse_floor(log, size)
    step("peer (segment-analytics-python)")
    r["peer"] = peer(log, records, work)
    timeout = max(300.0, records / 500)
    step("kong-ship backfill → Segment")
    r["backfill"]["segment"] = backfill("segment", log, size, records, work, timeout)
    if moesif:
        step("kong-ship backfill → Moesif")
        r["backfill"]["moesif"] = backfill("moesif", log, size, records, work, timeout)
    step(f"kong-ship tail at {TAIL_RATE}/s for {tail_seconds:.0f} s")
    r["tail"] = tail_latency(tail_seconds, work)
    memory = [r["backfill"]["segment"]]
    if big_log:
        step(f"kong-ship backfill of {big:,} records → Segment")
        memory.append(backfill("segment", big_log[0], big_log[1], big, work, max(600.0, big / 500)))
    r["memory"] = memory
    r["seconds"] = time.monotonic() - t0
    step("done")

    valid = all(b["missing"] == b["doubled"] == b["unexpected"] == 0 and b["exit"] == 0 and not b["fake_errors"]
                for b in [*r["backfill"].values(), *memory])  # fmt: skip
    valid = valid and r["tail"]["missing"] == 0 and not r["tail"]["failure"]
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
          f"{m['memory_gib']} GiB, Python {m['python']}")  # fmt: skip
    print(f"log: {records:,} Kong 3.x records, {size / MIB:.0f} MiB, {r['log']['mean_record_bytes']:,} bytes/record\n")
    print(r["table"])
    print()
    print("\n".join(r["verdicts"]))
    if not valid:
        problems = [f"{b['sink']} {b['records']}: exit {b['exit']}, missing {b['missing']}, doubled {b['doubled']}, "
                    f"errors {b['fake_errors']}, {b['summary']}" for b in [*r["backfill"].values(), *memory]]  # fmt: skip
        print("\nINVALID RUN: " + "; ".join(problems) + f"; tail {r['tail']['failure']}", file=sys.stderr)
        print(f"stderr of each process is in {work}", file=sys.stderr)
        sys.exit(1)
    latest = os.path.join(args.out, f"latest-{r['mode']}.json")
    print(f"\nfigures: {latest} ({r['seconds']:.0f} s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
