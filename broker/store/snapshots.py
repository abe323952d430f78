"""The configuration snapshots put in force, and the unfinished work a reload must not drop.

``config_snapshots`` gets one row each time ``radbridge serve`` puts a snapshot in
force (at start, on a reload, when a removed vendor has drained): its id, when,
the file it came from, the configuration's view (JSON, secrets never stored) and
the vendors and targets it keeps only to finish their work. The newest row is the
snapshot in force: ``radbridge config diff`` compares a file with it, the REST API
shows it, and ``radbridge worker`` processes follow it.

:func:`unfinished` finds the jobs of vendors and the write-backs of targets a new
configuration would remove, so the reload can refuse naming them.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import (
    Column,
    Engine,
    Index,
    Integer,
    Row,
    String,
    Table,
    Text,
    insert,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import StoreError
from broker.model.jobs import JobState
from broker.model.writeback import DeliveryState
from broker.store.engine import writing
from broker.store.tables import UTCDateTime, deliveries, jobs, metadata

config_snapshots = Table(
    "config_snapshots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("snapshot", String(64), nullable=False),
    Column("previous", String(64)),
    Column("loaded_at", UTCDateTime, nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("source", Text),
    Column("config", Text, nullable=False),
    Column("draining", Text, nullable=False),
    Index(None, "snapshot"),
)
"""Each snapshot put in force by the service (migration 0011 creates it)."""

#: Job states that still need their vendor: a removal of the vendor is refused while
#: one of its jobs is in one of them (``dead`` waits for an operator's retry).
JOB_NEEDS_VENDOR = frozenset(
    {
        JobState.PENDING,
        JobState.SENDING,
        JobState.SENT,
        JobState.AWAITING_RESULT,
        JobState.FAILED,
        JobState.DEAD,
    }
)
#: Write-back states that still need their target.
WRITEBACK_NEEDS_TARGET = frozenset(
    {DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.FAILED, DeliveryState.DEAD}
)
#: Of those, the states that move on by themselves: a draining vendor or target leaves
#: the configuration once none of its work is in one of them.
IN_PROGRESS = frozenset(
    {
        JobState.PENDING.value,
        JobState.SENDING.value,
        JobState.SENT.value,
        JobState.AWAITING_RESULT.value,
        JobState.FAILED.value,
    }
)
_LISTED = 20


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """One snapshot the service put in force."""

    id: int
    snapshot: str
    previous: str | None
    loaded_at: datetime
    trigger: str
    """``start``, ``sighup``, ``file``, ``api`` or ``drained``."""
    source: str | None
    config: str
    """The configuration's view as JSON (``broker.runtime.config_diff.ConfigView``)."""
    draining_vendors: tuple[str, ...] = ()
    draining_targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A job (of a vendor) or a write-back (to a target) and its state."""

    id: int
    state: str


@dataclass(frozen=True, slots=True)
class Unfinished:
    """The unfinished jobs of some vendors and write-backs to some targets."""

    jobs: dict[str, list[WorkItem]] = field(default_factory=dict)
    writebacks: dict[str, list[WorkItem]] = field(default_factory=dict)

    def in_progress(self) -> tuple[set[str], set[str]]:
        """The vendors and targets with work that still moves on by itself."""
        return (
            {v for v, items in self.jobs.items() if any(i.state in IN_PROGRESS for i in items)},
            {
                t
                for t, items in self.writebacks.items()
                if any(i.state in IN_PROGRESS for i in items)
            },
        )


def _record(row: Row[object]) -> SnapshotRecord:
    draining = json.loads(row.draining)
    return SnapshotRecord(
        id=row.id,
        snapshot=row.snapshot,
        previous=row.previous,
        loaded_at=row.loaded_at,
        trigger=row.trigger,
        source=row.source,
        config=row.config,
        draining_vendors=tuple(draining.get("vendors", ())),
        draining_targets=tuple(draining.get("targets", ())),
    )


class SnapshotLog:
    """The ``config_snapshots`` table: append a snapshot put in force; read the newest."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        *,
        snapshot: str,
        previous: str | None,
        loaded_at: datetime,
        trigger: str,
        source: str | None,
        config: str,
        draining_vendors: Collection[str] = (),
        draining_targets: Collection[str] = (),
    ) -> int:
        draining = {"vendors": sorted(draining_vendors), "targets": sorted(draining_targets)}
        try:
            with writing(self.engine) as conn:
                result = conn.execute(
                    insert(config_snapshots).values(
                        snapshot=snapshot,
                        previous=previous,
                        loaded_at=loaded_at,
                        trigger=trigger,
                        source=source,
                        config=config,
                        draining=json.dumps(draining),
                    )
                )
                key = result.inserted_primary_key
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record configuration snapshot {snapshot}: {exc}") from exc
        assert key is not None
        return int(key[0])

    def in_force(self) -> SnapshotRecord | None:
        """The newest snapshot the service put in force; None before the first start."""
        query = select(config_snapshots).order_by(config_snapshots.c.id.desc()).limit(1)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the configuration snapshot in force: {exc}") from exc
        return _record(row) if row is not None else None

    def find(self, snapshot: str) -> SnapshotRecord | None:
        """The newest record of the snapshot ``snapshot`` (``cfg-…``)."""
        query = (
            select(config_snapshots)
            .where(config_snapshots.c.snapshot == snapshot)
            .order_by(config_snapshots.c.id.desc())
            .limit(1)
        )
        try:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read configuration snapshot {snapshot}: {exc}") from exc
        return _record(row) if row is not None else None


def unfinished(
    engine: Engine, vendors: Collection[str] = (), targets: Collection[str] = ()
) -> Unfinished:
    """The jobs of ``vendors`` and the write-backs to ``targets`` that still need them
    (:data:`JOB_NEEDS_VENDOR`, :data:`WRITEBACK_NEEDS_TARGET`), oldest first."""
    found = Unfinished()
    try:
        with engine.connect() as conn:
            if vendors:
                rows = conn.execute(
                    select(jobs.c.id, jobs.c.vendor, jobs.c.state)
                    .where(
                        jobs.c.vendor.in_(list(vendors)),
                        jobs.c.state.in_([s.value for s in JOB_NEEDS_VENDOR]),
                    )
                    .order_by(jobs.c.id)
                )
                for row in rows:
                    found.jobs.setdefault(row.vendor, []).append(WorkItem(row.id, row.state))
            if targets:
                rows = conn.execute(
                    select(deliveries.c.id, deliveries.c.target, deliveries.c.state)
                    .where(
                        deliveries.c.target.in_(list(targets)),
                        deliveries.c.state.in_([s.value for s in WRITEBACK_NEEDS_TARGET]),
                    )
                    .order_by(deliveries.c.id)
                )
                for row in rows:
                    found.writebacks.setdefault(row.target, []).append(WorkItem(row.id, row.state))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the unfinished jobs and write-backs: {exc}") from exc
    return found


def listed(items: list[WorkItem], limit: int = _LISTED) -> str:
    """``14 (pending), 15 (failed)``; past ``limit`` items, ``and N more``."""
    shown = ", ".join(f"{i.id} ({i.state})" for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
