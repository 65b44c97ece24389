"""The trust store of every TLS client kong-ship makes (the sinks' senders, `audit`'s Admin API client): one
context per process and CA file."""

from __future__ import annotations

import os
import ssl
import threading

import httpx


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verification is always on. `--ca-file` adds its CAs to those trusted without it (httpx's: Mozilla's
    bundle from certifi, or $SSL_CERT_FILE) rather than replacing them: a private CA for a proxy or a
    self-hosted endpoint, and one file can serve an Admin API and a public vendor alike.

    Made once per process and CA file, and shared by every client, the senders and the Admin API client (a
    context is safe to share between threads): loading the trust store takes 50-90 ms of CPU, which each client
    made itself before, at start-up and on one core, once per sink, and once more for --ca-file's check
    (`running.load_ca_file`)."""
    key = os.path.abspath(ca_file) if ca_file else None
    with _contexts_lock:
        context = _contexts.get(key)
        if context is None:
            context = httpx.create_ssl_context()
            if key is not None:
                context.load_verify_locations(cafile=key)
            _contexts[key] = context
        return context


_contexts: dict[str | None, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()
