"""HTTPS on radbridge's HTTP server (``http.tls``) with certificates of a test CA (openssl),
checked by httpx as a client that trusts only that CA."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker.model.domain import Role
from broker.model.errors import AdapterError
from broker.store.api_tokens import ApiTokens
from tests.databases import empty_database
from tests.e2e.test_http_edge import serve
from tests.e2e.test_tls import pki  # noqa: F401 (the module's CA and certificates)

pytestmark = pytest.mark.xdist_group("http_tls")


@pytest.fixture(scope="module")
def https(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:  # noqa: F811
    """The web edge over TLS with the server certificate for 127.0.0.1; its URL and a
    viewer token."""
    folder = tmp_path_factory.mktemp("https")
    tls = {"certificate": str(pki / "server.crt"), "private_key": str(pki / "server.key")}
    with empty_database("sqlite", folder) as engine:
        token = ApiTokens(engine).create(Role.VIEWER, "https viewer")
        server, port = serve(engine, folder, {"tls": tls})
        try:
            yield f"https://127.0.0.1:{port}", token
        finally:
            server.stop()


def _trusting(folder: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(folder / "ca.crt"))


def test_https_answers_with_hsts_and_a_secure_session_cookie(
    https: tuple[str, str],
    pki: Path,  # noqa: F811
) -> None:
    """A client trusting the CA gets /healthz over HTTPS with Strict-Transport-Security, and a
    console login over it sets a Secure, HttpOnly cookie."""
    base, token = https
    with httpx.Client(base_url=base, verify=_trusting(pki)) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.headers["strict-transport-security"].startswith("max-age=")
        login = client.post("/console/login", data={"token": token})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie


def test_plain_http_and_untrusted_clients_get_nothing(
    https: tuple[str, str],
    pki: Path,  # noqa: F811
) -> None:
    """Plain HTTP on the HTTPS port gets no answer; a client that does not trust the CA
    refuses the server's certificate."""
    base, _token = https
    with pytest.raises(httpx.HTTPError):
        httpx.get(base.replace("https://", "http://") + "/healthz", timeout=10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=10)


def test_unreadable_certificate_fails_the_start_naming_the_setting(tmp_path: Path) -> None:
    """A certificate that cannot be loaded stops the start with an error naming http.tls."""
    missing = {"certificate": str(tmp_path / "none.crt"), "private_key": str(tmp_path / "k")}
    refused = pytest.raises(AdapterError, match=r"^http\.tls: cannot load")
    with empty_database("sqlite", tmp_path) as engine, refused:
        serve(engine, tmp_path, {"tls": missing})
