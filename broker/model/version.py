"""radbridge's version, read once from the installed package's metadata (``pyproject.toml``
is its only source): ``radbridge --version``, ``/healthz``, the console's footer and the
service's start line all show this value."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION: str = version("radbridge")
except PackageNotFoundError:  # imported from a source tree that was never installed
    VERSION = "0+unknown"
