"""Issue 16: blocks reach the worker processes through memory shared with them (workers.BlockRing), not through
their queues. A slot is written again only after the result of the block in it came back; with no free slot,
or a block bigger than a slot, the block goes through the queue as before. Checked with a real pool of forked
workers: every line of every block comes back as itself, in order, whichever way each block went."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.sources.blocks import Block, Shared, newlines
from shipper.transform import EVENT
from shipper.workers import BlockRing, WorkerPool


def echo(file_id, data, offset, end):
    """A transform that ships each line as it is, with its worker's pid (which process read it)."""
    return (EVENT, b"%d:%s" % (os.getpid(), data), False)


def kept_bytes(ring: BlockRing, kept) -> bytes:
    """What a worker reads of a kept block: its slot of the ring, or the bytes themselves."""
    return ring.area[kept.at : kept.at + kept.size] if type(kept) is Shared else kept


def block_of(seq: int, lines: int, width: int) -> bytes:
    return b"".join(b"%d-%d-%s\n" % (seq, i, b"x" * width) for i in range(lines))


def test_a_slot_is_used_again_only_once_released():
    ring = BlockRing(2, 64)
    first = ring.keep(memoryview(b"a\n"))
    second = ring.keep(memoryview(b"bb\n"))
    assert type(first) is Shared and type(second) is Shared
    assert ring.keep(memoryview(b"c\n")) == b"c\n"  # both slots out: the bytes themselves, through the queue
    ring.release(first)
    third = ring.keep(memoryview(b"ddd\n"))
    assert type(third) is Shared and third.at == first.at
    assert kept_bytes(ring, second) == b"bb\n" and kept_bytes(ring, third) == b"ddd\n"
    assert ring.keep(memoryview(b"e" * 65)) == b"e" * 65  # bigger than a slot
    ring.release(b"e" * 65)  # bytes hold no slot
    assert ring.keep(memoryview(b"f\n")) == b"f\n"  # the next slot (second's) is still out


def test_the_workers_read_each_block_from_its_slot_in_order():
    pool = WorkerPool(echo, 2, block_bytes=4096)
    try:
        sent: list[bytes] = []
        shared = 0
        buffer = bytearray(8192)  # one buffer for every block, as the readers have

        def blocks():
            nonlocal shared
            for seq in range(60):
                data = block_of(seq, 1 + seq % 7, 50 + 13 * (seq % 5) if seq % 11 else 5000)  # some over a slot
                sent.append(data)
                buffer[: len(data)] = data
                kept = pool.keep(memoryview(buffer)[: len(data)])
                shared += type(kept) is Shared
                yield Block("f", kept, 0, data.count(b"\n"), 1 << 20, False)

        results = list(pool.map(blocks()))
        assert len(results) == 60
        workers = set()
        for data, (_, (events, index, _ends, _anon, others)) in zip(sent, results):
            assert not others
            assert [event.split(b":", 1)[1] for event in events] == data.split(b"\n")[:-1]
            assert index == list(range(len(events)))
            workers.update(event.split(b":", 1)[0] for event in events)
        assert len(workers) == 2
        assert shared >= 40  # the blocks that fit went through the ring
    finally:
        pool.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 80)), min_size=1, max_size=40))
def test_a_ring_never_hands_out_a_slot_still_in_flight(steps):
    """Any order of keeps and releases (oldest first, as the pool collects): what each kept block reads back is
    its own bytes, however often the slots went round."""
    ring = BlockRing(3, 64)
    out: list[tuple[bytes, object]] = []
    for n, (release, size) in enumerate(steps):
        if release and out:
            data, kept = out.pop(0)
            assert kept_bytes(ring, kept) == data
            ring.release(kept)
        data = bytes([65 + n % 26]) * size
        out.append((data, ring.keep(memoryview(data))))
    for data, kept in out:
        assert kept_bytes(ring, kept) == data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=200), st.integers(min_value=0, max_value=20))
def test_newlines_counts_what_bytes_count_counts(lengths, trailing):
    """Lines long and short (both ways of counting in `newlines`), and a partial last line past the end."""
    area = bytearray(b"".join(b"x" * n + b"\n" for n in lengths) + b"y" * trailing + b"\n")
    for end in (len(area) - trailing - 1, len(area) - 1, len(area)):
        assert newlines(area, end) == area.count(b"\n", 0, end)
