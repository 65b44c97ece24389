"""Secret names, and the one normal form every name is compared in — header names, query and fragment
parameter names, body keys, the names in dead-lettered lines.

`normalize`: percent-decoded until stable (`%6Bey`, `api%255Fkey`), `+` as a space, case-folded, `-` and ` ` as `_`.
`is_secret_name` also matches `user[password]` and `config.password` on `password`, a name ending like a credential (`SECRET_ENDINGS`),
a secret name behind `x_`, a camelCase name by its words (`accessToken` as `access_token`), and ignores Nginx's
`http_` / `sent_http_` prefixes.
`NameSet` remembers its verdicts, so that the names of a record, which repeat from record to record, are checked
with set operations done in C, and only a name never seen before is normalized.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

DEFAULT_HEADERS = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "apikey", "api-key", "x-api-key",
    "x-auth-token", "x-access-token", "x-auth",
)  # fmt: skip
DEFAULT_QUERY = ("apikey", "api_key", "key", "token", "access_token", "sig")  # sig: Azure's SAS signature
DEFAULT_BODY_KEYS = (
    "password", "passwd", "pwd", "secret", "client_secret", "token", "access_token", "refresh_token", "id_token",
    "auth_token", "api_key", "apikey", "jwt", "private_key", "jwk", "authorization", "cookie", "set-cookie",
    "passphrase",  # a private key's or a wallet's (`ssl_key_passphrase`, `key_passphrase`: by the ending below)
)  # fmt: skip


def normalize(name: str) -> str:
    """The one form names are compared in: percent-decoded until stable, case-folded, `-` and ` ` as `_`
    (`API Key`, a form's `api+key`)."""
    return _folded(_decoded(name))


def _folded(name: str) -> str:
    return name.strip().casefold().replace("-", "_").replace(" ", "_")


def _decoded(name: str) -> str:
    if "%" in name or "+" in name:
        for _ in range(4):  # `api%25255Fkey` is three decodings deep; nobody encodes deeper by accident
            decoded = unquote_plus(name)
            if decoded == name:
                break
            name = decoded
    return name


# Kong entity and plugin fields that hold a secret under a name nothing else here matches (in audit records and
# event hooks): a certificate's alternate private key, a HashiCorp Vault AppRole's secret id, OpenID Connect's
# private JWKs, SAML's signing and decryption keys, ACME's EAB HMAC key, AWS Lambda's access key, the AI plugins'
# provider credential (`auth.header_value`: "Bearer sk-…", `auth.param_value`) and Azure Content Safety key.
KONG_SECRET_FIELDS = (
    "key_alt", "approle_secret_id", "secret_id", "client_jwk", "request_signing_key", "eab_hmac_key", "aws_key",
    "response_encryption_key", "header_value", "param_value", "content_safety_key",
)  # fmt: skip
# The one set of secret names, normalized: `key`, `secret`, `password` and the rest are secrets wherever they
# appear (Kong entities in audit records and event hooks use it too).
SECRET_KEYS = frozenset(
    normalize(n) for n in (*DEFAULT_HEADERS, *DEFAULT_QUERY, *DEFAULT_BODY_KEYS, *KONG_SECRET_FIELDS)
)
# Credentials go by many names beyond the list (`X-Vault-Token`, `Private-Token`, `X-Amz-Security-Token`,
# `Ocp-Apim-Subscription-Key`, `X-Goog-Api-Key`, `X-Client-Secret`, `new_password`, `X-Amz-Signature`): a name
# ending so is secret too, and one that is a secret name behind `x_`. What this masks by mistake (a pagination
# `next_page_token`) costs a value; what it misses would leave. Not `_key` alone (`sort_key`, `idempotency_key`).
SECRET_ENDINGS = (
    "_token", "_secret", "_password", "_passwd", "_api_key", "_apikey", "_access_key", "_secret_key", "_private_key",
    "subscription_key", "_signature", "_credential", "_credentials",
    "_authorization",  # the Authorization header forwarded or renamed: X-Forwarded-Authorization, X-Amzn-Remapped-…
    "_passphrase",
)  # fmt: skip
# The word boundaries of a camelCase or PascalCase name (`accessToken`, `clientSecret`, `XApiKey`): JSON bodies
# and query strings name credentials so as often as with `_`. A second form of the name, tried after the first:
# `PassWord` and `pAsSwOrD` are still compared whole.
_CAMEL_WORDS = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
NAME_PARTS = re.compile(r"[.\[\]]+")  # what separates the parts of `config.redis.password`, `user[password]`
REMEMBERED = 4096  # names remembered per NameSet; beyond that, work is redone, not wrong


def is_secret_name(name: Any, secrets: frozenset[str]) -> bool:
    if not isinstance(name, str) or not name:
        return False
    if _is_secret_normal(normalize(name), secrets):
        return True
    # camelCase: the words, percent-decoded first (`access%54oken`), compared as `access_token` is.
    decoded = _decoded(name)
    split = _CAMEL_WORDS.sub("_", decoded)
    return split != decoded and _is_secret_normal(_folded(split), secrets)


def _is_secret_normal(norm: str, secrets: frozenset[str]) -> bool:
    if norm in secrets or norm.endswith(SECRET_ENDINGS) or (norm.startswith("x_") and norm[2:] in secrets):
        return True
    for prefix in ("http_", "sent_http_"):  # Nginx variables: `http_x_api_key` is the header `X-Api-Key`
        if norm.startswith(prefix) and norm[len(prefix) :] in secrets:
            return True
    if "[" in norm or "." in norm:  # `user[password]`, `a[b][token]`, `config.redis.password` (Kong's forms)
        return any(
            part in secrets or part.endswith(SECRET_ENDINGS) for part in NAME_PARTS.split(norm) if part
        )
    return False


class NameSet:
    """Which names are secret, remembered: after the first records, a record's names are checked against the
    ones already classified with set operations done in C, and only a new name is normalized."""

    __slots__ = ("secrets", "clean", "hit", "known")

    def __init__(self, secrets: frozenset[str]):
        self.secrets = secrets
        self.clean: set[Any] = set()
        self.hit: set[Any] = set()
        self.known: set[Any] = set()  # clean | hit

    def is_secret(self, name: Any) -> bool:
        if name in self.hit:
            return True
        if name in self.clean:
            return False
        found = is_secret_name(name, self.secrets)
        if len(self.known) < REMEMBERED:
            (self.hit if found else self.clean).add(name)
            self.known.add(name)
        return found

    def secrets_in(self, keys: Any) -> set[Any] | frozenset[Any]:
        """The secret names among `keys` (a dict's keys or a set)."""
        if keys <= self.known:  # the usual case: every name was seen before
            return keys & self.hit
        return {k for k in keys if self.is_secret(k)}
