"""Tokens read without PyJWT (shipper/processors/jwt_payload.py): the same claims, or the same refusal, as PyJWT's
unverified decode gave identity before, on generated tokens well- and ill-formed; and no start of kong-ship
imports PyJWT or cryptography for it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import jwt
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gen
from shipper.processors.identity import decode_jwt
from shipper.processors.jwt_payload import unverified_claims

ours = decode_jwt.__wrapped__  # without the cache


def our_claims(token: str) -> dict[str, Any] | None:
    try:
        return unverified_claims(token)
    except (ValueError, RecursionError):  # what decode_jwt catches
        return None


def pyjwt_claims(token: str) -> dict[str, Any] | None:
    """What identity.decode_jwt read with PyJWT, before its own check that a sink can send the claims."""
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        return None


def same(a: Any, b: Any) -> bool:
    return (a is None) == (b is None) and repr(a) == repr(b)  # repr: NaN is not equal to itself


def b64(data: bytes, padding: str) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    if padding == "none":
        return text.rstrip("=")
    if padding == "wrong":
        return text.rstrip("=") + "==="
    return text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63) | st.integers() | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
plain_header = st.fixed_dictionaries({"alg": st.sampled_from(["HS256", "none", "RS256"])},
                                     optional={"typ": st.just("JWT"), "kid": st.text(max_size=4)})
odd_header = st.fixed_dictionaries(  # a kid of another type, a detached payload, critical extensions
    {"alg": st.just("HS256")},
    optional={
        "kid": st.integers(), "b64": st.booleans(), "exp": st.integers(),
        "crit": st.lists(st.sampled_from(["b64", "exp", 7]), max_size=2) | st.just("b64"),
    },
)
headers = plain_header | plain_header | odd_header
claims = st.dictionaries(st.sampled_from(["sub", "iss", "exp", "x"]), json_values, max_size=4)
payloads = claims | claims | claims | json_values


@st.composite
def segment_text(draw: st.DrawFn, value: st.SearchStrategy[Any], clean: bool) -> str:
    kind = "json" if clean else draw(st.sampled_from(["json", "json", "utf16", "bytes", "junk"]))
    if kind == "junk":
        return draw(st.text(alphabet="AbZ09-_=+/.!é ", max_size=12))
    if kind == "bytes":
        data = draw(st.binary(max_size=12))
    else:
        text = json.dumps(draw(value))  # NaN and Infinity as JavaScript writes them, as an issuer might
        data = text.encode("utf-16" if kind == "utf16" else "utf-8")
    encoded = b64(data, draw(st.sampled_from(["none", "kept"] if clean else ["none", "kept", "wrong"])))
    if encoded and encoded[-1] != "=" and draw(st.integers(min_value=0, max_value=3)) == 0:
        # Another last character: the same bytes with other trailing bits (B, _ and - set some: not canonical).
        encoded = encoded[:-1] + draw(st.sampled_from("AQgwB_-"))
    return encoded


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """Half of them well-formed but for what the header and payload say (and, at times, the trailing bits of a
    segment); the others mutated in their segments or in their number of segments."""
    clean = draw(st.booleans())
    parts = [draw(segment_text(value, clean)) for value in (headers, payloads, st.none())]
    if clean:
        pass
    elif draw(st.integers(min_value=0, max_value=4)) == 0:
        parts = parts[: draw(st.integers(min_value=0, max_value=2))] or [""]
    elif draw(st.integers(min_value=0, max_value=4)) == 0:
        parts.insert(draw(st.integers(min_value=0, max_value=3)), draw(st.text(alphabet="ab.", max_size=3)))
    return ".".join(parts)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(tokens())
@example(gen.jwt_for("u-1"))
@example(gen.make_jwt({"sub": "u-2", "n": float("nan"), "big": 2**80}))
@example(gen.make_jwt({"sub": "u-3"}) + "\ud800")
@example("a.b")
@example("...")
def test_the_claims_are_pyjwts(token):
    assert same(our_claims(token), pyjwt_claims(token)), token


def test_a_well_formed_token_gives_its_claims():
    token = gen.make_jwt({"sub": "user-7", "scope": "orders:read"})
    assert ours(token) == {"sub": "user-7", "scope": "orders:read"}
    header, payload, signature = token.split(".")
    assert ours(f"{header}.{payload}===.{signature}") is None  # a wrong padding
    assert ours(f"{header}.{payload[:-1]}!.{signature}") is None  # outside the alphabet
    # The same bytes with the unused bits of the last character set: not in canonical form.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 0b1111, 3: 0b11}[len(payload) % 4]
    odd = payload[:-1] + alphabet[alphabet.index(payload[-1]) | unused]
    def unpadded(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    assert unpadded(odd) == unpadded(payload)
    assert ours(f"{header}.{odd}.{signature}") is None


def test_no_run_imports_pyjwt_or_cryptography():
    """Identity decodes tokens at every start of tail and backfill: PyJWT would bring cryptography (60-90 ms)."""
    code = (
        "import sys\n"
        "from shipper.cli import cli\n"
        "for name in ('backfill', 'tail', 'parse', 'receive'): cli.commands[name]\n"
        "from shipper.processors import chain_for\n"
        "from shipper.processors.identity import decode_jwt\n"
        f"assert decode_jwt({gen.jwt_for('u')!r})['sub'] == 'u'\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jwt', 'cryptography'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
