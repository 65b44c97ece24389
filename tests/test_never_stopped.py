"""Issue 11, "never stopped by data": no line can stop a reader, every line is accounted for, and a thread that
dies for any other reason ends the process with exit 1 — never exit 0 with work undone.

In-process: each poison kind through the Transformer of every sink, the value checks, the boundary, and thread
deaths at the Pipeline level. As a process: `backfill` and `tail` over a log with one line of each poison kind
between numbered good lines, to the fake Segment and the webhook fake at once; `receive` with an event hook
whose timestamp is 1e300; Moesif answering `sample_rate: Infinity`; a sender thread that dies.
"""

from __future__ import annotations

import collections
import io
import json
import os
import threading
import types
from datetime import UTC, datetime

import orjson
import pytest

import gen
import poison
from conftest import FAST, FAST_FOLLOW, LogBuilder, ship, ship_env, summary_rows, wait_until
from fakes.moesif import FakeMoesif
from fakes.segment import FakeSegment
from fakes.webhook import FakeWebhook
from shipper.errors import FatalError
from shipper.formats import ParseError, Parser
from shipper.formats.values import epoch_ms, iso_epoch_ms, latency_field, status_field
from shipper.pipeline import Pipeline
from shipper.processors import build_chain
from shipper.settings import Settings
from shipper.sinks.segment import SegmentSink
from shipper.sinks.stdout import StdoutSink
from shipper.sinks.webhook import WebhookSink
from shipper.transform import BLANK, EVENT, FAILED, INVALID, Transformer
from shipper.workers import WorkerLost, WorkerPool

ENV = ship_env(SEGMENT_WRITE_KEY="test-key", MOESIF_APPLICATION_ID="moesif-app")
SINKS = {"segment": lambda: SegmentSink("k", "http://127.0.0.1:9"), "webhook": lambda: WebhookSink("http://127.0.0.1:9/")}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# -- in process ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sink", sorted(SINKS))
@pytest.mark.parametrize("kind", sorted(poison.KINDS))
def test_each_poison_kind_becomes_its_expected_outcome(kind, sink):
    make, expected = poison.KINDS[kind]
    line = make(7)
    outcome, payload, _ = Transformer(Parser(), build_chain(), SINKS[sink]())("f", line, 0, len(line))
    if expected[sink] is None:
        assert outcome == EVENT, payload
        event = orjson.loads(payload)
        if sink == "segment":
            assert event["timestamp"] == iso(gen.BASE_STARTED_AT + 7)
            if kind == "jwt_30_digit_claim":
                assert event["userId"] == "cust-user-7"  # the token is ignored; the consumer is the user
        else:
            assert event["started_at"] == gen.BASE_STARTED_AT + 7
    else:
        assert outcome in (INVALID, FAILED) and payload[0] == expected[sink], payload
    if expected[sink] == "bad_value":
        field = payload[1].split(":")[0]
        assert field in {"started_at", "response.status", "response.size", "request.url", "latencies.request",
                         "latencies.kong", "status", "msec"}, payload  # fmt: skip


def test_time_units_are_recognised_and_absurd_times_refused():
    ms = 1_763_800_000_123
    assert [epoch_ms(v) for v in (ms / 1000, ms, ms * 1000, ms * 1_000_000)] == [ms] * 4
    assert [epoch_ms(v) for v in (0, -5, float("nan"), float("inf"), 1e300, 10**30)] == [None] * 6
    assert iso_epoch_ms("2025-11-22T08:26:40.005Z") == 1_763_800_000_005
    assert iso_epoch_ms("0001-01-01T00:00:00+14:00") is None and iso_epoch_ms("garbage") is None
    assert status_field("-", "status") is None and status_field("404", "status") == 404
    assert latency_field(-1, "latencies.proxy") is None  # Kong: no upstream call
    for bad in ("nan", "-inf", 1e300, "1e30"):
        with pytest.raises(ParseError) as info:
            latency_field(bad, "latencies.request")
        assert info.value.reason == "bad_value" and info.value.detail.startswith("latencies.request:")


def test_the_boundary_turns_any_exception_into_a_dead_letter_reason():
    def broken_processor(txn):
        raise KeyError("no such thing")

    class BrokenSink(SegmentSink):
        def encode(self, txn):
            raise ZeroDivisionError("division by zero")

    line = gen.kong_line(gen.kong_record(1))
    sink = SegmentSink("k", "http://127.0.0.1:9")
    assert Transformer(Parser(), [broken_processor], sink)("f", line, 0, 1)[:2] == (
        INVALID, ("internal_error", "KeyError: 'no such thing'"),
    )  # fmt: skip
    outcome, payload, _ = Transformer(Parser(), build_chain(), BrokenSink("k", "http://127.0.0.1:9"))("f", line, 0, 1)
    assert (outcome, payload) == (FAILED, ("internal_error", "ZeroDivisionError: division by zero"))

    class TextSink(SegmentSink):  # an encoder that hands back text, not bytes
        def encode(self, txn):
            return "{}"

    outcome, payload, _ = Transformer(Parser(), build_chain(), TextSink("k", "http://127.0.0.1:9"))("f", line, 0, 1)
    assert outcome == FAILED and payload[0] == "internal_error" and payload[1].startswith("TypeError:")
    assert Transformer(Parser(), build_chain(), sink)("f", b" \t\r\n", 0, 4)[0] == BLANK


def test_audit_and_event_hook_times_fall_back_to_the_time_of_receipt():
    received = "2025-11-22T08:26:40.005Z"
    for kind, record in (
        ("event_hook", {"source": "crud", "event": "consumers", "timestamp": 1e300}),
        ("audit_request", {"request_id": "r1", "method": "GET", "path": "/", "status": 200, "request_timestamp": 1e300}),
    ):
        line = orjson.dumps({"spool": kind, "seq": 1, "received_at": received, "record": record})
        for make in SINKS.values():
            outcome, payload, _ = Transformer(Parser(), build_chain(), make())("f", line, 0, 1)
            assert outcome == EVENT, payload
            event = orjson.loads(payload)
            assert event.get("timestamp", iso(event.get("started_at") or 0)) == received


class _Raising:
    """Stands for a bug: raises whenever it is called."""

    def __init__(self, exc: Exception):
        self.exc = exc

    def __call__(self, *args, **kwargs):
        raise self.exc


def _run_pipeline(tmp_path, sink, break_lane) -> str:
    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    (tmp_path / "state").mkdir()
    settings = Settings(paths=[str(log)], sinks=[sink.name], state_dir=str(tmp_path / "state"), flush_interval=0.01)
    pipeline = Pipeline(settings, [sink], follow=False)
    break_lane(pipeline.lanes[0])
    ended: list[BaseException | None] = []

    def run() -> None:  # in a thread of its own: no signal handlers installed, and a hang is seen as one
        try:
            pipeline.run()
            ended.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            ended.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(20)
    if runner.is_alive():
        pipeline.abort.set()
        pytest.fail("the run never ended")
    assert isinstance(ended[0], FatalError), f"the run ended with {ended[0]!r}, not as fatal"
    return str(ended[0])


def test_a_reader_that_dies_ends_the_run_as_fatal(tmp_path):
    def break_reader(lane):
        lane.transform = _Raising(RuntimeError("reader bug"))

    message = _run_pipeline(tmp_path, StdoutSink(io.BytesIO()), break_reader)
    assert message == "thread read-stdout died: RuntimeError: reader bug"


def test_a_sender_that_dies_ends_the_run_as_fatal(tmp_path):
    sink = StdoutSink(io.BytesIO())
    sink.request = _Raising(UnicodeEncodeError("ascii", "café", 3, 4, "ordinal not in range(128)"))
    message = _run_pipeline(tmp_path, sink, lambda lane: None)
    assert message.startswith("thread send-stdout-") and "died: UnicodeEncodeError:" in message


def test_a_batcher_that_dies_ends_the_run_as_fatal(tmp_path):
    def break_batcher(lane):
        lane.batcher.queue = types.SimpleNamespace(get=_Raising(AttributeError("batcher bug")))

    message = _run_pipeline(tmp_path, StdoutSink(io.BytesIO()), break_batcher)
    assert message == "thread batch-stdout died: AttributeError: batcher bug"


# -- as a process ------------------------------------------------------------------------------------------------
def write_poison_log(path) -> tuple[dict[str, set[int]], set[tuple[int, str, str | None]], int]:
    """Good numbered lines with one line of each poison kind between them, a blank and a whitespace-only line, a
    CRLF line. Returns the seqs each sink must receive, the dead letters expected as (offset, reason, sink) —
    sink None for a line no sink understands (written once) — and the number of lines."""
    arrive: dict[str, set[int]] = {"segment": set(), "webhook": set()}
    dead: set[tuple[int, str, str | None]] = set()
    log = LogBuilder()
    add = log.add

    def good(seq: int) -> None:
        add(gen.kong_line(gen.kong_record(seq)))
        for seqs in arrive.values():
            seqs.add(seq)

    good(0)
    for i, (name, (make, expected)) in enumerate(sorted(poison.KINDS.items())):
        seq = 1000 + i
        start = add(make(seq))
        for sink, reason in expected.items():
            if reason is None:
                arrive[sink].add(seq)
            else:  # a line not understood is dead-lettered once; an event a sink cannot encode, by that sink
                dead.add((start, reason, None if reason in ("bad_value", "not_json") else sink))
        good(1 + i)
    add(b"\n")
    add(b"  \t \n")
    add(gen.kong_line(gen.kong_record(500)).replace(b"\n", b"\r\n"))
    for seqs in arrive.values():
        seqs.add(500)
    good(501)
    path.write_bytes(log.data())
    return arrive, dead, len(log.lines)


def dead_letters(path) -> set[tuple[int, str, str | None]]:
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return {(e["offset"], e["reason"], e.get("sink")) for e in entries}


def webhook_seqs(fake) -> collections.Counter:
    return collections.Counter(gen.seq_of_url(e["raw_path"]) for e in fake.snapshot())


def segment_seqs(fake) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in list(fake.messages))


def assert_accounting(stderr: str, lines: int, arrive: dict[str, set[int]]) -> None:
    rows = summary_rows(stderr)
    assert set(rows) == {"segment", "webhook"}, stderr
    for sink, row in rows.items():
        assert row["read"] == lines and row["shipped"] == len(arrive[sink]) and row["blank"] == 2, (sink, row)
        parts = ("shipped", "filtered", "dead-lettered", "rejected", "skipped", "blank")
        assert row["read"] == sum(row[p] for p in parts), (sink, row)
        assert row["dead-lettered"] == lines - 2 - len(arrive[sink]), (sink, row)


def both_sinks(segment, webhook, tmp_path) -> list[str]:
    return ["--sink", "segment", "--sink", "webhook", "--endpoint", f"segment={segment.url}",
            "--endpoint", f"webhook={webhook.url}", "--state-dir", str(tmp_path / "state")]  # fmt: skip


def test_backfill_ships_every_good_line_and_dead_letters_each_poison_line(tmp_path):
    log = tmp_path / "kong.json"
    arrive, dead, lines = write_poison_log(log)
    with FakeSegment() as segment, FakeWebhook() as webhook:
        # Worker processes (the backfill default on several CPUs) carry the boundary too.
        result = ship("backfill", str(log), *both_sinks(segment, webhook, tmp_path), *FAST, "--workers", "2", env=ENV)
        stderr = result.stderr.decode()
        assert result.returncode == 0, stderr
        got_segment, got_webhook = segment_seqs(segment), webhook_seqs(webhook)
    assert set(got_segment) == arrive["segment"] and max(got_segment.values()) == 1
    assert set(got_webhook) == arrive["webhook"] and max(got_webhook.values()) == 1
    assert dead_letters(tmp_path / "state" / "dead-letter.jsonl") == dead
    assert_accounting(stderr, lines, arrive)


def test_tail_ships_every_good_line_and_dead_letters_each_poison_line(tmp_path, shippers):
    log = tmp_path / "kong.json"
    arrive, dead, lines = write_poison_log(log)
    with FakeSegment() as segment, FakeWebhook() as webhook:
        proc = shippers("tail", str(log), *both_sinks(segment, webhook, tmp_path), *FAST_FOLLOW, env=ENV)
        assert wait_until(
            lambda: set(segment_seqs(segment)) == arrive["segment"] and set(webhook_seqs(webhook)) == arrive["webhook"]
            or proc.proc.poll() is not None,
            timeout=30,
        )
        assert proc.proc.poll() is None, "the tail stopped on its own"
        assert wait_until(lambda: dead_letters(tmp_path / "state" / "dead-letter.jsonl") == dead, timeout=10)
        code, _, stderr = proc.stop()
    assert code == 0, stderr
    assert_accounting(stderr, lines, arrive)


def test_parse_prints_every_good_line_and_names_each_poison_line(tmp_path):
    log = tmp_path / "kong.json"
    arrive, dead, _ = write_poison_log(log)
    result = ship("parse", str(log), env=ENV)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    printed = {gen.seq_of_url(orjson.loads(line)["raw_path"]) for line in result.stdout.splitlines()}
    assert printed == arrive["webhook"]  # `parse` prints what the webhook sink sends
    # "kong-ship: FILE: offset N: reason"
    reported = {(int(line.split(":")[2].split()[-1]), line.split(":")[3].strip()) for line in stderr.splitlines()[:-1]}
    assert reported == {(offset, reason) for offset, reason, _ in dead}, stderr
    assert stderr.splitlines()[-1] == f"kong-ship: {len(reported)} line(s) not understood"


def test_receive_ships_an_event_hook_whose_timestamp_is_1e300(shippers, tmp_path):
    from test_receive import Receive, delivered, kong_event

    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        before = datetime.now(UTC).timestamp() * 1000
        for n, extra in enumerate(({}, {"timestamp": 1e300}, {"time": "99999-01-01"}, {})):
            assert rx.post(kong_event(n, **extra)).status_code == 200
        fake.wait_for(lambda: sorted(delivered(fake)) == [0, 1, 2, 3] or rx.proc.proc.poll() is not None, timeout=15)
        assert rx.proc.proc.poll() is None, rx.proc.wait()[2]
        started = {e["details"]["n"]: e["started_at"] for e in fake.snapshot()}
        assert all(before - 1000 <= started[n] <= before + 60_000 for n in (1, 2)), started  # the time of receipt
        code, _, err = rx.proc.stop()
    assert code == 0, err


def test_moesif_config_with_an_infinite_sample_rate_keeps_sampling_off(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(30))
    config = {"sample_rate": float("inf"), "user_sample_rate": {"x": float("nan")}, "company_sample_rate": {}}
    with FakeMoesif(config=config) as fake:  # json.dumps writes Infinity and NaN, as a broken server could
        result = ship("backfill", str(log), "--sink", "moesif", "--endpoint", fake.url,
                      "--state-dir", str(tmp_path / "state"), *FAST, env=ENV)  # fmt: skip
        stderr = result.stderr.decode()
        assert result.returncode == 0, stderr
        got = collections.Counter(gen.seq_of_url(e["request"]["uri"]) for e in fake.events)
    assert set(got) == set(range(30)) and max(got.values()) == 1
    assert "/v1/config is not understood" in stderr


def test_a_sender_thread_that_dies_exits_1_with_one_line_naming_it(tmp_path):
    """A real trigger: a header value httpx cannot encode makes every request raise in the sender thread."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    with FakeWebhook() as webhook:
        result = ship("backfill", str(log), "--sink", "webhook", "--endpoint", webhook.url, "--state-dir",
                      str(tmp_path / "state"), "--webhook-header", "X-Tenant: café", *FAST, env=ENV)  # fmt: skip
        assert webhook.snapshot() == []
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr  # never 0: nothing was delivered
    assert stderr.splitlines()[-1].startswith("kong-ship: fatal: thread send-webhook-"), stderr
    assert "died: UnicodeEncodeError: 'ascii' codec can't encode" in stderr and "Traceback" not in stderr


class _DiesOn:
    """A transformer whose worker process dies (as the OOM killer does it) on one marked line."""

    def __call__(self, file_id, data, offset, end):
        if data == b"die\n":
            os._exit(9)
        return (BLANK, None, False)


def test_a_worker_process_that_dies_is_reported_not_waited_for_forever():
    pool = WorkerPool(_DiesOn(), 2)
    lines = [("f", b"ok\n", i, i + 3) for i in range(2000)] + [("f", b"die\n", 9999, 10003)]
    outcome: list[BaseException | None] = []

    def consume() -> None:
        try:
            for _ in pool.map(iter(lines)):
                pass
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    reader.join(20)
    pool.close()
    assert outcome, "the reader waited forever for a chunk a dead worker had taken"
    assert isinstance(outcome[0], WorkerLost) and "worker process died" in str(outcome[0])



def test_a_receiver_thread_that_dies_is_reported(tmp_path):
    """The receiver's own threads (the server loop, the read-deadline watchdog) are supervised like the lanes':
    if one dies, the run hears of it and ends with exit 1, rather than stop answering while looking healthy."""
    import threading as _threading

    from shipper.sources.event_hooks import Receiver
    from shipper.sources.spool import Spool

    spool = Spool(str(tmp_path / "spool"))
    receiver = Receiver("127.0.0.1", 0, spool, secret=None, max_body_bytes=1 << 20, max_backlog_bytes=1 << 20,
                        backlog=lambda: 0, on_accept=lambda: None)
    deaths: list[str] = []
    died = _threading.Event()

    def boom() -> None:  # called by serve_forever on every turn of its loop
        raise OSError("the listening socket went away")

    receiver._server.service_actions = boom  # type: ignore[method-assign]
    receiver.start(lambda line: (deaths.append(line), died.set()))
    try:
        assert died.wait(5)
    finally:
        receiver.shutdown()
        spool.close()
    assert deaths == ["thread receive died: OSError: the listening socket went away"]
