"""Secrets come from an environment variable or a file, never only from a flag (flags show up in `ps`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from shipper.errors import ConfigError


# While a route's sink is built (shipper/routing.py), its variables are the sink's with the route's suffix:
# SEGMENT_WRITE_KEY_TEAM_A for route team-a, so a route never reads the default destination's secret.
_ENV_SUFFIX: ContextVar[str] = ContextVar("env_suffix", default="")


@contextmanager
def env_suffix(suffix: str) -> Iterator[None]:
    token = _ENV_SUFFIX.set(suffix)
    try:
        yield
    finally:
        _ENV_SUFFIX.reset(token)


def read_secret(env: str, path: str | None, flag: str) -> str:
    if _ENV_SUFFIX.get():
        env = f"{env}_{_ENV_SUFFIX.get()}"
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
