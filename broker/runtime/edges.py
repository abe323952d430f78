"""The edge plugin: the listeners and servers at the system's boundary, and their registry.

An edge is a class that declares its ``name`` and implements :class:`Edge`
(``start`` and ``stop``; ``recover`` has a default), registered as an entry
point of ``radbridge.edges`` under that name::

    [project.entry-points."radbridge.edges"]
    hl7 = "adapters.hl7.edge:Hl7Edge"

The service starts every registered edge (:data:`EDGES`), so the broker never
imports an adapter by name. An edge reads its own block of the settings
(``dicom``, ``hl7``, ``http``) from :attr:`ServiceContext.settings` and does
nothing when its block says it is not wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeGuard

from sqlalchemy import Engine

from broker.model.plugins import Registry
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
    evidence: Callable[[Iterable[str]], None] | None = None
    """Judge these studies' completion now: instances, an MPPS or an IAN came for them
    (:meth:`broker.runtime.completion.StableTimer.evidence`)."""
    timed: Callable[[Callable[[datetime], datetime | None]], None] | None = None
    """Give the service's engine timer a timed action of the edge (called in ``start``):
    the task is called with the time now and answers when it next has work (None: not
    known); with several nodes only the node holding the ``engine`` turn runs it."""


class Edge(Protocol):
    """An edge of the service, made with no arguments.

    The service calls ``recover`` on every edge once before any starts (after a
    crash: index what was acknowledged but not yet indexed), then ``start``,
    and ``stop`` when it stops. An edge that subclasses this class gets the
    default ``recover`` (nothing to recover).
    """

    name: ClassVar[str]
    """The edge's name, the same as its entry point's."""

    def recover(self, context: ServiceContext) -> None:
        """Nothing to recover: what the edge acknowledged is already in the store."""
        return None

    def start(self, context: ServiceContext) -> None:
        """Start serving (bind the socket here, so a port in use fails the start)."""
        ...

    def stop(self) -> None:
        """Stop serving; work in progress gets a grace time to finish."""
        ...


def _is_edge(obj: object) -> TypeGuard[type[Edge]]:
    return (
        isinstance(obj, type)
        and isinstance(getattr(obj, "name", None), str)
        and all(callable(getattr(obj, method, None)) for method in ("recover", "start", "stop"))
    )


def _edge_name(edge: type[Edge]) -> str:
    return edge.name


EDGES: Registry[Edge] = Registry("edge", GROUP, _is_edge, _edge_name)
"""Every edge, by name."""


def available() -> dict[str, type[Edge]]:
    """Every registered edge, by name (each imported)."""
    return dict(EDGES.all())


def load(name: str) -> type[Edge]:
    """The edge class registered as ``name``; a typo gets a suggestion."""
    return EDGES.get(name)
