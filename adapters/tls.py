"""TLS for the edges that listen (one server context from a ``tls`` settings block), and for
the site-to-hub link's client side."""

from __future__ import annotations

import ssl
from pathlib import Path

from broker.model.errors import AdapterError
from config.schema import TLS


def server_context(tls: TLS, *, setting: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context; client certificates checked against the CA when required.

    ``setting`` names the block (``http.tls``) in the :class:`AdapterError` raised when the
    certificate or key cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    password = tls.key_password.get_secret_value() if tls.key_password else None
    try:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key), password=password)
        if tls.ca_certificates is not None:
            context.load_verify_locations(str(tls.ca_certificates))
    except (OSError, ssl.SSLError) as exc:
        raise AdapterError(f"{setting}: cannot load the certificate or key: {exc}") from exc
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return context


def client_context(
    *,
    ca_certificates: Path | None,
    certificate: Path | None,
    private_key: Path | None,
    key_password: str | None,
    setting: str,
) -> ssl.SSLContext:
    """A TLS 1.2+ client context: the server checked against ``ca_certificates`` (the
    system's CAs without), and this side's certificate offered when one is given (mutual
    TLS). ``setting`` names the block in the :class:`AdapterError` of a file that cannot
    be loaded."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca_certificates is not None:
            context.load_verify_locations(str(ca_certificates))
        if certificate is not None:
            context.load_cert_chain(
                str(certificate),
                str(private_key) if private_key is not None else None,
                password=key_password,
            )
    except (OSError, ssl.SSLError) as exc:
        raise AdapterError(f"{setting}: cannot load the certificate or key: {exc}") from exc
    return context
