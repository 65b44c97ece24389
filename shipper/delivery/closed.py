"""Batches closed in a worker process (issue 16): a backfill block's events, cut into batches by the rules the
batcher applies (`BatchPlan`) and made into request bodies there (`Sink.prepare`), so the parent neither builds
nor compresses bodies, nor handles events one by one: it queues each `ClosedBatch` as it is, the sender sends it,
and its acknowledgement is one span of the file's sequence numbers.

Only blocks take this path, and only for a sink that prepares bodies (Segment and Moesif, gzip): tail, lines
read one by one and other sinks keep the batcher's own batches. A batch closed here never waits for events of the
next block (a block of 1 MiB holds a few hundred records, a batch's worth), so a flush interval has nothing to
wait for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shipper.sinks.compression import PreparedBody

# (file_id, seq, end offset, event bytes): one event as the queue, the batcher and the sender pass it on
Item = tuple[str, int, int, bytes]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """The batcher's bounds: events per batch, bytes of the uncompressed body, bytes the envelope adds."""

    max_events: int
    max_bytes: int
    envelope_bytes: int


def cut(events: list[bytes], plan: BatchPlan) -> list[tuple[int, int]]:
    """(start, stop) of each batch over `events`, closed exactly where the batcher would close them."""
    spans: list[tuple[int, int]] = []
    max_events, max_bytes, envelope = plan.max_events, plan.max_bytes, plan.envelope_bytes
    start, size = 0, envelope
    for i, event in enumerate(events):
        item_size = len(event) + 1
        if i > start and (size + item_size > max_bytes or i - start >= max_events):
            spans.append((start, i))
            start, size = i, envelope
        size += item_size
    if start < len(events):
        spans.append((start, len(events)))
    return spans


def prepare_all(
    events: list[bytes], plan: BatchPlan, prepare: Callable[[list[bytes]], PreparedBody | None]
) -> list[PreparedBody | bytes]:
    """The block's events as bodies (in a worker; `prepare` is the sink's), but for a last batch under half the
    plan's bounds: its events stay events, for the parent's batcher to merge with other blocks' remainders. (A
    block's events rarely end on a batch bound: Kong 3.x records of ~2.7 kB in 1 MiB blocks make ~500 KB of
    Segment events, over its bound by a few, and a batch of those few per block doubled the requests.)"""
    out: list[PreparedBody | bytes] = []
    spans = cut(events, plan)
    for start, stop in spans:
        if stop == len(events) and stop - start < plan.max_events // 2:
            size = plan.envelope_bytes + sum(len(event) + 1 for event in events[start:stop])
            if size < plan.max_bytes // 2:
                out.extend(events[start:stop])
                continue
        body = prepare(events[start:stop])
        assert body is not None  # the lane asks for a plan only of a sink that prepares
        out.append(body)
    return out


@dataclass(slots=True)
class ClosedBatch:
    """A batch of one file's lines, its body made: the unit the queue, the batcher and the sender pass on.

    `seqs` and `ends`: each event's sequence number and end offset (in order), for the acknowledgement of a
    batch delivered whole (`span`) and for cutting it back into items (a refused batch is halved)."""

    file_id: str
    seqs: list[int]
    ends: list[int]
    body: PreparedBody

    def __len__(self) -> int:
        return len(self.seqs)

    def span(self) -> tuple[str, int, int, int]:
        """(file_id, first seq, last seq, end offset of the last): every line from first to last is this batch's
        or was already settled by the lane (the block's other lines), so delivery acknowledges them at once."""
        return self.file_id, self.seqs[0], self.seqs[-1], self.ends[-1]

    def items(self) -> list[Item]:
        """The batch as the sender's items (decompressing the body: only for the rare ones)."""
        file_id = self.file_id
        return [(file_id, seq, end, event) for seq, end, event in zip(self.seqs, self.ends, self.body.events())]
