"""Secrets come from an environment variable or a file, never only from a flag (flags show up in `ps`)."""

from __future__ import annotations

import os

from shipper.errors import ConfigError


def read_secret(env: str, path: str | None, flag: str) -> str:
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {flag} {path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{flag} {path} is empty: put the secret in it, or set {env}")
        return value
    value = os.environ.get(env, "").strip()
    if not value:
        raise ConfigError(f"{env} is not set: export {env}=... or pass {flag} FILE")
    return value
