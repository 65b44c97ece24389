"""TLS for kong-ship's listeners (`receive`'s HTTP listener, the TCP listener): one server context, built
once at start so that a missing or mismatched certificate fails the start, not the first connection."""

from __future__ import annotations

import ssl

from shipper.errors import ConfigError


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side context with the certificate chain (`cert_file`, PEM, leaf first) and its key.
    TLS 1.2 is the floor: Kong's OpenResty speaks 1.2 and 1.3, and older versions are broken.
    ConfigError when the files cannot be read or do not match."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError:
        # ssl does not say which of the two is missing
        raise ConfigError(f"--tls-cert {cert_file} / --tls-key {key_file}: no such file") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"--tls-cert {cert_file} / --tls-key {key_file}: {exc.reason or exc}") from None
    except OSError as exc:
        raise ConfigError(f"--tls-cert/--tls-key: {exc}") from None
    return context
