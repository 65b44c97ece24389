"""Acknowledgements flow back from the sink to the source: per file, the offset below which every line has
been delivered, dead-lettered or deliberately skipped. That offset, and only that, is checkpointed."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass(slots=True)
class _FileAcks:
    committed: int  # every byte before this offset is done
    next_seq: int = 0  # the next sequence number the reader will hand out
    first_open: int = 0  # the lowest sequence number not yet acknowledged
    done: dict[int, int] = field(default_factory=dict)  # acknowledged out of order: seq -> end offset
    # Spans acknowledged out of order (`ack_span`): first seq -> (last seq, end offset of the last)
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)


class AckTracker:
    def __init__(self) -> None:
        self._files: dict[str, _FileAcks] = {}
        self._lock = threading.Lock()

    def start(self, file_id: str, offset: int) -> None:
        """Begin tracking a file whose bytes before `offset` are already done (its checkpoint). A file already
        tracked (re-opened under another name) keeps its state."""
        with self._lock:
            if file_id not in self._files:
                self._files[file_id] = _FileAcks(committed=offset)

    def issue(self, file_id: str) -> int:
        """A sequence number for the next line of the file, handed out in file order by the reader."""
        acks = self._files[file_id]
        seq = acks.next_seq
        acks.next_seq = seq + 1
        return seq

    def issue_many(self, file_id: str, count: int) -> int:
        """`count` consecutive sequence numbers for the next lines of the file (a block's): the first of them."""
        acks = self._files[file_id]
        seq = acks.next_seq
        acks.next_seq = seq + count
        return seq

    def ack(self, file_id: str, seq: int, end: int) -> None:
        with self._lock:
            self._ack(file_id, seq, end)

    def ack_many(self, items: list[tuple[str, int, int]]) -> None:
        with self._lock:
            for file_id, seq, end in items:
                self._ack(file_id, seq, end)

    def ack_span(self, file_id: str, first: int, last: int, end: int) -> None:
        """Every line from `first` to `last` is done, the last ending at `end` (a batch closed in a worker,
        delivery/closed.py: the lines between its events were settled by the lane before it was queued)."""
        with self._lock:
            acks = self._files.get(file_id)
            if acks is None or first < acks.first_open:
                return
            acks.spans[first] = (last, end)
            self._advance(acks)

    def _ack(self, file_id: str, seq: int, end: int) -> None:
        acks = self._files.get(file_id)
        if acks is None or seq < acks.first_open:
            return
        acks.done[seq] = end
        if acks.first_open == seq or acks.spans:
            self._advance(acks)

    @staticmethod
    def _advance(acks: _FileAcks) -> None:
        """Move the committed offset over the acknowledged prefix."""
        done, spans = acks.done, acks.spans
        while True:
            seq = acks.first_open
            if seq in done:
                acks.committed = done.pop(seq)
                acks.first_open = seq + 1
            elif seq in spans:
                last, acks.committed = spans.pop(seq)
                acks.first_open = last + 1
                if done:  # lines inside the span acknowledged one by one before it (the block's other lines)
                    for inside in range(seq + 1, last + 1):
                        done.pop(inside, None)
            else:
                return

    def committed(self) -> dict[str, int]:
        with self._lock:
            return {file_id: acks.committed for file_id, acks in self._files.items()}

    def pending(self) -> int:
        """Lines handed out and not yet acknowledged, over all files."""
        with self._lock:
            return sum(acks.next_seq - acks.first_open for acks in self._files.values())

    def forget(self, file_id: str, at: int | None = None) -> None:
        """Stop tracking a file with no line pending (and, given `at`, whose committed offset is still `at`)."""
        with self._lock:
            acks = self._files.get(file_id)
            if acks is not None and acks.first_open == acks.next_seq and at in (None, acks.committed):
                del self._files[file_id]
