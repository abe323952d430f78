"""A study's history, and the steps that complete it or hold it.

The completion stage (:mod:`broker.runtime.completion`) decides; this store
does each step as one conditional update, so two services on one store never
close a study twice, and a study that received an instance meanwhile (its due
time moved on) is not held or closed on stale facts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, and_, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.completion import Completion
from broker.model.domain import StudyState
from broker.model.errors import StoreError
from broker.store.engine import writing
from broker.store.tables import studies, study_events

_COLLECTING = (StudyState.RECEIVING.value, StudyState.UPDATED.value)


class StudyEventKind(enum.StrEnum):
    """What a row of a study's history records."""

    COMPLETE = "complete"
    """The study is complete; ``reason`` says what decided it (:class:`Completion`)."""
    WAITING = "waiting"
    """Quiet, but held for expected series (named) until a deadline."""
    MPPS = "mpps"
    """A performed procedure step was created or changed (its status)."""
    IAN = "ian"
    """An instance availability notification came."""
    ROUTE_SKIPPED = "route_skipped"
    """A route did not send the study: its expected series were missing (``skip``)."""


@dataclass(frozen=True, slots=True)
class StudyEvent:
    """One row of a study's history."""

    id: int
    study_uid: str
    at: datetime
    kind: str
    reason: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class Collecting:
    """A study still arriving whose due time has come."""

    study_uid: str
    first_received_at: datetime
    due_at: datetime


def add_event(
    conn: Connection,
    study_uid: str,
    kind: StudyEventKind,
    at: datetime,
    *,
    reason: str | None = None,
    detail: str | None = None,
) -> None:
    """One row of the study's history, in the caller's transaction."""
    conn.execute(
        insert(study_events).values(
            study_uid=study_uid, at=at, kind=kind.value, reason=reason, detail=detail
        )
    )


class StudyEvents:
    """The study history store, and the completion steps."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def due(self, now: datetime) -> list[Collecting]:
        """Studies still arriving whose due time (quiet time, or a hold) has come."""
        stmt = (
            select(studies.c.study_uid, studies.c.first_received_at, studies.c.due_at)
            .where(studies.c.state.in_(_COLLECTING), studies.c.due_at <= now)
            .order_by(studies.c.due_at)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [Collecting(r.study_uid, r.first_received_at, r.due_at) for r in rows]

    def close(
        self,
        study_uid: str,
        reason: Completion,
        detail: str,
        now: datetime,
        *,
        due_by: datetime | None = None,
    ) -> bool:
        """Mark the study complete (stable), with why in its history; False when it is not
        collecting (another service closed it), or (``due_by``) an instance came since."""
        where = [studies.c.study_uid == study_uid, studies.c.state.in_(_COLLECTING)]
        if due_by is not None:
            where.append(studies.c.due_at <= due_by)
        stmt = (
            update(studies)
            .where(and_(*where))
            .values(
                state=StudyState.STABLE.value,
                stable_at=now,
                revision=studies.c.revision + 1,
                route_due_at=None,
            )
            .returning(studies.c.study_uid)
        )
        try:
            with writing(self.engine) as conn:
                if conn.execute(stmt).first() is None:
                    return False
                kind = StudyEventKind.COMPLETE
                add_event(conn, study_uid, kind, now, reason=reason.value, detail=detail)
                return True
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot close study {study_uid}: {exc}") from exc

    def hold(self, study_uid: str, until: datetime, detail: str | None, now: datetime) -> bool:
        """Keep a quiet study collecting until ``until`` (it waits for expected series),
        unless an instance came since; the reason goes in its history when given."""
        stmt = (
            update(studies)
            .where(
                studies.c.study_uid == study_uid,
                studies.c.state.in_(_COLLECTING),
                studies.c.due_at <= now,
            )
            .values(due_at=until)
            .returning(studies.c.study_uid)
        )
        try:
            with writing(self.engine) as conn:
                if conn.execute(stmt).first() is None:
                    return False
                if detail:
                    add_event(conn, study_uid, StudyEventKind.WAITING, now, detail=detail)
                return True
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot hold study {study_uid}: {exc}") from exc

    def due_by(self, study_uid: str, at: datetime) -> None:
        """Judge the collecting study again at ``at`` at the latest (a route's deadline)."""
        stmt = (
            update(studies)
            .where(
                studies.c.study_uid == study_uid,
                studies.c.state.in_(_COLLECTING),
                studies.c.due_at > at,
            )
            .values(due_at=at)
        )
        try:
            with writing(self.engine) as conn:
                conn.execute(stmt)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot set the due time of study {study_uid}: {exc}") from exc

    def record(
        self,
        study_uid: str,
        kind: StudyEventKind,
        at: datetime,
        *,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        """One row of the study's history in its own transaction."""
        try:
            with writing(self.engine) as conn:
                add_event(conn, study_uid, kind, at, reason=reason, detail=detail)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the study's history: {exc}") from exc

    def history(self, study_uid: str) -> list[StudyEvent]:
        """The study's history, oldest first."""
        stmt = (
            select(study_events)
            .where(study_events.c.study_uid == study_uid)
            .order_by(study_events.c.id)
        )
        with self.engine.connect() as conn:
            return [
                StudyEvent(r.id, r.study_uid, r.at, r.kind, r.reason, r.detail)
                for r in conn.execute(stmt)
            ]
