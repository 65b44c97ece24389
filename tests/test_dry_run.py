"""`--dry-run` prints what each sink would send, and that is what the vendor receives: for every sink, the same
generated records go once through `backfill --dry-run` (its endpoint a listening socket that must never see a
connection) and once to the strict loopback fake, and the events, the requests' shapes and the headers agree.
No credential of the run and no secret of the records appears in the dry run's output."""

from __future__ import annotations

import collections
import re
import signal
import threading
from typing import Any

import orjson
import pytest

from conftest import FAST, FAST_FOLLOW, ship, ship_env, summary_rows, wait_until
from fakes.moesif import FakeMoesif
from fakes.runscope import FakeRunscope
from fakes.segment import FakeSegment
from fakes.webhook import FakeWebhook
from gen import jwt_for, kong_record, write_records

RECORDS = range(1, 41)
SEGMENT_KEY = "segment-write-key-MARKER-1"
MOESIF_APP = "moesif-app-id-MARKER-2"
RUNSCOPE_TOKEN = "runscope-token-MARKER-3"
WEBHOOK_SECRET = "webhook-secret-MARKER-4"
WEBHOOK_API_KEY = "webhook-api-key-MARKER-5"
CREDENTIALS = (SEGMENT_KEY, MOESIF_APP, RUNSCOPE_TOKEN, WEBHOOK_SECRET, WEBHOOK_API_KEY)
# What differs between two runs of the same records by design: stamped on every attempt, not on the record.
PER_ATTEMPT_BODY_KEYS = {"segment": ("sentAt",)}
# Headers that differ by transport: the fake's port, the compressed length (gzip of a body with another sentAt).
TRANSPORT_HEADERS = {"host", "content-length"}

ENV = ship_env(SEGMENT_WRITE_KEY=SEGMENT_KEY, MOESIF_APPLICATION_ID=MOESIF_APP, RUNSCOPE_ACCESS_TOKEN=RUNSCOPE_TOKEN,
               RUNSCOPE_BUCKET_KEY="bucket1", KONG_SHIP_WEBHOOK_SECRET=WEBHOOK_SECRET)
SEQ = re.compile(rb"[?&]seq=(\d+)")  # gen puts each record's seq first in its query string
SINK_ARGS = {"webhook": ["--webhook-header", f"X-Api-Key: {WEBHOOK_API_KEY}"]}


def record_secrets(seq: int) -> list[str]:
    """The secrets a record carries (the masks must remove them): its bearer JWT, session cookie and apikey."""
    request = kong_record(seq, jwt_sub=f"user-{seq}")["request"]
    secrets = [jwt_for(f"user-{seq}"), request["headers"]["cookie"].split(";")[0].split("=", 1)[1]]
    if "apikey" in request.get("querystring", {}):
        secrets.append(request["querystring"]["apikey"])
    return secrets


def events_of(sink: str, body: Any) -> list[Any]:
    if sink == "segment":
        return body["batch"]
    return [body] if sink == "runscope" else body


def canonical(values) -> collections.Counter:
    return collections.Counter(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values)


def fake_for(sink: str):
    return {
        "segment": lambda: FakeSegment(write_key=SEGMENT_KEY),
        "moesif": lambda: FakeMoesif(application_id=MOESIF_APP),
        "runscope": lambda: FakeRunscope(token=RUNSCOPE_TOKEN),
        "webhook": lambda: FakeWebhook(secret=WEBHOOK_SECRET.encode(), require_headers={"X-Api-Key": WEBHOOK_API_KEY}),
    }[sink]()


def decoded(sink: str, body: bytes, headers: dict[str, str]) -> Any:
    import gzip

    if headers.get("content-encoding", "").lower() == "gzip":
        body = gzip.decompress(body)
    return orjson.loads(body) if body else None


def backfill(log, sink: str, endpoint: str, state, *more: str):
    return ship("backfill", str(log), "--sink", sink, "--endpoint", endpoint, "--state-dir", str(state),
                "--workers", "0", *FAST, *SINK_ARGS.get(sink, []), *more, env=ENV)


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "kong.log"
    for seq in RECORDS:
        write_records(path, [seq], jwt_sub=f"user-{seq}")
    return path




@pytest.mark.parametrize("sink", ["segment", "moesif", "runscope", "webhook"])
def test_dry_run_prints_what_the_vendor_receives(sink, log, nobody, tmp_path):
    dry = backfill(log, sink, nobody, tmp_path / "dry-state", "--dry-run")
    assert dry.returncode == 0, dry.stderr.decode()
    printed = [orjson.loads(line) for line in dry.stdout.splitlines()]
    assert printed and all(p["sink"] == sink for p in printed)
    assert b"dry run: " in dry.stderr and b"none sent" in dry.stderr
    assert summary_rows(dry.stderr)[sink]["shipped"] == len(RECORDS)
    assert not (tmp_path / "dry-state").exists() or not any((tmp_path / "dry-state").iterdir())  # no checkpoint

    with fake_for(sink) as fake:
        real = backfill(log, sink, fake.url, tmp_path / "real-state")
        assert real.returncode == 0, real.stderr.decode()
        received = list(fake.requests)

    # The events: the same multiset, once the per-attempt stamps named above are set aside.
    def events(bodies):
        out = []
        for body in bodies:
            if isinstance(body, dict):
                body = {k: v for k, v in body.items() if k not in PER_ATTEMPT_BODY_KEYS.get(sink, ())}
            out.extend(events_of(sink, body))
        return out

    dry_posts = [p["body"] for p in printed if p["method"] == "POST"]
    real_posts = [decoded(sink, r.body, r.headers) for r in received if r.method == "POST"]
    assert canonical(events(dry_posts)) == canonical(events(real_posts))
    seqs = [int(SEQ.search(orjson.dumps(e)).group(1)) for e in events(dry_posts)]
    assert sorted(seqs) == list(RECORDS)  # every record, once

    # The requests: the same methods, paths and headers (credentials redacted, present in both).
    def shape(method: str, path: str, headers: dict[str, str]) -> tuple:
        kept = tuple(sorted((k.lower(), "[redacted]" if k.lower() in redacted else v)
                            for k, v in headers.items() if k.lower() not in TRANSPORT_HEADERS))
        return method, path, kept

    redacted = {k for p in printed for k, v in p["headers"].items() if v == "[redacted]"}
    assert redacted, "a credential header is redacted"
    dry_shapes = {shape(p["method"], p["url"].split(nobody, 1)[1] or "/", p["headers"]) for p in printed}
    real_shapes = {shape(r.method, r.path, r.headers) for r in received}
    assert dry_shapes == real_shapes

    text = dry.stdout.decode() + dry.stderr.decode()
    for secret in (*CREDENTIALS, *(s for seq in RECORDS for s in record_secrets(seq))):
        assert secret not in text


def test_dry_run_of_the_stdout_sink_is_its_output_as_requests(log, tmp_path):
    """The stdout sink sends nothing anyway; with --dry-run its requests are printed like every sink's (a body of
    NDJSON as the list of its documents), in place of the raw events, so one run's stdout is one format."""
    dry = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "d"), "--dry-run", *FAST, env=ENV)
    plain = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "p"), *FAST, env=ENV)
    assert dry.returncode == 0 and plain.returncode == 0, dry.stderr.decode() + plain.stderr.decode()
    printed = [orjson.loads(line) for line in dry.stdout.splitlines()]
    assert {(p["sink"], p["method"], p["url"]) for p in printed} == {("stdout", "POST", "stdout:")}
    events = [event for p in printed for event in p["body"]]
    assert canonical(events) == canonical(orjson.loads(line) for line in plain.stdout.splitlines())
    assert len(events) == len(RECORDS)


def test_dry_run_moves_no_checkpoint(log, tmp_path):
    """A dry run after a real one neither reads nor moves the real checkpoints: it prints every record again,
    and a real run after it still ships nothing new."""
    with FakeSegment(write_key=SEGMENT_KEY) as fake:
        first = backfill(log, "segment", fake.url, tmp_path / "state")
        assert first.returncode == 0, first.stderr.decode()
        dry = backfill(log, "segment", fake.url, tmp_path / "state", "--dry-run")
        assert dry.returncode == 0, dry.stderr.decode()
        again = backfill(log, "segment", fake.url, tmp_path / "state")
        assert again.returncode == 0, again.stderr.decode()
        assert len(fake.messages) == len(RECORDS)  # the dry run sent nothing, the second real run nothing new
    printed = [orjson.loads(line) for line in dry.stdout.splitlines()]
    assert sum(len(p["body"]["batch"]) for p in printed) == len(RECORDS)
    assert summary_rows(again.stderr)["segment"]["shipped"] == 0


def test_tail_dry_run_prints_appended_records_and_ends_cleanly(log, nobody, tmp_path, shippers):
    tail = shippers("tail", str(log), "--sink", "segment", "--endpoint", nobody, "--state-dir", str(tmp_path / "s"),
                    "--dry-run", *FAST_FOLLOW, env=ENV)
    lines: list[bytes] = []
    threading.Thread(target=lambda: lines.extend(tail.proc.stdout), daemon=True).start()
    write_records(log, range(100, 110), jwt_sub="late")  # appended while it follows the file
    batches = lambda: [m for line in list(lines) for m in orjson.loads(line)["body"]["batch"]]  # noqa: E731
    assert wait_until(lambda: len(batches()) >= len(RECORDS) + 10, timeout=20), len(batches())
    tail.signal(signal.SIGTERM)
    assert tail.proc.wait(20) == 0
    stderr = tail.proc.stderr.read()
    assert b"dry run: " in stderr and summary_rows(stderr)["segment"]["shipped"] == len(RECORDS) + 10
    assert sorted(int(SEQ.search(orjson.dumps(m)).group(1)) for m in batches()) == [*RECORDS, *range(100, 110)]
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("checkpoints*"))
