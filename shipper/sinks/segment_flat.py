"""Segment's flat path (issue 16): a Kong HTTP line → the bytes of its `track` call, without the full Transaction.

The line is decoded with msgspec into only the fields Segment ships and identity reads (`formats.kong_flat`), into
a slim Transaction that the run's own processors (the time window, Identify, the Masker, drop_raw) and
`SegmentSink.encode` then handle exactly as on the Transaction path: the same code decides, so the bytes are the
same (`tests/test_flat_paths.py` proves it), and the time saved is the work for what Segment never ships: the
orjson objects of every header and body, 40 checked fields, masking headers and bodies.

Only a chain and a parser known exactly get a flat path: the default chain (`processors.build_chain`), with JWT
places that are top-level fields or request headers, and the `kong` or `auto` format. Anything else: None, and
every line takes the Transaction path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shipper.formats.kong_flat import KongDecoder
from shipper.model import Transaction
from shipper.processors.identity import Identify
from shipper.processors.masking import Masker, drop_raw
from shipper.processors.window import TimeWindow
from shipper.sinks.base import FlatEncode, RecordDropped

if TYPE_CHECKING:
    from shipper.formats import Parser
    from shipper.processors import Processor

_KNOWN_PROCESSORS = (TimeWindow, Identify, Masker)


class SegmentFlat:
    """The flat encoder of one Segment sink for one chain: `FlatEncode`."""

    __slots__ = ("transaction", "chain", "encode")

    def __init__(self, decoder: KongDecoder, chain: Sequence[Processor], encode: Callable[[Transaction], bytes]):
        self.transaction = decoder.transaction
        self.chain = tuple(chain)
        self.encode = encode

    def __call__(
        self, data: bytes, file_id: str, offset: int, end: int, logged_at: int | None
    ) -> tuple[bytes, bool] | None:
        # `logged_at` dates only a record without a start time, which the decoder hands back (None).
        txn = self.transaction(data, file_id, offset)
        if txn is None:
            return None
        for processor in self.chain:
            result = processor(txn)
            if result is None:
                raise RecordDropped
            txn = result
        # As the Transformer does: orjson's buffer is at least 4 KiB, a queued event keeps only its own bytes.
        return bytes(memoryview(self.encode(txn))), txn.user_id is None


def segment_flat_path(
    parser: Parser, chain: Sequence[Processor], encode: Callable[[Transaction], bytes]
) -> FlatEncode | None:
    """The flat path for lines read by `parser` through `chain`, or None when either is not one it knows."""
    if parser.format not in ("kong", "auto"):
        return None
    places: list[tuple[str, ...]] = []
    for processor in chain:
        if processor is drop_raw:
            continue
        kind = type(processor)
        if kind not in _KNOWN_PROCESSORS:
            return None
        if kind is Identify:
            places += [tuple(place.split(".")) for place in processor.jwt_places]  # type: ignore[attr-defined]
    decoder = KongDecoder(places)
    if not decoder.supports(places):
        return None
    return SegmentFlat(decoder, chain, encode)
