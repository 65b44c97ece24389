"""How many Kong records per second `kong-ship receive` accepts at /http-log, over loopback.

    python bench/receive.py                       # 3 runs of 40,000 records, batches of 100, 4 clients
    python bench/receive.py --batch 1 --records 4000   # http-log's default queue.max_batch_size

Each run starts a fresh `kong-ship receive` (its own state directory) shipping to a loopback fake Segment that
counts records (bench/fake_vendors.py), and `--clients` threads (Kong's workers, each with its keep-alive
connection) POST pre-encoded arrays of `--batch` Kong-sized records (bench/records.py, ~2.7 KB each) as fast
as they are answered. "Accepted" is records answered 200, i.e. fsynced in the spool, over the time from the
first request to the last answer. The backlog bound is set far above the load, so what is measured is the
receiver, not the vendor; the pipeline still runs beside it (on the same cores), as in production. Also timed:
one request of 1,000 records on an idle receiver. A run counts only when every record then reached the fake
exactly once. Prints the median of the runs.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.fake_vendors import CountingSegment  # noqa: E402
from bench.records import KongRecords  # noqa: E402

TOKEN = "bench-token"
WRITE_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_receiver(port: int, state_dir: str, vendor_url: str, stderr_path: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KONG_SHIP_", "SEGMENT_"))}
    env.update(KONG_SHIP_HTTP_LOG_TOKEN=TOKEN, SEGMENT_WRITE_KEY=WRITE_KEY)
    argv = [sys.executable, "-m", "shipper", "receive", "--listen", f"127.0.0.1:{port}", "--sink", "segment",
            "--endpoint", vendor_url, "--state-dir", state_dir, "--max-body-bytes", str(32 << 20),
            "--max-backlog-bytes", str(16 << 30), "--max-connections", "256"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(stderr_path, "wb"), cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"receive exited {proc.returncode}: {open(stderr_path).read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("receive did not start listening within 30 s")


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/http-log", body=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}",
    })
    response = conn.getresponse()
    response.read()
    return response.status


def load(port: int, bodies: list[tuple[int, bytes]], clients: int) -> tuple[float, int]:
    """Send every body from `clients` threads; (seconds from the first request to the last answer, records
    answered 200). A refused body is resent after a pause, as Kong's queue does."""
    lock = threading.Lock()
    queue = list(reversed(bodies))
    accepted = [0]
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                count, body = queue.pop()
            while (status := post(conn, body)) != 200:
                failures.append(str(status))
                time.sleep(0.05)
            with lock:
                accepted[0] += count
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if failures:
        print(f"  ({len(failures)} answers were not 200: {sorted(set(failures))})", file=sys.stderr)
    return elapsed, accepted[0]


def one_run(records: int, batch: int, clients: int, gen: KongRecords, work: str, n: int) -> dict[str, float]:
    first = 1000  # seqs 0..999 are the single 1,000-record request
    total = first + records
    big = orjson.dumps([gen.record(s) for s in range(first)])
    bodies = []
    for start in range(first, total, batch):
        chunk = [gen.record(s) for s in range(start, min(start + batch, total))]
        bodies.append((len(chunk), orjson.dumps(chunk if batch > 1 else chunk[0])))
    body_bytes = sum(len(b) for _, b in bodies)
    with CountingSegment(WRITE_KEY, total) as vendor:
        port = free_port()
        state = os.path.join(work, f"state-{n}")
        proc = start_receiver(port, state, vendor.url, os.path.join(work, f"receive-{n}.err"))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            started = time.perf_counter()
            status = post(conn, big)
            one_request = time.perf_counter() - started
            conn.close()
            assert status == 200, status
            time.sleep(1.0)  # let the pipeline ship those before the load starts
            elapsed, accepted = load(port, bodies, clients)
            deadline = time.monotonic() + 120
            while vendor.received() < total and time.monotonic() < deadline:
                time.sleep(0.1)
            tally = vendor.tally(total)
        finally:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(state, ignore_errors=True)
    valid = accepted == records and tally["once"] == total
    print(f"run {n}: {accepted / elapsed:,.0f} records/s accepted ({body_bytes / elapsed / 1e6:.1f} MB/s), "
          f"1,000 records in one request: {one_request * 1000:.0f} ms; delivered {tally}", file=sys.stderr)
    return {"rate": accepted / elapsed, "mbps": body_bytes / elapsed / 1e6, "one_request_ms": one_request * 1000,
            "valid": float(valid)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=100, help="records per request (Kong's queue.max_batch_size)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections (Kong's workers)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    gen = KongRecords()
    work = tempfile.mkdtemp(prefix="kong-ship-bench-receive-")
    try:
        runs = [one_run(args.records, args.batch, args.clients, gen, work, n) for n in range(1, args.runs + 1)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not all(r["valid"] for r in runs):
        print("INVALID: some record was not accepted, or did not arrive exactly once", file=sys.stderr)
        sys.exit(1)
    rate = statistics.median(r["rate"] for r in runs)
    mbps = statistics.median(r["mbps"] for r in runs)
    one = statistics.median(r["one_request_ms"] for r in runs)
    print(f"receive /http-log: {rate:,.0f} records/s accepted ({mbps:.1f} MB/s), median of {args.runs} runs; "
          f"batches of {args.batch}, {args.clients} clients, {os.cpu_count()} CPUs; "
          f"1,000 records in one request answered in {one:.0f} ms (median)")


if __name__ == "__main__":
    main()
