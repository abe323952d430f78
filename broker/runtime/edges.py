"""The registry of edges (listeners and senders at the system's boundary).

The broker never imports an adapter by name: adapters declare themselves as
``radbridge.edges`` entry points in ``pyproject.toml`` and the service starts
whatever is registered, like kombu finds its transports.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine

from broker.model.errors import ConfigError, did_you_mean
from broker.store import StudyStore
from broker.store.spool import Spool
from config.schema import Settings

if TYPE_CHECKING:
    from broker.runtime.reload import Reloader
    from broker.runtime.snapshot import SnapshotHolder

GROUP = "radbridge.edges"


@dataclass(frozen=True)
class ServiceContext:
    """What an edge gets from the service: settings, store and spool."""

    settings: Settings
    engine: Engine
    store: StudyStore
    spool: Spool
    snapshots: SnapshotHolder | None = None
    """The configuration snapshot in force (swapped by a reload), for the HTTP API and console."""
    reloader: Reloader | None = None
    """Reloads the configuration file (SIGHUP, the file changing, the API)."""


class Edge(Protocol):
    """An edge of the service; ``recover`` runs once before any edge starts."""

    name: str

    def recover(self, context: ServiceContext) -> None: ...

    def start(self, context: ServiceContext) -> None: ...

    def stop(self) -> None: ...


def available() -> dict[str, type[Edge]]:
    return {ep.name: ep.load() for ep in entry_points(group=GROUP)}


def load(name: str) -> type[Edge]:
    """The edge class registered as ``name``; a typo gets a suggestion."""
    edges = available()
    if name not in edges:
        raise ConfigError(f"no such edge '{name}'{did_you_mean(name, edges, or_list=True)}")
    return edges[name]
