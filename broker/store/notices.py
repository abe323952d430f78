"""MPPS and IAN notices in the store: kept before the DIMSE success status, read back as
evidence that a study is complete (:func:`broker.model.completion.notice_evidence`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from broker.model.completion import STEP_EVENT, NoticeKind, ProcedureNotice
from broker.model.errors import DuplicateError, NotFoundError, StoreError
from broker.store.engine import writing
from broker.store.study_events import StudyEventKind, add_event
from broker.store.tables import deliveries, instances, orders, procedure_notices


@dataclass(frozen=True, slots=True)
class NoticeIn:
    """A notice as received: what the adapter read from the DIMSE-N request."""

    kind: NoticeKind
    sop_instance_uid: str
    study_uid: str | None
    accession_number: str | None
    status: str
    referenced: tuple[str, ...]
    dataset_json: str
    calling_ae: str
    called_ae: str
    peer_address: str


def _notice(r: Row[Any]) -> ProcedureNotice:
    return ProcedureNotice(
        id=r.id,
        kind=NoticeKind(r.kind),
        sop_instance_uid=r.sop_instance_uid,
        study_uid=r.study_uid,
        accession_number=r.accession_number,
        order_id=r.order_id,
        status=r.status,
        referenced=tuple(json.loads(r.referenced)),
        calling_ae=r.calling_ae,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


class NoticeStore:
    """Procedure notices (MPPS, IAN): each one short transaction, durable at commit."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, notice: NoticeIn, now: datetime) -> ProcedureNotice:
        """Keep a new notice, linked to the order of its accession number (if radbridge holds
        one), with a row in its study's history; :class:`DuplicateError` when one with the
        same SOP Instance UID exists (DIMSE 0x0111, duplicate SOP instance)."""
        try:
            with writing(self.engine) as conn:
                order_id = None
                if notice.accession_number:
                    order_id = conn.execute(
                        select(orders.c.id)
                        .where(orders.c.accession_number == notice.accession_number)
                        .order_by(orders.c.id.desc())
                        .limit(1)
                    ).scalar_one_or_none()
                new_id = conn.execute(
                    insert(procedure_notices)
                    .values(
                        kind=notice.kind.value,
                        sop_instance_uid=notice.sop_instance_uid,
                        study_uid=notice.study_uid,
                        accession_number=notice.accession_number,
                        order_id=order_id,
                        status=notice.status,
                        referenced=json.dumps(list(notice.referenced)),
                        dataset_json=notice.dataset_json,
                        calling_ae=notice.calling_ae,
                        called_ae=notice.called_ae,
                        peer_address=notice.peer_address,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(procedure_notices.c.id)
                ).scalar_one()
                self._history(conn, notice, "created", now)
                row = conn.execute(
                    select(procedure_notices).where(procedure_notices.c.id == new_id)
                ).one()
        except IntegrityError as exc:
            raise DuplicateError(
                f"a {notice.kind.value.upper()} with SOP Instance UID "
                f"{notice.sop_instance_uid} exists already"
            ) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot keep the {notice.kind.value}: {exc}") from exc
        return _notice(row)

    def update(self, notice: NoticeIn, now: datetime) -> ProcedureNotice:
        """Replace a stored MPPS's status, references and attributes (an N-SET, merged by the
        adapter); :class:`NotFoundError` when there is none (DIMSE 0x0112)."""
        values = {
            "status": notice.status,
            "referenced": json.dumps(list(notice.referenced)),
            "dataset_json": notice.dataset_json,
            "updated_at": now,
        }
        if notice.study_uid:
            values["study_uid"] = notice.study_uid
        try:
            with writing(self.engine) as conn:
                row = conn.execute(
                    update(procedure_notices)
                    .where(
                        procedure_notices.c.kind == notice.kind.value,
                        procedure_notices.c.sop_instance_uid == notice.sop_instance_uid,
                    )
                    .values(values)
                    .returning(*procedure_notices.c)
                ).first()
                if row is None:
                    raise NotFoundError(
                        f"no {notice.kind.value.upper()} with SOP Instance UID "
                        f"{notice.sop_instance_uid}"
                    )
                self._history(conn, notice, "set", now)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot update the {notice.kind.value}: {exc}") from exc
        return _notice(row)

    @staticmethod
    def _history(conn: Any, notice: NoticeIn, verb: str, now: datetime) -> None:
        if not notice.study_uid:
            return
        kind = StudyEventKind.MPPS if notice.kind is NoticeKind.MPPS else StudyEventKind.IAN
        add_event(
            conn,
            notice.study_uid,
            kind,
            now,
            reason=notice.status,
            detail=(
                f"{verb} by {notice.calling_ae}: {notice.status}, "
                f"{len(notice.referenced)} referenced instances"
            ),
        )

    def get(self, kind: NoticeKind, sop_instance_uid: str) -> tuple[ProcedureNotice, str]:
        """A stored notice and its attributes (DICOM JSON); :class:`NotFoundError` if none."""
        stmt = select(procedure_notices).where(
            procedure_notices.c.kind == kind.value,
            procedure_notices.c.sop_instance_uid == sop_instance_uid,
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise NotFoundError(f"no {kind.value.upper()} with SOP Instance UID {sop_instance_uid}")
        return _notice(row), str(row.dataset_json)

    def for_study(self, study_uid: str) -> list[ProcedureNotice]:
        """Every notice naming the study, oldest first."""
        stmt = (
            select(procedure_notices)
            .where(procedure_notices.c.study_uid == study_uid)
            .order_by(procedure_notices.c.id)
        )
        with self.engine.connect() as conn:
            return [_notice(r) for r in conn.execute(stmt)]

    def present(self, study_uid: str, wanted: Sequence[str]) -> frozenset[str]:
        """Which of ``wanted`` SOP Instance UIDs the study's index holds."""
        if not wanted:
            return frozenset()
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = list(wanted[start : start + 500])
                found.update(
                    conn.execute(
                        select(instances.c.sop_instance_uid).where(
                            instances.c.study_uid == study_uid,
                            instances.c.sop_instance_uid.in_(chunk),
                        )
                    ).scalars()
                )
        return frozenset(found)

    def forwarded(self, study_uid: str) -> frozenset[str]:
        """The procedure-step events of the study already made deliveries (to the RIS)."""
        stmt = select(deliveries.c.event).where(
            deliveries.c.study_uid == study_uid, deliveries.c.event.like(f"{STEP_EVENT}:%")
        )
        with self.engine.connect() as conn:
            return frozenset(conn.execute(stmt).scalars())

    def order_of(self, notice_id: int) -> int | None:
        """The order a notice was linked to when it came (by its accession number)."""
        stmt = select(procedure_notices.c.order_id).where(procedure_notices.c.id == notice_id)
        with self.engine.connect() as conn:
            found: int | None = conn.execute(stmt).scalar_one_or_none()
        return found
