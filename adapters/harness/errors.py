"""The harness's errors."""

from __future__ import annotations

from broker.model.errors import AdapterError


class HarnessError(AdapterError):
    """A simulator cannot do what it was asked (peer missing, bad option, failed send)."""
