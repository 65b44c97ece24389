"""Processors: small plain functions `(Transaction) -> Transaction | None`, composed into a chain.

Each may change the transaction in place and return it, or return None to drop it. `build_chain` composes the
default chain; tests and later features (filters, sampling) compose their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from shipper.model import Transaction
from shipper.processors.identity import DEFAULT_JWT_PLACES, identify
from shipper.processors.masking import Masker, drop_raw
from shipper.processors.window import time_window

Processor = Callable[[Transaction], Transaction | None]


def build_chain(
    jwt_places: Sequence[str] = DEFAULT_JWT_PLACES,
    jwt_claim: str = "sub",
    extra_mask_headers: Iterable[str] = (),
    extra_mask_query: Iterable[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    extra_mask_body_keys: Iterable[str] = (),
    ship_raw_bodies: bool = False,
    masker: Masker | None = None,
) -> list[Processor]:
    """The default chain. `masker` (one the caller also gives the dead-letter file) wins over the mask
    options."""
    if masker is None:
        masker = Masker((*extra_mask_headers, *extra_mask_query, *extra_mask_body_keys), ship_raw_bodies)
    window = [time_window(since_ms, until_ms)] if since_ms is not None or until_ms is not None else []
    return [
        *window,  # first: a record outside the window costs no JWT decoding
        identify(jwt_places, jwt_claim),
        masker,
        drop_raw,
    ]


def run_chain(chain: Sequence[Processor], txn: Transaction) -> Transaction | None:
    for processor in chain:
        txn = processor(txn)
        if txn is None:
            return None
    return txn
