"""Kong Enterprise audit-log signatures: the canonical form of a record, and RSA/SHA-256 verification.

With `audit_log_signing_key` set, Kong signs each audit record (RSA, PKCS#1 v1.5 padding, SHA-256) and stores the
signature, base64-encoded, in the record's `signature` field. What is signed is the record's *canonical form*,
which Kong's documentation gives as a few lines of Lua (`serialize`, joined with `table.concat(..., "|")`):

1. the fields `signature`, `expire` and `ttl` are removed — at every level: the Lua function clears them on each
   table it serializes, nested ones included;
2. the remaining keys are walked in lexical (byte) order;
3. a value that is an object (or an array) is serialized the same way, recursively, and its parts take its
   place in the sequence (an array's elements in their order);
4. nulls are skipped; every other value is written in its plain text form: strings as they are, integers without
   a fractional part (`1581617463`, never `1581617463.0`), other numbers as Lua's `tostring` writes them
   (`%.14g`), booleans as `true` / `false`;
5. the parts are joined with `|`, with no trailing newline, and the UTF-8 bytes of that string are signed.

One example in Kong's documentation shows an `expire`-like number inside a request record's canonical string;
the reference implementation removes `expire`. This module follows the implementation.

Kong's own code signs a record *before* inserting it (`sign_adjacent` in `kong/enterprise_edition/audit_log.lua`),
and the database layer adds `request_timestamp` (`auto_timestamp_s` in the `audit_requests` schema) and, for an
object audit, its `id` afterwards: the signature Kong stores covers the record without them, though the documented
form includes them. So a signature is accepted when it verifies over the documented form, or over the same form
without those insert-time fields (`INSERT_TIME_FIELDS`). Neither is weaker than what Kong signed — a signature only
verifies over the bytes that were signed — but it means Kong's signatures do not protect `request_timestamp` or
an object's `id`.

Verification uses the `cryptography` package (OpenSSL underneath): nothing cryptographic is written by hand.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from shipper.errors import ConfigError

REMOVED = frozenset({"signature", "expire", "ttl"})
# Filled in by Kong's database layer after the record was signed (see the module's docstring).
INSERT_TIME_FIELDS = ("request_timestamp", "id")

VERIFIED = "verified"
UNSIGNED = "unsigned"
INVALID = "invalid"

_MAX_DEPTH = 64


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".14g")
    return str(value)


def _parts(value: Any, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("audit record nested too deeply")
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if k not in REMOVED]
        items.sort(key=lambda kv: str(kv[0]).encode("utf-8", "surrogatepass"))
        values = [v for _, v in items]
    else:  # a list
        values = value
    for item in values:
        if item is None:
            continue
        if isinstance(item, (dict, list)):
            _parts(item, out, depth + 1)
        else:
            out.append(_text(item))


def canonical(record: dict[str, Any]) -> str:
    """The canonical form Kong signs (see the module's docstring)."""
    out: list[str] = []
    _parts(record, out, 0)
    return "|".join(out)


def canonical_bytes(record: dict[str, Any]) -> bytes:
    """The canonical form's bytes. A record read from an answer that was not UTF-8 (`kong_audit.lenient_json`)
    keeps its undecodable bytes as surrogate escapes: they are turned back into those bytes, the ones Kong signed."""
    text = canonical(record)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def load_public_key(path: str, flag: str = "--public-key") -> rsa.RSAPublicKey:
    """An RSA public key from a PEM (or DER) file: `public.pem` as `openssl rsa -pubout` writes it, or a
    certificate holding one. ConfigError, one line, for anything else."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {flag} {path}: {exc.strerror}") from None
    key: Any = None
    try:
        if b"-----BEGIN" in data:
            if b"PRIVATE KEY-----" in data:
                raise ConfigError(
                    f"{flag} {path} holds a private key: pass the public one "
                    "(openssl rsa -in private.pem -pubout -out public.pem)"
                )
            if b"-----BEGIN CERTIFICATE-----" in data:
                from cryptography import x509

                key = x509.load_pem_x509_certificate(data).public_key()
            else:
                key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{flag} {path}: not a PEM or DER public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"{flag} {path}: not an RSA key (Kong signs audit records with RSA)")
    return key


def check(record: dict[str, Any], key: rsa.RSAPublicKey) -> str:
    """`verified`, `unsigned` (no signature) or `invalid` (a signature that does not verify under `key`:
    the record was changed, or signed with another key, or the signature is not base64)."""
    signature = record.get("signature")
    if signature is None or signature == "":
        return UNSIGNED
    if not isinstance(signature, str):
        return INVALID
    try:
        raw = base64.b64decode("".join(signature.split()), validate=True)
    except (binascii.Error, ValueError):
        return INVALID
    try:
        forms = [canonical_bytes(record)]
        signed_before_insert = {k: v for k, v in record.items() if k not in INSERT_TIME_FIELDS}
        if len(signed_before_insert) != len(record):
            forms.append(canonical_bytes(signed_before_insert))
    except (ValueError, RecursionError):
        return INVALID
    for data in forms:
        try:
            key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        return VERIFIED
    return INVALID
