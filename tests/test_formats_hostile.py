"""Hostile Nginx JSON lines and hostile tokens on the Transaction path (`kong-ship parse`, `backfill` with
`--workers 0` and `--workers 2`), where tests/test_flat_hostile.py (Kong records, flat paths) and
tests/test_fuzz_lines.py (mutated Kong records) do not go: Nginx's two escapings, odd request targets and
methods, `-` and `000`, times in every unit and as odd ISO text, duplicate keys, huge and non-finite numbers,
and `$http_authorization` holding JWTs of every shape. Every run is held to the product's promises: no traceback
and exit 0; every line read is shipped, dead-lettered, filtered, skipped or blank (the summary, and the
dead-letter file line for line); every numbered record that is well-formed arrives once; and no marker secret
leaves (stdout, stderr, the state directory with its dead letters).

A property test (derandomized, like the suite's other hypothesis tests) mutates real Nginx records and holds
the Transformer of every sink, and then a real backfill, to the same invariants.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
from typing import Any

import orjson
import pytest

from shipper.model import Transaction
from shipper.processors.identity import Identify, decode_jwt

SECRET = "fmthostileSECRET"


def b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(claims: Any, header: Any = None, signature: str = "c2ln") -> str:
    return f"{b64(header if header is not None else {'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.{signature}"


# -- identity's memory -----------------------------------------------------------------------------------------
def test_distinct_large_tokens_do_not_grow_identitys_memory_without_bound():
    """Each distinct JWT-place value was remembered (8,192 of them) with its claims, and each distinct token
    again in decode_jwt's cache: 3,000 distinct 3 KB tokens — one a request, any client can send them — held
    52 MiB (8,192 of 8 KB, 178-282 MiB) in every process that identifies (each worker, each sink's chain)."""
    decode_jwt.cache_clear()
    identify = Identify()
    tracemalloc.start()
    try:
        for seq in range(3000):
            claims = {"sub": f"user-{seq}", "groups": [f"group-{seq}-{n}" for n in range(150)]}  # ~3 KB
            txn = Transaction(event_id=str(seq), source_format="nginx", position=None, raw={},
                              request_headers={"authorization": "Bearer " + token(claims)})  # fmt: skip
            assert identify(txn).user_id == f"user-{seq}"
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        decode_jwt.cache_clear()
    assert held < 12 << 20, f"{held / 2**20:.0f} MiB held"
