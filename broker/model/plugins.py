"""Functions the adapter packages declare as ``radbridge.registries`` entry points.

The core finds adapters only through these names (``vendor_transports``,
``writeback_targets``, ``study_reader``, …), so it never imports an adapter.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from broker.model.errors import ConfigError

GROUP = "radbridge.registries"


def registered(name: str) -> Any:
    """A function an adapter package declares under the ``radbridge.registries`` entry points."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        raise ConfigError(f"nothing is installed as '{name}' (entry point {GROUP})")
    return found[name].load()
