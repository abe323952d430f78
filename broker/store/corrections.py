"""Corrections in the store: recorded with their deliveries in the transaction that learns them.

:func:`correct_in` works inside the caller's transaction, so a correction is as
durable as what caused it: the rejection note's C-STORE is answered, the ADT
message or the cancelling order is ACKed, only after the correction and its
deliveries are committed (and audited, ``result.correction``).

Which results: every result of the study with a ``result`` delivery that was not
given up (``dead``: nothing reached the target); for a rejection note, only the
results whose job sent a series the note rejects (a job that sent the whole study
counts). One correction delivery per result and target (the ``deliveries`` unique
key): what a target received is withdrawn or corrected once; a later correction of
the same result and target finds it made and adds nothing. A rejection note is
recorded even when nothing was written yet: a job made before it from what it rejects
gets its result kept but not written back (:meth:`CorrectionStore.rejected_before`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, and_, insert, select
from sqlalchemy.exc import SQLAlchemyError

from broker.model.correction import (
    Correction,
    CorrectionCause,
    RejectionNote,
    default_reason,
    made_from,
)
from broker.model.domain import Code
from broker.model.errors import NotFoundError, StoreError
from broker.model.jobs import Job, JobState
from broker.model.logging import get_logger
from broker.model.vendor import VENDOR_TARGET_PREFIX, VENDOR_TARGET_TYPE, vendor_target
from broker.model.writeback import Delivery, DeliveryKind, DeliveryState
from broker.store.audit import SYSTEM, Action, record_in
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.engine import writing
from broker.store.jobs import JobStore, cancel_unsent
from broker.store.tables import corrections, deliveries, job_tokens, jobs
from broker.store.work import utc

LOG = get_logger("radbridge.corrections")


def _correction(r: Row[Any]) -> Correction:
    return Correction(
        id=r.id,
        study_uid=r.study_uid,
        cause=CorrectionCause(r.cause),
        reason=Code(r.reason_scheme, r.reason_value, r.reason_meaning),
        source=r.source,
        created_at=r.created_at,
        detail=json.loads(r.detail),
    )


def _written(conn: Connection, study_uid: str, series: Sequence[str] | None) -> list[Row[Any]]:
    """The study's result deliveries not given up and not corrected yet (with their job's
    series), oldest first; with ``series``, only those whose job sent one of them."""
    corrected = deliveries.alias("corrected")
    already = (
        select(corrected.c.id)
        .where(
            corrected.c.result_id == deliveries.c.result_id,
            corrected.c.target == deliveries.c.target,
            corrected.c.kind == DeliveryKind.CORRECTION.value,
        )
        .exists()
    )
    rows = conn.execute(
        select(deliveries, jobs.c.series_uids.label("job_series"))
        .join(jobs, jobs.c.id == deliveries.c.job_id, isouter=True)
        .where(
            deliveries.c.study_uid == study_uid,
            deliveries.c.kind == DeliveryKind.RESULT.value,
            deliveries.c.state != DeliveryState.DEAD.value,
            deliveries.c.result_id.is_not(None),
            ~already,
        )
        .order_by(deliveries.c.id)
    ).all()
    if series is None:
        return list(rows)
    return [
        r
        for r in rows
        if made_from(tuple(json.loads(r.job_series)) if r.job_series else (), series)
    ]


#: A job in one of these states has sent its study to the vendor.
_AT_VENDOR = tuple(
    s.value
    for s in (
        JobState.SENT,
        JobState.AWAITING_RESULT,
        JobState.RESULT_RECEIVED,
        JobState.WRITING_BACK,
        JobState.DONE,
    )
)


def _untold() -> ColumnElement[bool]:
    """A job was sent by manifest (it holds a WADO-RS token: its vendor has an HTTP API
    that can be told of a cancellation), and its vendor was not told of one yet."""
    told = (
        select(deliveries.c.id)
        .where(
            deliveries.c.job_id == jobs.c.id,
            deliveries.c.target == VENDOR_TARGET_PREFIX + jobs.c.vendor,
            deliveries.c.kind == DeliveryKind.CORRECTION.value,
        )
        .exists()
    )
    token = select(job_tokens.c.id).where(job_tokens.c.job_id == jobs.c.id).exists()
    return and_(token, ~told)


def _pulled(conn: Connection, study_uid: str, series: Sequence[str] | None) -> list[Any]:
    """The study's jobs at a vendor that were sent by manifest and whose vendor was not
    told yet (:func:`_untold`); with ``series``, only those that sent one of them."""
    rows = conn.execute(
        select(jobs.c.id, jobs.c.vendor, jobs.c.max_attempts, jobs.c.series_uids)
        .where(jobs.c.study_uid == study_uid, jobs.c.state.in_(_AT_VENDOR), _untold())
        .order_by(jobs.c.id)
    ).all()
    if series is None:
        return list(rows)
    return [r for r in rows if made_from(tuple(json.loads(r.series_uids)), series)]


def _telling(job: Any, study_uid: str, event: str, correction_id: int | None) -> NewDelivery:
    """The correction delivery that tells ``job``'s vendor the job is cancelled."""
    return NewDelivery(
        study_uid=study_uid,
        target=vendor_target(job.vendor),
        target_type=VENDOR_TARGET_TYPE,
        kind=DeliveryKind.CORRECTION,
        max_attempts=job.max_attempts,
        job_id=job.id,
        event=event,
        correction_id=correction_id,
    )


#: The ``event`` (and the ``reason`` the vendor is told) of an operator's cancellation.
OPERATOR_CANCELLED = "cancelled"


def tell_vendor_in(conn: Connection, job_id: int, *, now: datetime) -> Delivery | None:
    """Inside the caller's transaction: a job an operator cancelled (the API, the console,
    the CLI) whose vendor was sent it by manifest gets the same delivery to ``vendor.NAME``
    as a correction's (reason ``cancelled``); None when there is no vendor to tell (never
    sent by manifest, or already told). Whatever the job's state before: a job sent again
    (pending, failed) or given up (dead) may be at the vendor all the same."""
    job = conn.execute(
        select(jobs.c.id, jobs.c.vendor, jobs.c.max_attempts, jobs.c.study_uid).where(
            jobs.c.id == job_id, _untold()
        )
    ).one_or_none()
    if job is None:
        return None
    made = DeliveryStore(conn.engine)._create(
        conn, _telling(job, job.study_uid, OPERATOR_CANCELLED, None), now
    )
    LOG.info("the vendor will be told the job is cancelled", job_id=job_id, vendor=job.vendor)
    return made


class OperatorJobStore(JobStore):
    """The jobs as operators act on them (the API, the console, the CLI): a job cancelled
    here whose vendor was sent it by manifest is told so in the same transaction, as a
    correction tells it (:func:`tell_vendor_in`)."""

    def entered(self, conn: Connection, row: Row[Any], state: JobState, now: datetime) -> None:
        super().entered(conn, row, state, now)
        if state is JobState.CANCELLED:
            tell_vendor_in(conn, row.id, now=now)


def correct_in(
    conn: Connection,
    study_uids: Sequence[str],
    cause: CorrectionCause,
    *,
    source: str,
    now: datetime,
    reason: Code | None = None,
    series: Sequence[str] | None = None,
    detail: Mapping[str, Any] | None = None,
    actor: str = SYSTEM,
    peer: str = "",
    keep_empty: bool = False,
) -> list[Delivery]:
    """Record a correction of each study that has results written (see the module), with a
    correction delivery per written result and target; the new deliveries. ``keep_empty``:
    recorded (and audited) even when nothing was written yet (a rejection note: results
    that come later for what it rejects are not written back). A job that sent the study
    to a vendor by manifest (the HTTP API) gets a correction delivery of its own to the
    target ``vendor.NAME``: the vendor is told the job is cancelled."""
    store = DeliveryStore(conn.engine)
    made: list[Delivery] = []
    why = reason or default_reason(cause)
    for study_uid in dict.fromkeys(study_uids):
        written = _written(conn, study_uid, series)
        pulled = _pulled(conn, study_uid, series)
        if not written and not pulled and not keep_empty:
            continue
        correction_id = conn.execute(
            insert(corrections)
            .values(
                study_uid=study_uid,
                cause=cause.value,
                reason_scheme=why.system,
                reason_value=why.value,
                reason_meaning=why.meaning[:64],
                source=source[:160],
                detail=json.dumps(dict(detail or {})),
                created_at=now,
            )
            .returning(corrections.c.id)
        ).scalar_one()
        # each written result's target, and the vendor of each job sent by manifest
        wanted = [
            NewDelivery(
                study_uid=study_uid,
                target=r.target,
                target_type=r.target_type,
                kind=DeliveryKind.CORRECTION,
                max_attempts=r.max_attempts,
                result_id=r.result_id,
                job_id=r.job_id,
                event=cause.value,
                correction_id=correction_id,
            )
            for r in written
        ] + [_telling(j, study_uid, cause.value, correction_id) for j in pulled]
        mine = [store._create(conn, d, now) for d in wanted]
        record_in(
            conn,
            actor,
            Action.RESULT_CORRECTION,
            f"study:{study_uid}",
            detail={
                "correction_id": correction_id,
                "cause": cause.value,
                "reason": f"{why.system}:{why.value}",
                "source": source,
                "deliveries": [d.id for d in mine],
                "results": sorted({d.result_id for d in mine if d.result_id is not None}),
                "targets": sorted({d.target for d in mine}),
                **(detail or {}),
            },
            peer=peer,
            now=now,
        )
        made += mine
    return made


class CorrectionStore:
    """Corrections: recorded (a rejection note), read (targets, API, CLI)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_rejection(
        self, note: RejectionNote, *, source: str, peer: str = "", now: datetime | None = None
    ) -> list[Delivery]:
        """A Rejection Note received: the jobs not sent yet that would send what it rejects
        are cancelled (audited ``job.cancel``), the results made from it corrected; the
        correction deliveries made (none: no written result was made from those instances)."""
        rejected = list(note.series)
        now = utc(now)
        reason = f"rejected: {note.reason.meaning}"
        try:
            with writing(self.engine) as conn:
                cancelled = cancel_unsent(
                    conn,
                    jobs.c.study_uid == note.study_uid,
                    reason=reason,
                    now=now,
                    keep=lambda row: made_from(tuple(json.loads(row.series_uids)), rejected),
                )
                for job_id in cancelled:
                    record_in(
                        conn,
                        source,
                        Action.JOB_CANCEL,
                        f"job:{job_id}",
                        detail={"reason": reason, "rejection_note": note.sop_instance_uid},
                        peer=peer,
                        now=now,
                    )
                return correct_in(
                    conn,
                    [note.study_uid],
                    CorrectionCause.REJECTED,
                    source=source,
                    now=now,
                    reason=note.reason,
                    series=rejected,
                    detail={
                        "rejection_note": note.sop_instance_uid,
                        "series": len(note.series),
                        "instances": note.instance_count,
                        "rejected": {k: list(v) for k, v in note.series.items()},
                    },
                    actor=source,
                    peer=peer,
                    keep_empty=True,
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the rejection note: {exc}") from exc

    def get(self, correction_id: int) -> Correction:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(corrections).where(corrections.c.id == correction_id)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"no correction {correction_id}")
        return _correction(row)

    def rejected_before(self, job: Job) -> Correction | None:
        """The rejection note, recorded after ``job`` was made, that rejects what the job
        sent (its result is made from rejected images); None when there is none."""
        for correction in self.for_study(job.study_uid):
            if correction.cause is not CorrectionCause.REJECTED:
                continue
            if correction.created_at < job.created_at:
                continue  # the job was made after the note, from what was left or resent
            rejected = list(correction.detail.get("rejected") or {})
            if made_from(job.series_uids, rejected):
                return correction
        return None

    def for_study(self, study_uid: str) -> list[Correction]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(corrections)
                .where(corrections.c.study_uid == study_uid)
                .order_by(corrections.c.id)
            ).all()
        return [_correction(r) for r in rows]
