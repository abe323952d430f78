"""Identity conflicts in the store: record them where they are found, list and resolve them.

The stores that refuse or flag data record the conflict inside their own transaction
(:func:`record_conflict`), so it is there whenever the sender gets its refusal. An open
conflict that comes again (every instance of a refused study, a resent message) counts
on the same row. An operator resolves one with a note (audited as
``conflict.resolve``); an ADT merge that makes an order and a study agree resolves
their flagged conflict itself.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.domain import Patient
from broker.model.errors import NotFoundError, StoreError
from broker.model.identity import (
    ConflictAction,
    ConflictKind,
    ConflictReason,
    ConflictReport,
    ConflictState,
    IdentityConflict,
)
from broker.store.audit import Action, record_in
from broker.store.engine import writing
from broker.store.tables import identity_conflicts as conflicts

#: The actor of a conflict radbridge resolves itself (an ADT merge made both sides agree).
SYSTEM = "radbridge"


class ConflictResolvedError(StoreError):
    """The conflict was resolved already."""


def _cut(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


def record_conflict(
    conn: Connection,
    report: ConflictReport,
    *,
    source: str,
    sender: str = "",
    peer: str = "",
    message_id: int | None = None,
    now: datetime | None = None,
) -> int:
    """Record ``report`` inside the caller's transaction; the conflict's id.

    The same open conflict (kind, study, order, subject and claimed patient) counts
    once more instead of making a new row.
    """
    now = now or datetime.now(UTC)
    c = conflicts.c
    same = (
        c.state == ConflictState.OPEN.value,
        c.kind == report.kind.value,
        c.study_uid.is_not_distinct_from(report.study_uid),
        c.order_id.is_not_distinct_from(report.order_id),
        c.subject == report.subject[:256],
        c.claimed_patient_id.is_not_distinct_from(_cut(report.claimed.patient_id, 64)),
        c.claimed_issuer.is_not_distinct_from(_cut(report.claimed.issuer, 256)),
    )
    found: int | None = conn.execute(
        select(c.id).where(*same).order_by(c.id.desc()).limit(1)
    ).scalar()
    if found is not None:
        values: dict[str, Any] = {
            "occurrences": c.occurrences + 1,
            "last_at": now,
            "detail": report.detail,
        }
        if message_id is not None:
            values["message_id"] = message_id
        conn.execute(update(conflicts).where(c.id == found).values(values))
        return found
    new_id: int = conn.execute(
        insert(conflicts)
        .values(
            kind=report.kind.value,
            action=report.action.value,
            reason=report.reason.value,
            state=ConflictState.OPEN.value,
            source=source[:16],
            sender=sender[:160],
            peer=peer[:64],
            subject=report.subject[:256],
            matched_on=report.matched_on[:32],
            study_uid=report.study_uid,
            order_id=report.order_id,
            held_patient_id=_cut(report.held.patient_id, 64),
            held_issuer=_cut(report.held.issuer, 256),
            claimed_patient_id=_cut(report.claimed.patient_id, 64),
            claimed_issuer=_cut(report.claimed.issuer, 256),
            detail=report.detail,
            message_id=message_id,
            occurrences=1,
            first_at=now,
            last_at=now,
        )
        .returning(c.id)
    ).scalar_one()
    return new_id


def settle_flagged(
    conn: Connection, study_uid: str, order_id: int, *, why: str, now: datetime
) -> int:
    """Resolve the open flagged conflict of this study and order (they agree now); how many."""
    c = conflicts.c
    resolved: int = conn.execute(
        update(conflicts)
        .where(
            c.state == ConflictState.OPEN.value,
            c.kind == ConflictKind.ORDER_STUDY.value,
            c.study_uid == study_uid,
            c.order_id == order_id,
        )
        .values(
            state=ConflictState.RESOLVED.value,
            resolved_at=now,
            resolved_by=SYSTEM,
            resolution=why,
        )
    ).rowcount
    return resolved


def _conflict(r: Row[Any]) -> IdentityConflict:
    return IdentityConflict(
        id=r.id,
        report=ConflictReport(
            kind=ConflictKind(r.kind),
            action=ConflictAction(r.action),
            reason=ConflictReason(r.reason),
            detail=r.detail,
            subject=r.subject,
            matched_on=r.matched_on,
            held=Patient(patient_id=r.held_patient_id, issuer=r.held_issuer),
            claimed=Patient(patient_id=r.claimed_patient_id, issuer=r.claimed_issuer),
            study_uid=r.study_uid,
            order_id=r.order_id,
        ),
        state=ConflictState(r.state),
        source=r.source,
        sender=r.sender,
        peer=r.peer,
        message_id=r.message_id,
        count=r.occurrences,
        first_at=r.first_at,
        last_at=r.last_at,
        resolved_at=r.resolved_at,
        resolved_by=r.resolved_by,
        resolution=r.resolution,
    )


class ConflictStore:
    """List, read and resolve identity conflicts."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, conflict_id: int) -> IdentityConflict:
        """One conflict; ``NotFoundError`` if there is none with this id."""
        with self.engine.connect() as conn:
            row = conn.execute(select(conflicts).where(conflicts.c.id == conflict_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"no identity conflict with id {conflict_id}")
        return _conflict(row)

    def resolve(
        self, conflict_id: int, *, actor: str, note: str, peer: str = ""
    ) -> IdentityConflict:
        """Mark an open conflict resolved with the operator's note, audited in the same
        transaction. It changes no order, study or result: the data is put right at its
        source (an ADT merge or update, a corrected resend)."""
        now = datetime.now(UTC)
        try:
            with writing(self.engine) as conn:
                row = conn.execute(
                    select(conflicts).where(conflicts.c.id == conflict_id)
                ).one_or_none()
                if row is None:
                    raise NotFoundError(f"no identity conflict with id {conflict_id}")
                if row.state != ConflictState.OPEN.value:
                    raise ConflictResolvedError(
                        f"identity conflict {conflict_id} was resolved at "
                        f"{row.resolved_at:%Y-%m-%d %H:%M:%S} by {row.resolved_by}; "
                        "only an open conflict can be resolved"
                    )
                conn.execute(
                    update(conflicts)
                    .where(conflicts.c.id == conflict_id)
                    .values(
                        state=ConflictState.RESOLVED.value,
                        resolved_at=now,
                        resolved_by=actor[:160],
                        resolution=note,
                    )
                )
                record_in(
                    conn,
                    actor,
                    Action.CONFLICT_RESOLVE,
                    f"conflict:{conflict_id}",
                    detail={"kind": row.kind, "action": row.action, "note": note},
                    peer=peer,
                    now=now,
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot resolve identity conflict {conflict_id}: {exc}") from exc
        return self.get(conflict_id)

    def list(
        self,
        *,
        state: ConflictState | None = ConflictState.OPEN,
        kind: ConflictKind | None = None,
        study_uid: str | None = None,
        order_id: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> builtins.list[IdentityConflict]:
        """Newest first, one page (ids below ``before_id``); open ones unless ``state`` says
        otherwise (None: all)."""
        c = conflicts.c
        stmt = select(conflicts).order_by(c.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(c.state == ConflictState(state).value)
        if kind is not None:
            stmt = stmt.where(c.kind == ConflictKind(kind).value)
        if study_uid is not None:
            stmt = stmt.where(c.study_uid == study_uid)
        if order_id is not None:
            stmt = stmt.where(c.order_id == order_id)
        if before_id is not None:
            stmt = stmt.where(c.id < before_id)
        with self.engine.connect() as conn:
            return [_conflict(r) for r in conn.execute(stmt).all()]
