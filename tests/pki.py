"""Test certificates made with ``openssl`` (EC P-256 keys: a few milliseconds each).

:func:`authority` makes a CA; :func:`issue` a certificate it signs, for a server (its
subjectAltName 127.0.0.1) or a client. Files are PEM: ``NAME.crt`` and ``NAME.key``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def authority(folder: Path, name: str) -> Path:
    """A self-signed CA ``folder/NAME.crt`` (key ``NAME.key``), valid two days."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", *_EC, "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt"),
    )  # fmt: skip
    return folder / f"{name}.crt"


def issue(folder: Path, ca: str, name: str) -> tuple[Path, Path]:
    """A certificate ``NAME.crt`` (and key) signed by the CA ``ca``, for 127.0.0.1."""
    key, csr, crt = (folder / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    _openssl("req", *_EC, "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(folder / f"{ca}.crt"),
        "-CAkey", str(folder / f"{ca}.key"), "-CAcreateserial", "-days", "2",
        "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    return crt, key
