"""The radbridge settings a scenario runs with: a base on loopback, the scenario's fragment over it.

The runner writes them for the radbridge it starts (:class:`~.world.World`); loading a
scenario checks its fragment merged over the same base (:func:`~.schema.load_scenario`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.harness.process import LOOPBACK


def base_config(folder: Path, port: int, hl7_port: int, http_port: int) -> dict[str, Any]:
    """radbridge on loopback with its own spool and SQLite store; fast timers for scenarios."""
    return {
        "site": {"name": "radbridge scenario"},
        "storage": {"spool": str(folder / "spool"), "database": f"sqlite:///{folder}/radbridge.db"},
        "dicom": {
            "listen": {"host": LOOPBACK, "port": port},
            "ae_titles": {
                "RADBRIDGE": "ingest",
                "RADBRIDGE_STAT": {"role": "ingest", "stable_seconds": 0.5},
                "RADBRIDGE_RES": "results",
            },
            "allow_any_peer": True,
            "study_stable_seconds": 1,
            "processes": 1,
        },
        "hl7": {"listen": {"host": LOOPBACK, "port": hl7_port}},
        "http": {"listen": {"host": LOOPBACK, "port": http_port}},
        "delivery": {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5},
        "logging": {"level": "INFO", "format": "json"},
    }


def merge(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """``fragment`` over ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
