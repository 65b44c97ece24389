"""Mutations of real records (examples/*.jsonl) for the fuzz tests: values swapped for huge, non-finite, negative
or mistyped ones, times in other units, deep nesting, then byte-level damage (flips, truncation, invalid UTF-8,
NULs, a BOM, CRLF).

Every choice goes through a `Chooser` (`pick(options)`, `number(lo, hi)`), so the same code serves hypothesis
(which shrinks a failing case) and a seeded `random.Random` (which writes a reproducible file for a process).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import random
from typing import Any, Protocol

from hypothesis import strategies as st

from shipper.sinks import sink_class
from shipper.sinks.base import RecordDropped

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
RECORDS: list[dict[str, Any]] = [
    json.loads(line) for path in sorted(EXAMPLES.glob("*.jsonl")) for line in path.read_bytes().splitlines() if line.strip()
]

SINK_NAMES = ("segment", "moesif", "runscope", "webhook", "stdout")
CREDENTIALS = {"SEGMENT_WRITE_KEY": "k", "MOESIF_APPLICATION_ID": "m", "RUNSCOPE_ACCESS_TOKEN": "t"}


def build_sinks() -> dict[str, Any]:
    """As the CLI builds them (`sink_class(name).from_options`), against a closed loopback port."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        options = {"runscope_bucket_key": "bucket"}
        return {name: sink_class(name).from_options(options, "http://127.0.0.1:9/") for name in SINK_NAMES}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_MS = 1_763_800_000_123
TIMES = [_MS / 1000, _MS, _MS * 1000, _MS * 1_000_000, str(_MS / 1000), str(_MS * 1000), f"{_MS / 1000:.3f}"]
HUGE = [1e300, -1e300, "1e30", "1e300", "-1e30", 10**25, -(10**25), "1234567890123456789012345", 2**64, 2**63]
NON_FINITE = ["nan", "inf", "-inf", "NaN", "Infinity", float("nan"), float("inf"), float("-inf")]
ODD = [-1, -5.5, 0, 0.5, "", "-", " ", None, True, False, [], {}, [1, "a"], {"a": {"b": 1}}, "\u0000", "\ufeff",
       "\ud800x", "x" * 300, "12abc", "0x1F", "1_000"]  # fmt: skip
DEEP = [300, 1000]
_RAW = "__kong_ship_fuzz_raw__"


class Chooser(Protocol):
    def pick(self, options: list[Any]) -> Any: ...

    def number(self, lo: int, hi: int) -> int: ...


class RandomChooser:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def pick(self, options: list[Any]) -> Any:
        return self.rng.choice(options)

    def number(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class DrawChooser:
    """A `Chooser` on hypothesis's `draw`, so that a failing line shrinks."""

    def __init__(self, draw: Any):
        self.draw = draw

    def pick(self, options: list[Any]) -> Any:
        return self.draw(st.sampled_from(options))

    def number(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))


def _paths(node: Any, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append(prefix + (key,))
        if depth < 6:
            out.extend(_paths(value, prefix + (key,), depth + 1))
    return out


def _get(record: Any, path: tuple) -> Any:
    for key in path:
        record = record[key]
    return record


def _swap(value: Any, choose: Chooser) -> Any:
    """The value as another JSON type."""
    forms: list[Any] = [str(value), [value], {"v": value}, None]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        forms += [float(value), -value, value * 1000]
    if isinstance(value, str):
        forms += [len(value), value.encode("utf-8", "replace")[:1].decode("latin-1")]
    return choose.pick(forms)


def mutate_record(choose: Chooser) -> tuple[dict[str, Any], int | None]:
    """A copy of an example record with 1–3 values changed; the nesting depth its raw marker stands for."""
    record = copy.deepcopy(choose.pick(RECORDS))
    depth = None
    for _ in range(choose.number(1, 3)):
        paths = _paths(record)
        if not paths:
            break
        path = choose.pick(paths)
        how = choose.pick(["time", "huge", "non_finite", "odd", "swap", "swap", "deep", "drop"])
        parent = _get(record, path[:-1])
        if how == "drop":
            del parent[path[-1]]
            continue
        if how == "deep":
            if depth is not None:
                continue
            depth = choose.pick(DEEP)
            new: Any = _RAW
        elif how == "swap":
            new = _swap(parent[path[-1]], choose)
        else:
            # A copy: a later step may mutate inside it, and the lists above must stay as they are.
            new = copy.deepcopy(choose.pick({"time": TIMES, "huge": HUGE, "non_finite": NON_FINITE, "odd": ODD}[how]))
        parent[path[-1]] = new
    return record, depth


def damage(data: bytes, choose: Chooser) -> bytes:
    """Byte-level damage, as a broken disk, an editor or another writer does it."""
    # Most lines keep their bytes, so most cases reach the formats and the encoders rather than the JSON parser.
    how = choose.pick(["none"] * 6 + ["flip", "truncate", "invalid_utf8", "nul", "bom", "crlf", "cr_only"])
    at = choose.number(0, max(0, len(data) - 1))
    if how == "flip":
        return data[:at] + bytes([data[at] ^ (1 << choose.number(0, 7))]) + data[at + 1 :] if data else data
    if how == "truncate":
        return data[:at]
    if how == "invalid_utf8":
        return data[:at] + choose.pick([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]) + data[at:]
    if how == "nul":
        return data[:at] + b"\x00" + data[at:]
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "crlf":
        return data + b"\r"
    if how == "cr_only":
        return data.replace(b",", b"\r,", 1)
    return data


def mutated_line(choose: Chooser) -> bytes:
    """One damaged line, without its newline (it never contains one)."""
    record, depth = mutate_record(choose)
    text = json.dumps(record, separators=(",", ":"), allow_nan=True)  # NaN/Infinity: what a broken writer emits
    if depth is not None:
        text = text.replace(f'"{_RAW}"', "[" * depth + "1" + "]" * depth)
    return damage(text.encode("utf-8", "surrogatepass"), choose).replace(b"\n", b" ")


@st.composite
def mutated_lines(draw: Any) -> bytes:
    """Hypothesis's strategy of `mutated_line`s."""
    return mutated_line(DrawChooser(draw))


class CountingFlat:
    """A sink's flat path that counts what it did: events, drops (RecordDropped), and lines handed back to the
    Transaction path (None or an exception) — so a differential test fails when a flat path quietly stops
    handling ordinary records."""

    def __init__(self, flat: Any):
        self.flat = flat
        self.events = self.dropped = self.fallbacks = 0

    @property
    def handled(self) -> int:
        return self.events + self.dropped

    def __call__(self, *args: Any) -> Any:
        try:
            made = self.flat(*args)
        except RecordDropped:
            self.dropped += 1
            raise
        except Exception:
            self.fallbacks += 1
            raise
        if made is None:
            self.fallbacks += 1
        else:
            self.events += 1
        return made

