"""Issue 16: a worker's block (transform.transform_block) gives each line the outcome the line path gives it.

The oracle is the file source's own line path (`FileSource.read_all()` without blocks, the Transformer on each
line it yields) on a real file holding the block's bytes. Blocks of Kong lines mixed with what a hostile or
broken producer writes: container runtime lines (CRI pieces `P` and `F`, Docker JSON), text, blank and CRLF
lines, lines over --max-line-bytes shorter and longer than the 4 KiB a dead letter keeps."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gen
from shipper.formats import Parser
from shipper.processors import build_chain
from shipper.sinks.segment import SegmentSink
from shipper.sources.blocks import Block
from shipper.sources.files import FileSource
from shipper.sources.reading import Oversize
from shipper.transform import EVENT, FAILED, INVALID, OVERSIZE, REJECTED, Transformer, line_bytes, transform_block

CRI = b"2024-01-01T00:00:00.000000000Z stdout "
DEAD_LETTERED = {INVALID, REJECTED, FAILED, OVERSIZE}  # the fates whose line the result keeps, for its dead letter


def kinds(seq: int) -> list[bytes]:
    line = gen.kong_line(gen.kong_record(seq))
    return [
        line,
        CRI + b"P " + line[:50] + b"\n",  # the first piece of a split container line
        CRI + b"F " + line[50:],  # its last piece
        CRI + b"F " + line,  # a whole one
        b'{"log":"text\\n","stream":"stdout","time":"2024-01-01T00:00:00Z"}\n',  # Docker's JSON, not Kong's
        b"not json at all\n",
        b"\n",
        b" \t\n",
        line.replace(b"\n", b"\r\n"),
        b'{"pad":"' + b"y" * 3000 + b'"}\n',  # over 2,500 bytes, under the 4 KiB kept
        b'{"pad":"' + b"z" * 9000 + b'"}\n',
    ]


def comparable(data: object) -> object:
    if isinstance(data, Oversize):
        return ("oversize", data.prefix, data.length)
    return None if data is None else line_bytes(data)  # type: ignore[arg-type]


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, 10), min_size=1, max_size=25), limit=st.sampled_from([2500, 4096, 1 << 20]))
def test_a_block_gives_each_line_the_line_path_outcome(tmp_path, picks, limit):
    # A split container line still waiting for its last piece when the block ends is the known limit
    # (transform_block): the line path keeps the piece for the lines after it, the block ends it there. So each
    # first piece gets a last piece after it.
    # Only a file that does not begin as a container runtime's log is read in blocks (blocks.fits_blocks).
    picks = [0, *picks]
    waiting = max((k for k, pick in enumerate(picks) if pick == 1), default=-1)
    if waiting >= 0 and not any(pick in (2, 3) for pick in picks[waiting + 1 :]):
        picks = [*picks, 2]
    blob = b"".join(kinds(seq)[pick] for seq, pick in enumerate(picks))
    path = tmp_path / "a.json"
    path.write_bytes(blob)
    parser, chain, sink = Parser(), build_chain(), SegmentSink("k")
    transform = Transformer(parser, chain, sink, sink.flat_path(parser, chain))

    source = FileSource([str(path)], known=lambda fingerprint: {}, follow=False, max_line_bytes=limit)
    expected = []
    file_id = None
    for file_id, data, offset, end in source.read_all():
        fate, payload, anonymous = transform(file_id, data, offset, end)
        expected.append((offset, end, fate, payload, comparable(data) if fate in DEAD_LETTERED else None))
    source.close()
    if file_id is None:
        return  # nothing the line path yields (a lone piece of a split line): nothing to compare

    events, index, ends, anonymous, others = transform_block(
        transform, Block(file_id, blob, 0, blob.count(b"\n"), limit, framed=True)
    )
    got = [(None, end, EVENT, event, None) for event, end in zip(events, ends)]
    got += [(offset, end, fate, payload, comparable(data)) for _, fate, payload, data, offset, end in others
            if fate is not None]  # None: a piece of a split line, which the line path yields nothing for
    # Events carry no offset in a block's result (only their end): compared by end, fate and bytes.
    assert sorted((e, f, p, d) for _, e, f, p, d in got) == sorted((e, f, p, d) for _, e, f, p, d in expected)
    assert len(index) == len(events) and sorted(index) == index
