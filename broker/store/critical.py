"""Critical-result cases in the store: open, escalate, flag overdue, acknowledge; the ledger.

Every change is one write transaction that checks the case is still where it
was read (open, at the same level), writes the ledger row (``critical_steps``),
makes the notifications' deliveries (the job engine sends them, with retries)
and appends the audit row (``critical.open``, ``critical.escalate``,
``critical.ack``): several timers on one store never escalate a case twice, and
the ledger, the deliveries and the audit trail never disagree. The escalation
times are columns of the case, so a restart resumes where the timer stopped.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.critical import (
    AckVia,
    CaseState,
    CaseStateError,
    CaseStep,
    CriticalCase,
    FindingSummary,
    StepKind,
)
from broker.model.errors import NotFoundError, StoreError
from broker.model.timeline import Stamp, StampKind
from broker.model.writeback import Delivery
from broker.store.audit import SYSTEM, record_in
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.engine import writing
from broker.store.studies import _insert, of_sites
from broker.store.tables import critical_cases, critical_steps
from broker.store.work import utc


class Action:
    """The audit actions of critical-result cases."""

    OPEN = "critical.open"
    ESCALATE = "critical.escalate"
    ACK = "critical.ack"


@dataclass(frozen=True, slots=True)
class NewCase:
    """A case to open for an urgent result."""

    result_id: int
    job_id: int | None
    study_uid: str
    accession_number: str | None
    vendor: str | None
    route: str | None
    findings: tuple[FindingSummary, ...]
    exam_end_at: datetime
    deadline_at: datetime
    level: int
    next_escalation_at: datetime | None
    contact_list: str | None = None
    """The escalation list the case uses (None: the default)."""


@dataclass(frozen=True, slots=True)
class NewNotice:
    """A notification to queue: a contact on a channel, and its delivery."""

    contact: str
    channel: str
    address: str
    level: int
    delivery: NewDelivery


@dataclass(frozen=True, slots=True)
class Linked:
    """A notification made elsewhere (the webhook, the RIS's order status) to list in the
    ledger: the delivery and how the ledger names the receiver."""

    delivery: Delivery
    contact: str
    channel: str
    detail: Mapping[str, Any] = field(default_factory=dict)


def _findings(text: str) -> tuple[FindingSummary, ...]:
    return tuple(
        FindingSummary(f["code"], f["meaning"], f.get("present"), f.get("score"))
        for f in json.loads(text or "[]")
    )


def _case(r: Row[Any]) -> CriticalCase:
    return CriticalCase(
        id=r.id,
        result_id=r.result_id,
        job_id=r.job_id,
        study_uid=r.study_uid,
        accession_number=r.accession_number,
        vendor=r.vendor,
        route=r.route,
        findings=_findings(r.findings_json),
        state=CaseState(r.state),
        opened_at=r.opened_at,
        exam_end_at=r.exam_end_at,
        deadline_at=r.deadline_at,
        level=r.level,
        next_escalation_at=r.next_escalation_at,
        overdue_at=r.overdue_at,
        contact_list=r.contact_list,
        acknowledged_at=r.acknowledged_at,
        acknowledged_by=r.acknowledged_by,
        acknowledged_via=AckVia(r.acknowledged_via) if r.acknowledged_via else None,
        acknowledged_actor=r.acknowledged_actor,
        note=r.note,
    )


def _step(r: Row[Any]) -> CaseStep:
    return CaseStep(
        id=r.id,
        case_id=r.case_id,
        at=r.at,
        kind=StepKind(r.kind),
        level=r.level,
        contact=r.contact,
        channel=r.channel,
        address=r.address,
        delivery_id=r.delivery_id,
        actor=r.actor,
        detail=json.loads(r.detail or "{}"),
    )


def _record(
    conn: Connection,
    case_id: int,
    kind: StepKind,
    now: datetime,
    *,
    level: int | None = None,
    contact: str | None = None,
    channel: str | None = None,
    address: str | None = None,
    delivery_id: int | None = None,
    actor: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(
        insert(critical_steps).values(
            case_id=case_id,
            at=now,
            kind=kind.value,
            level=level,
            contact=contact[:160] if contact else contact,
            channel=channel,
            address=address[:256] if address else address,
            delivery_id=delivery_id,
            actor=actor,
            detail=json.dumps(dict(detail or {}), default=str, sort_keys=True),
        )
    )


class CriticalStore:
    """Critical-result cases and their ledger. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.deliveries = DeliveryStore(engine)

    # ---------------------------------------------------------------- changes

    def _notify(
        self, conn: Connection, case_id: int, notices: Sequence[NewNotice], now: datetime
    ) -> list[Delivery]:
        made = []
        for n in notices:
            d = self.deliveries._create(conn, n.delivery, now)
            made.append(d)
            _record(
                conn,
                case_id,
                StepKind.NOTIFIED,
                now,
                level=n.level,
                contact=n.contact,
                channel=n.channel,
                address=n.address,
                delivery_id=d.id,
                detail={"target": d.target},
            )
        return made

    def open(
        self,
        new: NewCase,
        notices: Sequence[NewNotice] = (),
        linked: Sequence[Linked] = (),
        *,
        now: datetime | None = None,
    ) -> tuple[CriticalCase, list[Delivery], bool]:
        """Open the result's case, queue its first notifications and list ``linked`` ones.

        Idempotent: a result that already has its case gets it back, with no new
        notification (``False``: not opened now).
        """
        now = utc(now)
        t = critical_cases
        values = {
            "result_id": new.result_id,
            "job_id": new.job_id,
            "study_uid": new.study_uid,
            "accession_number": new.accession_number,
            "vendor": new.vendor,
            "route": new.route,
            "findings_json": json.dumps(
                [
                    {"code": f.code, "meaning": f.meaning, "present": f.present, "score": f.score}
                    for f in new.findings
                ]
            ),
            "state": CaseState.OPEN.value,
            "opened_at": now,
            "exam_end_at": new.exam_end_at,
            "deadline_at": new.deadline_at,
            "level": new.level,
            "next_escalation_at": new.next_escalation_at,
            "contact_list": new.contact_list,
        }
        try:
            with writing(self.engine) as conn:
                stmt = (
                    _insert(self.engine, t)
                    .values(values)
                    .on_conflict_do_nothing(index_elements=[t.c.result_id])
                )
                case_id = conn.execute(stmt.returning(t.c.id)).scalar_one_or_none()
                if case_id is None:
                    row = conn.execute(select(t).where(t.c.result_id == new.result_id)).one()
                    return _case(row), [], False
                detail = {
                    "result_id": new.result_id,
                    "job_id": new.job_id,
                    "study_uid": new.study_uid,
                    "findings": [f.code for f in new.findings],
                    "deadline_at": new.deadline_at.isoformat(),
                }
                if new.contact_list is not None:
                    detail["contact_list"] = new.contact_list
                _record(conn, case_id, StepKind.OPENED, now, actor=SYSTEM, detail=detail)
                record_in(conn, SYSTEM, Action.OPEN, f"critical:{case_id}", detail=detail, now=now)
                made = self._notify(conn, case_id, notices, now)
                for link in linked:
                    _record(
                        conn,
                        case_id,
                        StepKind.NOTIFIED,
                        now,
                        contact=link.contact,
                        channel=link.channel,
                        delivery_id=link.delivery.id,
                        detail={"target": link.delivery.target, **link.detail},
                    )
                row = conn.execute(select(t).where(t.c.id == case_id)).one()
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open a critical case for result {new.result_id}: {exc}"
            ) from exc
        return _case(row), made, True

    def escalate(
        self,
        case: CriticalCase,
        level: int,
        notices: Sequence[NewNotice],
        next_at: datetime | None,
        *,
        now: datetime | None = None,
    ) -> tuple[CriticalCase, list[Delivery]] | None:
        """Move an open case from ``case.level`` to ``level`` and queue its notifications; with
        no notices the list is exhausted (recorded once). None: the case moved meanwhile
        (acknowledged, or another timer escalated it)."""
        now = utc(now)
        t = critical_cases
        exhausted = not notices
        try:
            with writing(self.engine) as conn:
                moved = conn.execute(
                    update(t)
                    .where(
                        t.c.id == case.id,
                        t.c.state == CaseState.OPEN.value,
                        t.c.level == case.level,
                        t.c.next_escalation_at.is_not(None),
                    )
                    .values(level=case.level if exhausted else level, next_escalation_at=next_at)
                ).rowcount
                if not moved:
                    return None
                if exhausted:
                    _record(
                        conn,
                        case.id,
                        StepKind.EXHAUSTED,
                        now,
                        level=case.level,
                        actor=SYSTEM,
                        detail={"contacts": case.level + 1},
                    )
                    made: list[Delivery] = []
                else:
                    detail = {"from_level": case.level, "to_level": level}
                    _record(
                        conn,
                        case.id,
                        StepKind.ESCALATED,
                        now,
                        level=level,
                        contact=notices[0].contact,
                        actor=SYSTEM,
                        detail=detail,
                    )
                    record_in(
                        conn,
                        SYSTEM,
                        Action.ESCALATE,
                        f"critical:{case.id}",
                        detail={**detail, "contact": notices[0].contact},
                        now=now,
                    )
                    made = self._notify(conn, case.id, notices, now)
                row = conn.execute(select(t).where(t.c.id == case.id)).one()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot escalate critical case {case.id}: {exc}") from exc
        return _case(row), made

    def flag_overdue(self, *, now: datetime | None = None, limit: int = 100) -> list[CriticalCase]:
        """Open cases past their deadline not flagged yet: flagged once each, in the ledger."""
        now = utc(now)
        t = critical_cases
        flagged = []
        try:
            with writing(self.engine) as conn:
                rows = conn.execute(
                    select(t)
                    .where(
                        t.c.state == CaseState.OPEN.value,
                        t.c.overdue_at.is_(None),
                        t.c.deadline_at <= now,
                    )
                    .order_by(t.c.id)
                    .limit(limit)
                ).all()
                for r in rows:
                    marked = conn.execute(
                        update(t)
                        .where(t.c.id == r.id, t.c.overdue_at.is_(None))
                        .values(overdue_at=now)
                    ).rowcount
                    if marked:
                        _record(
                            conn,
                            r.id,
                            StepKind.OVERDUE,
                            now,
                            level=r.level,
                            actor=SYSTEM,
                            detail={"deadline_at": r.deadline_at.isoformat()},
                        )
                        flagged.append(_case(r))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot flag overdue critical cases: {exc}") from exc
        return flagged

    def acknowledge(
        self,
        case_id: int,
        *,
        by: str,
        via: AckVia,
        actor: str,
        peer: str = "",
        note: str | None = None,
        now: datetime | None = None,
    ) -> CriticalCase:
        """A named person acknowledges the case: it closes, escalation stops, the ledger and
        the audit trail (``critical.ack``) say who, how and when, in one transaction.

        :class:`NotFoundError` for no such case, :class:`CaseStateError` when it was
        acknowledged already (naming by whom).
        """
        now = utc(now)
        by = by.strip()
        if not by:
            raise ValueError("the name of the person who acknowledges is required")
        t = critical_cases
        try:
            with writing(self.engine) as conn:
                row = conn.execute(select(t).where(t.c.id == case_id)).one_or_none()
                if row is None:
                    raise NotFoundError(f"no critical case with id {case_id}")
                if row.state != CaseState.OPEN.value:
                    raise CaseStateError(
                        f"critical case {case_id} was acknowledged already, by "
                        f"{row.acknowledged_by} at {row.acknowledged_at:%Y-%m-%d %H:%M:%S} UTC"
                    )
                moved = conn.execute(
                    update(t)
                    .where(t.c.id == case_id, t.c.state == CaseState.OPEN.value)
                    .values(
                        state=CaseState.ACKNOWLEDGED.value,
                        acknowledged_at=now,
                        acknowledged_by=by[:160],
                        acknowledged_via=via.value,
                        acknowledged_actor=actor[:160],
                        note=note,
                        next_escalation_at=None,
                    )
                ).rowcount
                if not moved:
                    raise CaseStateError(f"critical case {case_id} was acknowledged meanwhile")
                late = now > row.deadline_at
                detail = {
                    "by": by,
                    "via": via.value,
                    "study_uid": row.study_uid,
                    "minutes_from_exam_end": round((now - row.exam_end_at).total_seconds() / 60, 1),
                    "within_deadline": not late,
                }
                if note:
                    detail["note"] = note
                _record(
                    conn,
                    case_id,
                    StepKind.ACKNOWLEDGED,
                    now,
                    level=row.level,
                    contact=by,
                    channel=via.value,
                    actor=actor,
                    detail=detail,
                )
                record_in(
                    conn,
                    actor,
                    Action.ACK,
                    f"critical:{case_id}",
                    detail=detail,
                    peer=peer,
                    now=now,
                )
                row = conn.execute(select(t).where(t.c.id == case_id)).one()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot acknowledge critical case {case_id}: {exc}") from exc
        return _case(row)

    def delivered(self, delivery: Delivery, kind: StepKind, *, now: datetime | None = None) -> None:
        """A notification's outcome (``sent`` or ``failed``) in the ledger of its case."""
        now = utc(now)
        s = critical_steps
        try:
            with writing(self.engine) as conn:
                notified = conn.execute(
                    select(s)
                    .where(s.c.delivery_id == delivery.id, s.c.kind == StepKind.NOTIFIED.value)
                    .order_by(s.c.id)
                    .limit(1)
                ).one_or_none()
                if notified is None:
                    return
                _record(
                    conn,
                    notified.case_id,
                    kind,
                    now,
                    level=notified.level,
                    contact=notified.contact,
                    channel=notified.channel,
                    address=notified.address,
                    delivery_id=delivery.id,
                    detail={
                        "target": delivery.target,
                        "attempts": delivery.attempts,
                        **({"outcome": delivery.detail} if delivery.detail else {}),
                        **({"error": delivery.last_error} if kind is StepKind.FAILED else {}),
                    },
                )
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot record delivery {delivery.id} of a critical case: {exc}"
            ) from exc

    # ---------------------------------------------------------------- reads

    def get(self, case_id: int) -> CriticalCase:
        t = critical_cases
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id == case_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"no critical case with id {case_id}")
        return _case(row)

    def steps(self, case_id: int) -> builtins.list[CaseStep]:
        """The case's ledger, oldest first."""
        s = critical_steps
        with self.engine.connect() as conn:
            rows = conn.execute(select(s).where(s.c.case_id == case_id).order_by(s.c.id)).all()
        return [_step(r) for r in rows]

    def notice_step(self, delivery_id: int) -> CaseStep | None:
        """The ``notified`` row of a notification's delivery (its case, contact and channel)."""
        s = critical_steps
        with self.engine.connect() as conn:
            row = conn.execute(
                select(s)
                .where(s.c.delivery_id == delivery_id, s.c.kind == StepKind.NOTIFIED.value)
                .order_by(s.c.id)
                .limit(1)
            ).one_or_none()
        return None if row is None else _step(row)

    def due(self, now: datetime, limit: int = 100) -> builtins.list[CriticalCase]:
        """Open cases whose contact has waited long enough (to escalate), oldest due first."""
        t = critical_cases
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t)
                .where(
                    t.c.state == CaseState.OPEN.value,
                    t.c.next_escalation_at.is_not(None),
                    t.c.next_escalation_at <= utc(now),
                )
                .order_by(t.c.next_escalation_at, t.c.id)
                .limit(limit)
            ).all()
        return [_case(r) for r in rows]

    def next_wakeup(self) -> datetime | None:
        """The next escalation or deadline of an open case (when the timer has work here)."""
        t = critical_cases
        with self.engine.connect() as conn:
            escalation = conn.execute(
                select(func.min(t.c.next_escalation_at)).where(t.c.state == CaseState.OPEN.value)
            ).scalar_one_or_none()
            deadline = conn.execute(
                select(func.min(t.c.deadline_at)).where(
                    t.c.state == CaseState.OPEN.value, t.c.overdue_at.is_(None)
                )
            ).scalar_one_or_none()
        found = [utc(d) for d in (escalation, deadline) if d is not None]
        return min(found) if found else None

    def list(
        self,
        *,
        state: CaseState | None = None,
        overdue_at: datetime | None = None,
        study_uid: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
        sites: frozenset[str] | None = None,
    ) -> builtins.list[CriticalCase]:
        """Cases, newest first; ``overdue_at``: only those open past their deadline then;
        ``sites``: only those of these sites' studies."""
        t = critical_cases
        stmt = select(t).order_by(t.c.id.desc()).limit(limit)
        if sites is not None:
            stmt = stmt.where(t.c.study_uid.in_(of_sites(sites)))
        if state is not None:
            stmt = stmt.where(t.c.state == state.value)
        if overdue_at is not None:
            stmt = stmt.where(t.c.state == CaseState.OPEN.value, t.c.deadline_at <= utc(overdue_at))
        if study_uid is not None:
            stmt = stmt.where(t.c.study_uid == study_uid)
        if before_id is not None:
            stmt = stmt.where(t.c.id < before_id)
        with self.engine.connect() as conn:
            return [_case(r) for r in conn.execute(stmt).all()]

    def counts(self, now: datetime, sites: frozenset[str] | None = None) -> tuple[int, int]:
        """Open cases, and of them those past their deadline (only ``sites``' when given)."""
        t = critical_cases
        open_ = t.c.state == CaseState.OPEN.value
        if sites is not None:
            open_ = and_(open_, t.c.study_uid.in_(of_sites(sites)))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).where(open_)).scalar_one()
            late = conn.execute(
                select(func.count()).where(open_, t.c.deadline_at <= utc(now))
            ).scalar_one()
        return int(total), int(late)


def timeline_stamps(conn: Connection, study_uid: str) -> list[Stamp]:
    """The study's critical-result stamps for its time ledger: each case opened (with its
    deadline), escalated (to whom), overdue, and acknowledged (by whom, how)."""
    kinds = {
        StepKind.OPENED.value: StampKind.CRITICAL_OPENED,
        StepKind.ESCALATED.value: StampKind.CRITICAL_ESCALATED,
        StepKind.OVERDUE.value: StampKind.CRITICAL_OVERDUE,
        StepKind.ACKNOWLEDGED.value: StampKind.NOTIFICATION_ACKNOWLEDGED,
    }
    c, s = critical_cases, critical_steps
    rows = conn.execute(
        select(s.c.at, s.c.kind, s.c.contact, s.c.channel, c.c.id, c.c.job_id, c.c.deadline_at)
        .join(c, c.c.id == s.c.case_id)
        .where(c.c.study_uid == study_uid, s.c.kind.in_(list(kinds)))
        .order_by(s.c.id)
    ).all()
    out = []
    for r in rows:
        detail = f"critical case {r.id}"
        if r.kind == StepKind.OPENED.value:
            detail += f", deadline {r.deadline_at:%Y-%m-%d %H:%M:%S} UTC"
        out.append(Stamp(r.at, kinds[r.kind], r.contact, r.channel, detail, r.job_id))
    return out


__all__ = ["Action", "CriticalStore", "Linked", "NewCase", "NewNotice", "timeline_stamps"]
