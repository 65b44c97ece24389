"""Processors: callables `(Transaction) -> Transaction | None`, composed into a chain.

Each may change the transaction in place and return it, or return None to drop it. As structlog's processors:
configured once (the work done at construction), cheap to call, and shown by their `repr`, so that
`check-config` can print the chain a run would use. `build_chain` composes the default chain and `chain_for`
composes it from a run's settings (the pipeline and `parse` both); tests and later features (filters,
sampling) compose their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from types import FunctionType
from typing import TYPE_CHECKING

from shipper.model import Transaction
from shipper.processors.filters import Dropped, filters_for, flag_filters
from shipper.processors.identity import DEFAULT_JWT_PLACES, identify
from shipper.processors.masking import Masker, drop_raw
from shipper.processors.sampling import sampling_for
from shipper.processors.window import time_window

if TYPE_CHECKING:  # only a type here: shipper.settings imports the processors' defaults
    from shipper.settings import Settings

Processor = Callable[[Transaction], Transaction | None]
__all__ = ["Dropped", "Processor", "build_chain", "chain_for", "describe", "describe_chain", "run_chain"]


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
        result = processor(txn)
        if result is None:
            return None
        txn = result
    return txn


def chain_for(settings: Settings, sink: str | None = None) -> tuple[Masker, list[Processor]]:
    """A run's masker (its dead-letter file masks with it too) and its processor chain, from its settings: the
    chain of `sink`'s lane (its filters, processors/filters.py), or with None every filter (check-config)."""
    masker = Masker((*settings.mask_headers, *settings.mask_query, *settings.mask_body_keys), settings.ship_raw_bodies)
    chain = build_chain(
        settings.jwt_places, settings.jwt_claim, since_ms=settings.since_ms, until_ms=settings.until_ms, masker=masker
    )
    # Filters, then sampling, after the time window and before identity and masks: the cheapest first, and a
    # dropped record costs no JWT decoding or masking. Sampling after the filters: its rate is of what is left.
    rules = filters_for((*flag_filters(settings.exclude_paths, settings.exclude_statuses), *settings.filters), sink)
    sampling = sampling_for(settings.sample_rate, settings.sample_rules)
    at = 1 if settings.since_ms is not None or settings.until_ms is not None else 0
    chain[at:at] = [*rules, *([sampling] if sampling is not None else [])]
    return masker, chain


def describe(processor: Processor) -> str:
    """A processor as `check-config` shows it: its own repr, else (a plain function, a class that has no repr
    yet) its name."""
    if isinstance(processor, FunctionType):
        return processor.__name__
    if type(processor).__repr__ is not object.__repr__:
        return repr(processor)
    return type(processor).__name__


def describe_chain(chain: Sequence[Processor]) -> str:
    return " → ".join(describe(processor) for processor in chain)
