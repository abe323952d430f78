"""DICOM over TLS against dcmtk echoscu/storescu with real certificates (openssl)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from tests.peers import echoscu, storescu
from tests.service import Radbridge


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=radbridge test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(d / f"{name}.crt"),
        )
    return d


def _tls_args(pki: Path) -> list[str]:
    return ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]


def test_tls_with_client_certificates(
    radbridge_factory: Callable[..., Radbridge], pki: Path, tmp_path: Path
) -> None:
    """With TLS and required client certificates a certified peer stores; plain TCP gets nothing."""
    rb = radbridge_factory(
        tls={
            "certificate": str(pki / "server.crt"),
            "private_key": str(pki / "server.key"),
            "ca_certificates": str(pki / "ca.crt"),
            "require_client_certificate": True,
        }
    )
    assert echoscu(rb.port, extra_args=_tls_args(pki)).returncode == 0
    files = generate_study("ct_head", tmp_path / "tls", instances=3, rows=32, columns=32)
    storescu(files, rb.port, extra_args=_tls_args(pki))
    assert rb.study(pydicom.dcmread(files[0]).StudyInstanceUID)["instances"] == 3
    assert echoscu(rb.port, check=False, timeout=20).returncode != 0  # plain TCP
    anonymous = echoscu(rb.port, extra_args=["+tla", "+cf", str(pki / "ca.crt")], check=False)
    assert anonymous.returncode != 0  # TLS without a client certificate
    assert echoscu(rb.port, extra_args=_tls_args(pki)).returncode == 0  # still serving
