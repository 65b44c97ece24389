"""How many Kong records per second `kong-ship receive` accepts at /http-log, over loopback.

    python bench/receive.py                       # 3 runs of 40,000 records, batches of 100, 4 clients
    python bench/receive.py --batch 1 --records 4000   # http-log's default queue.max_batch_size
    python bench/receive.py --tls                 # https (http-log's https:// endpoint), a self-signed cert
    python bench/receive.py --light-fake          # the vendor in its own process (bench/light_fake.py)

Each run starts a fresh `kong-ship receive` (its own state directory) shipping to a loopback fake Segment that
counts records (bench/fake_vendors.py), and `--clients` threads (Kong's workers, each with its keep-alive
connection) POST pre-encoded arrays of `--batch` Kong-sized records (bench/records.py, ~2.7 KB each) as fast
as they are answered. "Accepted" is records answered 200, i.e. fsynced in the spool, over the time from the
first request to the last answer. The backlog bound is set far above the load, so what is measured is the
receiver, not the vendor; the pipeline still runs beside it (on the same cores), as in production. Also timed:
one request of 1,000 records on an idle receiver. A run counts only when every record then reached the fake
exactly once. Prints the median of the runs.

With --tls, receive serves HTTPS with a self-signed certificate (ECDSA P-256, SAN 127.0.0.1) generated for the
run with `cryptography`, and the clients verify it; their connections are kept alive, as Kong's are, so what
TLS costs is mostly the encryption of the bodies, plus one handshake per client.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import ipaddress
import os
import shutil
import socket
import statistics
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.fake_vendors import CountingSegment, timed_threads  # noqa: E402
from bench.light_fake import LightFakes  # noqa: E402
from bench.procs import tree_cpu_seconds  # noqa: E402
from bench.records import KongRecords  # noqa: E402

TOKEN = "bench-token"
WRITE_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(work: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files in `work`: the certificate is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kong-ship bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class Target:
    """Where the clients connect: plain HTTP, or HTTPS verified against the run's self-signed certificate."""

    def __init__(self, port: int, tls: tuple[str, str] | None):
        self.port = port
        self.tls = tls
        self.context = ssl.create_default_context(cafile=tls[0]) if tls else None

    def receive_args(self) -> list[str]:
        return ["--tls-cert", self.tls[0], "--tls-key", self.tls[1]] if self.tls else []

    def connect(self) -> http.client.HTTPConnection:
        if self.context is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60, context=self.context)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)


def start_receiver(port: int, state_dir: str, vendor_url: str, stderr_path: str,
                   more: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KONG_SHIP_", "SEGMENT_"))}
    env.update(KONG_SHIP_HTTP_LOG_TOKEN=TOKEN, SEGMENT_WRITE_KEY=WRITE_KEY)
    argv = [sys.executable, "-m", "shipper", "receive", "--listen", f"127.0.0.1:{port}", "--sink", "segment",
            "--endpoint", vendor_url, "--state-dir", state_dir, "--max-body-bytes", str(32 << 20),
            "--max-backlog-bytes", str(16 << 30), "--max-connections", "256", *more]
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


def load(target: Target, bodies: list[tuple[int, bytes]], clients: int) -> tuple[float, int]:
    """Send every body from `clients` threads; (seconds from the first request to the last answer, records
    answered 200). A refused body is resent after a pause, as Kong's queue does."""
    lock = threading.Lock()
    queue = list(reversed(bodies))
    accepted = [0]
    failures: list[str] = []

    def client() -> None:
        conn = target.connect()
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

    elapsed = timed_threads([threading.Thread(target=client) for _ in range(clients)])
    if failures:
        print(f"  ({len(failures)} answers were not 200: {sorted(set(failures))})", file=sys.stderr)
    return elapsed, accepted[0]


def one_run(records: int, batch: int, clients: int, gen: KongRecords, work: str, n: int,
            tls: tuple[str, str] | None, light: bool = False) -> dict[str, float]:
    """One receiver, loaded; with `light`, its vendor is the light fake in its own process (bench/light_fake.py)
    instead of the counting fake in this one."""
    first = 1000  # seqs 0..999 are the single 1,000-record request
    total = first + records
    big = orjson.dumps([gen.record(s) for s in range(first)])
    bodies = []
    for start in range(first, total, batch):
        chunk = [gen.record(s) for s in range(start, min(start + batch, total))]
        bodies.append((len(chunk), orjson.dumps(chunk if batch > 1 else chunk[0])))
    body_bytes = sum(len(b) for _, b in bodies)
    with contextlib.ExitStack() as stack:
        if light:
            vendor: Any = stack.enter_context(LightFakes(total, segment_key=WRITE_KEY)).vendor("segment")
        else:
            vendor = stack.enter_context(CountingSegment(WRITE_KEY, total))
        target = Target(free_port(), tls)
        state = os.path.join(work, f"state-{n}")
        proc = start_receiver(target.port, state, vendor.url, os.path.join(work, f"receive-{n}.err"),
                              target.receive_args())
        try:
            conn = target.connect()
            started = time.perf_counter()
            status = post(conn, big)
            one_request = time.perf_counter() - started
            conn.close()
            assert status == 200, status
            time.sleep(1.0)  # let the pipeline ship those before the load starts
            elapsed, accepted = load(target, bodies, clients)
            deadline = time.monotonic() + 120
            while vendor.received() < total and time.monotonic() < deadline:
                time.sleep(0.1)
            tally = vendor.tally(total)
            cpu = tree_cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(state, ignore_errors=True)
    valid = accepted == records and tally["once"] == total and not tally.get("errors")
    print(f"run {n}: {accepted / elapsed:,.0f} records/s accepted ({body_bytes / elapsed / 1e6:.1f} MB/s), "
          f"1,000 records in one request: {one_request * 1000:.0f} ms; delivered {tally}", file=sys.stderr)
    return {"rate": accepted / elapsed, "mbps": body_bytes / elapsed / 1e6, "one_request_ms": one_request * 1000,
            "valid": float(valid), "cpu_us_per_record": cpu / total * 1e6, "records": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=100, help="records per request (Kong's queue.max_batch_size)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections (Kong's workers)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="HTTPS, with a self-signed certificate made for the run")
    parser.add_argument("--light-fake", action="store_true",
                        help="the vendor is bench/light_fake.py in its own process, not the counting fake in this one")
    args = parser.parse_args()
    gen = KongRecords()
    work = tempfile.mkdtemp(prefix="kong-ship-bench-receive-")
    try:
        tls = self_signed(work) if args.tls else None
        runs = [one_run(args.records, args.batch, args.clients, gen, work, n, tls, args.light_fake) for n in range(1, args.runs + 1)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not all(r["valid"] for r in runs):
        print("INVALID: some record was not accepted, or did not arrive exactly once", file=sys.stderr)
        sys.exit(1)
    rate = statistics.median(r["rate"] for r in runs)
    mbps = statistics.median(r["mbps"] for r in runs)
    one = statistics.median(r["one_request_ms"] for r in runs)
    print(f"receive {'https' if args.tls else 'http'} /http-log: {rate:,.0f} records/s accepted ({mbps:.1f} MB/s), median of {args.runs} runs; "
          f"batches of {args.batch}, {args.clients} clients, {os.cpu_count()} CPUs; "
          f"1,000 records in one request answered in {one:.0f} ms (median)")


if __name__ == "__main__":
    main()
