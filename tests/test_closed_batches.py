"""Issue 16: batches closed in the worker processes (delivery/closed.py). A block's events are cut into batches
where the batcher would cut them, their bodies made there (`Sink.prepare`, compression.PreparedBody: deflated up
to the per-attempt stamp), and the parent sends them as they are and acknowledges each as one span.

What must hold: the body an attempt sends is the very body `Sink.request` would send (sentAt aside, stamped at
each attempt); the cuts are the batcher's; a span acknowledgement moves the checkpoint exactly as one
acknowledgement per line would; and end to end, a refused batch is still halved down to the one bad event, which
alone is dead-lettered, a retried batch carries a fresh sentAt, and every record arrives exactly once.
"""

from __future__ import annotations

import collections
import gzip
import json
import random
import threading

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

import gen
from conftest import FAST, ship, ship_env, summary_rows
from fakes.segment import FakeSegment, decode_body
from shipper.delivery.acks import AckTracker
from shipper.delivery.batcher import Batcher
from shipper.delivery.closed import BatchPlan, ClosedBatch, cut, prepare_all
from shipper.delivery.queue import BoundedQueue
from shipper.sinks.compression import PreparedBody
from shipper.sinks.moesif import MoesifSink
from shipper.sinks.segment import SegmentSink

events_strategy = st.lists(st.binary(max_size=300), max_size=60)


def _body(request) -> bytes:
    request.read()
    return gzip.decompress(request.content)  # checks the CRC-32 and the length in the trailer


@settings(max_examples=150, deadline=None)
@given(events=events_strategy)
def test_a_prepared_body_is_the_body_request_sends(events):
    segment = SegmentSink("key", "http://segment.invalid")
    made = segment.prepared_request(segment.prepare(events))
    plain = segment.request(events)
    assert made.method == plain.method and made.url == plain.url
    assert {k: v for k, v in made.headers.items() if k != "content-length"} == {
        k: v for k, v in plain.headers.items() if k != "content-length"
    }
    sent, expected = _body(made), _body(plain)
    # Everything up to sentAt's value is the same bytes; sentAt is this attempt's own time.
    head = expected.rindex(b'"sentAt":"') + len(b'"sentAt":"')
    assert sent[:head] == expected[:head] and sent.endswith(b'Z"}') and len(sent) == len(expected)

    moesif = MoesifSink("app", "http://moesif.invalid", fetch_config=False)
    assert _body(moesif.prepared_request(moesif.prepare(events))) == _body(moesif.request(events))
    assert moesif.prepare(events).events() == events and segment.prepare(events).events() == events


def test_each_attempt_stamps_its_own_sent_at():
    segment = SegmentSink("key", "http://segment.invalid")
    body = segment.prepare([b'{"a":1}'])
    stamps = set()
    for _ in range(3):
        stamps.add(orjson.loads(_body(segment.prepared_request(body)))["sentAt"])
        threading.Event().wait(0.002)
    assert len(stamps) == 3


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 120), max_size=80),
    max_events=st.integers(1, 12),
    max_bytes=st.integers(1, 600),
    envelope=st.integers(0, 40),
)
def test_the_cuts_are_the_batchers(sizes, max_events, max_bytes, envelope):
    events = [b"x" * size for size in sizes]
    batches: list[list] = []

    class Recorder:
        sink = type("S", (), {"name": "rec"})

        def deliver(self, items, part=False):
            batches.append([item[3] for item in items])

    queue: BoundedQueue = BoundedQueue(10_000, 1 << 30)
    batcher = Batcher(
        queue, Recorder(), max_events=max_events, max_bytes=max_bytes, envelope_bytes=envelope,
        flush_interval=3600, concurrency=1, on_fatal=lambda why: None,
    )  # fmt: skip
    queue.put([("f", i, i + 1, event) for i, event in enumerate(events)], sum(sizes), threading.Event(), count=len(events))
    queue.close()
    batcher.run()
    assert batcher.wait_idle(5)
    batcher.shutdown()
    plan = BatchPlan(max_events, max_bytes, envelope)
    assert [events[start:stop] for start, stop in cut(events, plan)] == batches
    # Bodies for the batches, but a last one under half the bounds stays events (for the parent's batcher).
    prepared = prepare_all(events, plan, SegmentSink("key").prepare)
    bodies = [thing for thing in prepared if isinstance(thing, PreparedBody)]
    loose = prepared[len(bodies) :]
    assert all(not isinstance(thing, PreparedBody) for thing in loose)
    assert [body.events() for body in bodies] == (batches[:-1] if loose else batches)
    if loose:
        assert loose == batches[-1] and len(loose) < max_events // 2
        assert envelope + sum(len(event) + 1 for event in loose) < max_bytes // 2


@settings(max_examples=200, deadline=None)
@given(data=st.data(), lines=st.integers(1, 40))
def test_span_acknowledgements_move_the_checkpoint_as_line_acknowledgements_do(data, lines):
    """Lines of one file, some acknowledged one by one and the rest in spans (a span may hold single lines
    acknowledged before it: a block's other lines), in any order: after each step the checkpoint is the end of
    the longest acknowledged prefix, and nothing is left behind."""
    tracker = AckTracker()
    tracker.start("f", 0)
    first = tracker.issue_many("f", lines)
    assert first == 0
    end = [10 * (i + 1) for i in range(lines)]
    # Cut the lines into groups: a group of several lines is a span whose inner lines may also come singly.
    steps: list[tuple] = []
    i = 0
    while i < lines:
        size = data.draw(st.integers(1, min(6, lines - i)))
        if size == 1 or data.draw(st.booleans()):
            steps.extend(("one", j) for j in range(i, i + size))
        else:
            inner = data.draw(st.sets(st.integers(i + 1, i + size - 2), max_size=size)) if size > 2 else set()
            steps.extend(("one", j) for j in inner)
            steps.append(("span", i, i + size - 1))
        i += size
    # Any order, but a single line inside a span before its span (the lane settles a block's other lines first).
    drawn = data.draw(st.permutations(steps))
    order: list[tuple] = []
    waiting: list[tuple] = []
    for step in drawn:
        (waiting if step[0] == "span" else order).append(step)
        ones = {s[1] for s in order if s[0] == "one"}
        for span in list(waiting):
            if all(s[1] in ones for s in steps if s[0] == "one" and span[1] < s[1] < span[2]):
                waiting.remove(span)
                order.append(span)
    assert not waiting
    done: set[int] = set()
    for step in order:
        if step[0] == "one":
            tracker.ack("f", step[1], end[step[1]])
            done.add(step[1])
        else:
            tracker.ack_span("f", step[1], step[2], end[step[2]])
            done.update(range(step[1], step[2] + 1))
        prefix = 0
        while prefix in done:
            prefix += 1
        assert tracker.committed()["f"] == (end[prefix - 1] if prefix else 0)
    assert tracker.pending() == 0
    files = tracker._files["f"]
    assert not files.done and not files.spans


def test_a_closed_batch_is_its_items_again():
    events = [b'{"n":%d}' % n for n in range(5)]
    batch = ClosedBatch("f", [3, 4, 6, 7, 9], [30, 40, 60, 70, 90], SegmentSink("key").prepare(events))
    assert batch.items() == [("f", s, e, ev) for s, e, ev in zip([3, 4, 6, 7, 9], [30, 40, 60, 70, 90], events)]
    assert batch.span() == ("f", 3, 9, 90) and len(batch) == 5


# -- end to end: real processes, a real fake Segment --------------------------------------------------------------
def _run(tmp_path, fake, seqs, *more: str, block: int = 20_000):
    log = tmp_path / "kong.json"
    gen.write_records(log, seqs)
    env = ship_env(SEGMENT_WRITE_KEY="test-key", KONG_SHIP_BLOCK_BYTES=str(block))
    return ship(
        "backfill", str(log), "--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"),
        "--dead-letter", str(tmp_path / "dead.jsonl"), "--workers", "2", *FAST, *more, env=env, timeout=120,
    )  # fmt: skip


def test_a_refused_closed_batch_is_halved_to_the_one_bad_event(tmp_path):
    poisoned = 137
    bad_id = gen.kong_record(poisoned)["request"]["id"]
    with FakeSegment(reject_message_ids=[bad_id]) as fake:
        out = _run(tmp_path, fake, range(400), "--batch-size", "4")  # 9-10 records a block: 4, 4 and the rest
        arrived = collections.Counter(gen.seq_of_segment_message(m) for m in fake.messages)
    assert out.returncode == 1, out.stderr.decode()[-2000:]  # a backfill with rejected events (README: Exit codes)
    assert set(arrived) == set(range(400)) - {poisoned} and max(arrived.values()) == 1
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["sink"]) for d in dead] == [("rejected", "segment")]
    assert orjson.loads(dead[0]["event"])["messageId"] == bad_id
    rows = summary_rows(out.stderr)["segment"]
    assert (rows["read"], rows["shipped"], rows["rejected"]) == (400, 399, 1)
    assert len(fake.batches) >= 100 and max(len(batch["batch"]) for batch in fake.batches) <= 4
    # Refused whole (4 events), then its half holding the poisoned one (2), then that one alone: a refused closed
    # batch is halved at once, not sent whole a second time.
    assert len(fake.rejections) == 3, fake.rejections


def test_a_retried_closed_batch_carries_a_fresh_sent_at(tmp_path):
    with FakeSegment() as fake:
        fake.script([503, 503])
        out = _run(tmp_path, fake, range(50), "--concurrency", "1", "--batch-size", "50", block=1 << 20)
        attempts = [decode_body(request) for request in fake.requests]
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert len(attempts) == 3  # one block, one batch: two refused attempts, then delivered
    assert attempts[0]["batch"] == attempts[1]["batch"] == attempts[2]["batch"]
    assert len({attempt["sentAt"] for attempt in attempts}) == 3
    assert sorted(gen.seq_of_segment_message(m) for m in fake.messages) == list(range(50))


def test_the_small_rest_of_each_block_is_merged_by_the_batcher(tmp_path):
    """9-10 records a block and batches of 8: the workers close one batch of 8 a block and hand the one or two
    events left over back as events; the batcher merges those into batches of 8 too, not a request for each."""
    with FakeSegment() as fake:
        out = _run(tmp_path, fake, range(420), "--batch-size", "8", "--flush-interval", "30")
        sizes = sorted(len(batch["batch"]) for batch in fake.batches)
        arrived = sorted(gen.seq_of_segment_message(m) for m in fake.messages)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert arrived == list(range(420))
    assert len(sizes) >= 50 and sizes[1:] == [8] * (len(sizes) - 1)  # the last of the batcher's may be short


def test_the_checkpoint_after_closed_batches_is_the_end_of_the_file(tmp_path):
    rng = random.Random(7)
    seqs = list(range(300))
    rng.shuffle(seqs)
    with FakeSegment() as fake:
        out = _run(tmp_path, fake, seqs)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        again = _run(tmp_path, fake, [])  # the same file, nothing appended: nothing is sent again
        assert again.returncode == 0
        assert sorted(gen.seq_of_segment_message(m) for m in fake.messages) == list(range(300))
    assert summary_rows(again.stderr)["segment"]["read"] == 0
