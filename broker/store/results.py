"""Results in the store: the objects and findings vendors return, matched to their jobs.

A result collects what a vendor returns for one job: DICOM objects (C-STORE,
STOW-RS) and/or JSON findings. It is ``collecting`` until it is due
(``due_at``): at once when the vendor says it is complete or the number of
objects it announced is in, otherwise ``quiet_seconds`` after the last object
or findings. The due time is a column, so a restart continues the countdown.
:meth:`ResultStore.complete_due` completes due results and moves each job
``awaiting_result → result_received`` in the same transaction, with its history.

An object that matches no job is kept in an orphan result (``job_id`` NULL,
no due time): listed by :meth:`ResultStore.orphans`, never dropped.
A resent object (same SOP Instance UID) replaces the stored one and counts once.
An object or findings that name another patient than their study, or belong to
another study than their job's, are refused (:mod:`broker.store.result_identity`):
the identity conflict is recorded, :class:`IdentityConflictError` raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.domain import (
    AlgorithmInfo,
    Code,
    Finding,
    Findings,
    ImageReference,
    Measurement,
    Result,
    ResultObject,
    ResultOrigin,
    ResultState,
)
from broker.model.domain import Patient as _Patient
from broker.model.errors import NotFoundError, ResultError, StoreError
from broker.model.identity import ConflictReport, IdentityConflictError
from broker.model.jobs import JobState, check_transition
from broker.store.conflicts import record_conflict
from broker.store.engine import writing
from broker.store.jobs import _record
from broker.store.result_identity import findings_conflict, object_conflict
from broker.store.tables import jobs, result_objects, results, series

#: Longest error text kept on a result.
MAX_ERROR = 2000
#: Job states a completed result moves on from (``sent`` first goes to ``awaiting_result``).
_PATHS: Mapping[JobState, tuple[JobState, ...]] = {
    JobState.AWAITING_RESULT: (JobState.RESULT_RECEIVED,),
    JobState.SENT: (JobState.AWAITING_RESULT, JobState.RESULT_RECEIVED),
}
#: Job states whose results wait: the study is still being sent (a fast vendor answered early).
_NOT_YET = (JobState.PENDING.value, JobState.SENDING.value)
#: Job states in which a completed result is announced to the ``on_complete`` hooks.
NOTIFY_STATES: frozenset[JobState] = frozenset(
    {JobState.RESULT_RECEIVED, JobState.WRITING_BACK, JobState.DONE}
)


@dataclass(frozen=True, slots=True)
class ResultPolicy:
    """A vendor's result settings (``vendors.NAME.results``), copied onto each new result."""

    quiet_seconds: float = 30.0
    expected_objects: int | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording an object did.

    ``duplicate``: the SOP Instance UID was stored before; the new copy replaced
    it and counts once. ``previous_path``: the earlier copy's file, when it was
    elsewhere (remove it).
    """

    result_id: int
    job_id: int | None
    vendor: str | None
    duplicate: bool
    previous_path: str | None


@dataclass(frozen=True, slots=True)
class Completed:
    """A result that was completed, and the state its job is in afterwards (None: orphan)."""

    result: Result
    job_state: JobState | None

    @property
    def notify(self) -> bool:
        """Whether the ``on_complete`` hooks get it (its job went on to write-back)."""
        return self.job_state in NOTIFY_STATES


# ------------------------------------------------------------ findings as JSON


def findings_json(findings: Findings) -> str:
    """Findings as the JSON the store keeps (the dataclass fields, nested)."""
    return json.dumps(asdict(findings), separators=(",", ":"))


def _code(d: dict[str, Any] | None) -> Code | None:
    return None if d is None else Code(d["system"], d["value"], d["meaning"])


def findings_from_json(text: str) -> Findings:
    """The inverse of :func:`findings_json`."""
    d = json.loads(text)
    return Findings(
        study_uid=d["study_uid"],
        algorithm=AlgorithmInfo(**d["algorithm"]),
        findings=tuple(
            Finding(
                code=Code(**f["code"]),
                present=f["present"],
                text=f["text"],
                score=f["score"],
                urgent=f["urgent"],
                measurements=tuple(
                    Measurement(Code(**m["name"]), m["value"], m["unit"]) for m in f["measurements"]
                ),
                references=tuple(ImageReference(**r) for r in f["references"]),
                site=_code(f["site"]),
            )
            for f in d["findings"]
        ),
        complete=d["complete"],
        expected_objects=d["expected_objects"],
        summary=d["summary"],
    )


# ------------------------------------------------------------ rows -> domain


def _object(r: Row[Any]) -> ResultObject:
    return ResultObject(
        sop_instance_uid=r.sop_instance_uid,
        sop_class_uid=r.sop_class_uid,
        series_uid=r.series_uid,
        study_uid=r.study_uid,
        path=r.path,
        size=r.size,
        origin=ResultOrigin(r.origin),
    )


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


class ResultStore:
    """The results and their objects. Every method is one short transaction.

    ``policies`` are the vendors' result settings by vendor name; a result of a
    vendor without one (or an orphan) gets ``default``.
    """

    def __init__(
        self,
        engine: Engine,
        policies: Mapping[str, ResultPolicy] | None = None,
        default: ResultPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.policies = dict(policies or {})
        self.default = default or ResultPolicy()

    # ---------------------------------------------------------------- intake

    def record_object(
        self,
        obj: ResultObject,
        *,
        transfer_syntax_uid: str,
        vendors: Sequence[str],
        referenced_studies: Sequence[str] = (),
        referenced_series: Sequence[str] = (),
        calling_ae: str | None = None,
        peer_address: str | None = None,
        urgent: bool = False,
        patient: _Patient | None = None,
        now: datetime | None = None,
    ) -> Recorded:
        """Record one durably spooled result object and match it to its job.

        The job is the one of a vendor in ``vendors`` (the vendors the sender
        may be) for the object's study, else for a study it references
        (``referenced_studies``, or the studies of ``referenced_series``). No
        job: the object goes into an orphan result of its study and sender.
        An object that names another ``patient`` than that study, or is of another
        study radbridge holds than its job's, is refused: the conflict is recorded
        and :class:`IdentityConflictError` raised.
        """
        now = _now(now)
        refused: ConflictReport | None = None
        recorded: Recorded | None = None
        try:
            with writing(self.engine) as conn:
                old = conn.execute(
                    select(
                        result_objects.c.id, result_objects.c.result_id, result_objects.c.path
                    ).where(result_objects.c.sop_instance_uid == obj.sop_instance_uid)
                ).one_or_none()
                job = _job_of(
                    conn,
                    old,
                    obj,
                    vendors=vendors,
                    studies=referenced_studies,
                    series_uids=referenced_series,
                )
                refused = object_conflict(conn, obj, job, patient or _Patient())
                values = _object_values(obj, transfer_syntax_uid, calling_ae, peer_address)
                if refused is not None:
                    record_conflict(
                        conn,
                        refused,
                        source=ResultOrigin(obj.origin).value,
                        sender=calling_ae or ",".join(vendors),
                        peer=peer_address or "",
                        now=now,
                    )
                elif old is not None:
                    conn.execute(
                        update(result_objects)
                        .where(result_objects.c.id == old.id)
                        .values(
                            **values,
                            received_at=now,
                            receive_count=result_objects.c.receive_count + 1,
                        )
                    )
                    row = self._touch(conn, old.result_id, urgent=urgent, now=now)
                    recorded = Recorded(
                        result_id=old.result_id,
                        job_id=row.job_id,
                        vendor=row.vendor,
                        duplicate=True,
                        previous_path=old.path if old.path != obj.path else None,
                    )
                else:
                    if job is not None:
                        result_id = self._open(
                            conn, job_id=job.id, study_uid=job.study_uid, vendor=job.vendor, now=now
                        )
                    else:
                        vendor = vendors[0] if len(vendors) == 1 else None
                        result_id = self._open_orphan(conn, obj.study_uid, vendor, calling_ae, now)
                    conn.execute(
                        insert(result_objects).values(
                            result_id=result_id, **values, received_at=now, receive_count=1
                        )
                    )
                    row = self._touch(conn, result_id, urgent=urgent, now=now)
                    recorded = Recorded(
                        result_id=result_id,
                        job_id=row.job_id,
                        vendor=row.vendor,
                        duplicate=False,
                        previous_path=None,
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record result object: {exc}") from exc
        if refused is not None:
            raise IdentityConflictError(refused)
        assert recorded is not None
        return recorded

    def check_object(
        self,
        obj: ResultObject,
        *,
        vendors: Sequence[str],
        referenced_studies: Sequence[str] = (),
        referenced_series: Sequence[str] = (),
        calling_ae: str | None = None,
        peer_address: str | None = None,
        patient: _Patient | None = None,
    ) -> None:
        """What :meth:`record_object` refuses, refused before the object's file is placed
        (a resent object would otherwise replace the stored copy): recorded, raised."""
        now = _now(None)
        refused: ConflictReport | None = None
        try:
            with writing(self.engine) as conn:
                old = conn.execute(
                    select(result_objects.c.result_id).where(
                        result_objects.c.sop_instance_uid == obj.sop_instance_uid
                    )
                ).one_or_none()
                job = _job_of(
                    conn,
                    old,
                    obj,
                    vendors=vendors,
                    studies=referenced_studies,
                    series_uids=referenced_series,
                )
                refused = object_conflict(conn, obj, job, patient or _Patient())
                if refused is not None:
                    record_conflict(
                        conn,
                        refused,
                        source=ResultOrigin(obj.origin).value,
                        sender=calling_ae or ",".join(vendors),
                        peer=peer_address or "",
                        now=now,
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot check result object: {exc}") from exc
        if refused is not None:
            raise IdentityConflictError(refused)

    def record_findings(
        self, job_id: int, findings: Findings, *, now: datetime | None = None
    ) -> int:
        """Attach a vendor's JSON findings to the job's collecting result; its id.

        Later findings replace earlier ones of the same collecting result; once
        a result is complete, new findings open a new result for the job. Findings
        whose image references are series of another study radbridge holds are refused
        (recorded, :class:`IdentityConflictError`).
        """
        now = _now(now)
        refused: ConflictReport | None = None
        try:
            with writing(self.engine) as conn:
                job = conn.execute(select(jobs).where(jobs.c.id == job_id)).one_or_none()
                if job is None:
                    raise NotFoundError(f"no job with id {job_id}")
                if findings.study_uid != job.study_uid:
                    raise ResultError(
                        f"study_instance_uid: {findings.study_uid} is not the study of job "
                        f"{job_id} ({job.study_uid})"
                    )
                refused = findings_conflict(conn, job, findings)
                if refused is not None:
                    record_conflict(
                        conn, refused, source=ResultOrigin.HTTP.value, sender=job.vendor, now=now
                    )
                else:
                    result_id = self._open(
                        conn, job_id=job.id, study_uid=job.study_uid, vendor=job.vendor, now=now
                    )
                    values: dict[str, Any] = {
                        "findings_json": findings_json(findings),
                        "vendor_complete": findings.complete,
                    }
                    if findings.expected_objects is not None:
                        values["expected_objects"] = findings.expected_objects
                    conn.execute(update(results).where(results.c.id == result_id).values(values))
                    self._touch(conn, result_id, urgent=findings.urgent, now=now)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record findings of job {job_id}: {exc}") from exc
        if refused is not None:
            raise IdentityConflictError(refused)
        return result_id

    def record_sr_findings(self, result_id: int, findings: Findings) -> bool:
        """Keep the findings read from the vendor's SR as the result's findings (JSON, as
        :meth:`record_findings` does), unless it already has findings; whether they were kept.

        The vendor's own JSON findings win; reading the same SR again changes nothing.
        """
        try:
            with writing(self.engine) as conn:
                kept: int = conn.execute(
                    update(results)
                    .where(results.c.id == result_id, results.c.findings_json.is_(None))
                    .values(findings_json=findings_json(findings))
                ).rowcount
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the SR findings of result {result_id}: {exc}") from exc
        return kept > 0

    def record_generated(
        self, result_id: int, obj: ResultObject, *, transfer_syntax_uid: str
    ) -> None:
        """Record an object radbridge made for a result (its SR); idempotent on the SOP UID."""
        now = datetime.now(UTC)
        values = {
            **_object_values(obj, transfer_syntax_uid, None, None),
            "received_at": now,
        }
        try:
            with writing(self.engine) as conn:
                found = conn.execute(
                    update(result_objects)
                    .where(result_objects.c.sop_instance_uid == obj.sop_instance_uid)
                    .values(values)
                ).rowcount
                if not found:
                    conn.execute(
                        insert(result_objects).values(
                            result_id=result_id, receive_count=1, **values
                        )
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the SR of result {result_id}: {exc}") from exc

    def _open(
        self, conn: Connection, *, job_id: int, study_uid: str, vendor: str, now: datetime
    ) -> int:
        """The job's collecting result, or a new one with the vendor's policy."""
        found: int | None = conn.execute(
            select(results.c.id)
            .where(
                results.c.job_id == job_id,
                results.c.state == ResultState.COLLECTING.value,
            )
            .order_by(results.c.id.desc())
            .limit(1)
        ).scalar()
        if found is not None:
            return found
        return self._new(
            conn, job_id=job_id, study_uid=study_uid, vendor=vendor, calling_ae=None, now=now
        )

    def _open_orphan(
        self,
        conn: Connection,
        study_uid: str,
        vendor: str | None,
        calling_ae: str | None,
        now: datetime,
    ) -> int:
        found: int | None = conn.execute(
            select(results.c.id)
            .where(
                results.c.job_id.is_(None),
                results.c.study_uid == study_uid,
                results.c.calling_ae.is_(None)
                if calling_ae is None
                else results.c.calling_ae == calling_ae,
                results.c.state == ResultState.COLLECTING.value,
            )
            .limit(1)
        ).scalar()
        if found is not None:
            return found
        return self._new(
            conn, job_id=None, study_uid=study_uid, vendor=vendor, calling_ae=calling_ae, now=now
        )

    def _new(
        self,
        conn: Connection,
        *,
        job_id: int | None,
        study_uid: str,
        vendor: str | None,
        calling_ae: str | None,
        now: datetime,
    ) -> int:
        policy = self.policies.get(vendor or "", self.default)
        new_id: int = conn.execute(
            insert(results)
            .values(
                job_id=job_id,
                study_uid=study_uid,
                vendor=vendor,
                calling_ae=calling_ae,
                state=ResultState.COLLECTING.value,
                urgent=False,
                findings_json=None,
                expected_objects=policy.expected_objects,
                quiet_seconds=policy.quiet_seconds,
                vendor_complete=False,
                created_at=now,
                updated_at=now,
                due_at=None,
            )
            .returning(results.c.id)
        ).scalar_one()
        return new_id

    def _touch(self, conn: Connection, result_id: int, *, urgent: bool, now: datetime) -> Any:
        """After new content: mark urgency, and count the quiet period from now (or be due)."""
        row = conn.execute(select(results).where(results.c.id == result_id)).one()
        values: dict[str, Any] = {"updated_at": now}
        if urgent:
            values["urgent"] = True
        if row.state == ResultState.COLLECTING.value and row.job_id is not None:
            reason = _ready(row, _count(conn, result_id))
            values["due_at"] = now if reason else now + timedelta(seconds=row.quiet_seconds)
        conn.execute(update(results).where(results.c.id == result_id).values(values))
        return row

    # ---------------------------------------------------------------- completion

    def complete_due(
        self,
        now: datetime | None = None,
        prepare: Callable[[Result], str | None] | None = None,
        limit: int = 100,
    ) -> list[Completed]:
        """Complete every result that is due; each job moves on to ``result_received``.

        ``prepare`` runs first for each due result (the service makes the SR of
        JSON findings there); what it returns (an error text, or None) is kept
        on the result, which completes anyway.
        """
        now = _now(now)
        stmt = (
            select(results.c.id)
            .join(jobs, jobs.c.id == results.c.job_id)
            .where(
                results.c.state == ResultState.COLLECTING.value,
                results.c.due_at <= now,
                jobs.c.state.not_in(_NOT_YET),
            )
            .order_by(results.c.due_at, results.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            due = list(conn.execute(stmt).scalars())
        done = []
        for result_id in due:
            error = prepare(self.get(result_id)) if prepare is not None else None
            completed = self.complete(result_id, error=error, now=now)
            if completed is not None:
                done.append(completed)
        return done

    def complete(
        self, result_id: int, *, error: str | None = None, now: datetime | None = None
    ) -> Completed | None:
        """Complete one collecting result and move its job on; None if it was not collecting."""
        now = _now(now)
        try:
            with writing(self.engine) as conn:
                row = conn.execute(select(results).where(results.c.id == result_id)).one_or_none()
                if row is None:
                    raise NotFoundError(f"no result with id {result_id}")
                if row.state != ResultState.COLLECTING.value:
                    return None
                reason = _ready(row, _count(conn, result_id)) or "quiet"
                conn.execute(
                    update(results)
                    .where(results.c.id == result_id)
                    .values(
                        state=ResultState.COMPLETE.value,
                        complete_reason=reason,
                        completed_at=now,
                        due_at=None,
                        updated_at=now,
                        error=None if error is None else error[:MAX_ERROR],
                    )
                )
                job_state = None
                if row.job_id is not None:
                    job_state = _move_job(conn, row.job_id, now)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot complete result {result_id}: {exc}") from exc
        return Completed(result=self.get(result_id), job_state=job_state)

    def next_due(self) -> datetime | None:
        """When the next collecting result is due, if any."""
        stmt = (
            select(func.min(results.c.due_at))
            .join(jobs, jobs.c.id == results.c.job_id)
            .where(results.c.state == ResultState.COLLECTING.value, jobs.c.state.not_in(_NOT_YET))
        )
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(stmt).scalar_one_or_none()
        return value

    def awaiting_write_back(self) -> list[int]:
        """Complete results whose job is still ``result_received`` (announce them again
        after a restart: a hook may not have run before the process stopped)."""
        stmt = (
            select(results.c.id)
            .join(jobs, jobs.c.id == results.c.job_id)
            .where(
                results.c.state == ResultState.COMPLETE.value,
                jobs.c.state == JobState.RESULT_RECEIVED.value,
            )
            .order_by(results.c.id)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    # ---------------------------------------------------------------- reads
    # (``list`` comes last: defined earlier, its name would shadow the type in annotations)

    def get(self, result_id: int) -> Result:
        """One result with its objects (oldest first) and findings."""
        with self.engine.connect() as conn:
            row = conn.execute(select(results).where(results.c.id == result_id)).one_or_none()
            if row is None:
                raise NotFoundError(f"no result with id {result_id}")
            return _build(conn, [row])[0]

    def for_job(self, job_id: int) -> list[Result]:
        """A job's results, oldest first (a later one replaces an earlier one)."""
        return self.list(job_id=job_id)

    def orphans(self, limit: int = 1000) -> list[Result]:
        """Results that matched no job, newest first."""
        return self.list(orphans=True, limit=limit)

    def detail(self, result_id: int) -> dict[str, Any]:
        """What the operator sees besides the domain result: sender, reason, error, due time."""
        with self.engine.connect() as conn:
            row = conn.execute(select(results).where(results.c.id == result_id)).one_or_none()
            if row is None:
                raise NotFoundError(f"no result with id {result_id}")
            counts = dict(
                conn.execute(
                    select(result_objects.c.sop_instance_uid, result_objects.c.receive_count).where(
                        result_objects.c.result_id == result_id
                    )
                ).all()
            )
        return {
            "calling_ae": row.calling_ae,
            "quiet_seconds": row.quiet_seconds,
            "vendor_complete": row.vendor_complete,
            "complete_reason": row.complete_reason,
            "error": row.error,
            "due_at": row.due_at,
            "receive_counts": counts,
        }

    def list(
        self,
        *,
        study_uid: str | None = None,
        job_id: int | None = None,
        state: ResultState | None = None,
        orphans: bool | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[Result]:
        """Results, newest first (by job: oldest first), filtered."""
        order = results.c.id if job_id is not None else results.c.id.desc()
        stmt = select(results).order_by(order).limit(limit).offset(offset)
        if study_uid is not None:
            stmt = stmt.where(results.c.study_uid == study_uid)
        if job_id is not None:
            stmt = stmt.where(results.c.job_id == job_id)
        if state is not None:
            stmt = stmt.where(results.c.state == ResultState(state).value)
        if orphans is True:
            stmt = stmt.where(results.c.job_id.is_(None))
        elif orphans is False:
            stmt = stmt.where(results.c.job_id.is_not(None))
        with self.engine.connect() as conn:
            return _build(conn, conn.execute(stmt).all())


# ------------------------------------------------------------ helpers


def _object_values(
    obj: ResultObject, transfer_syntax_uid: str, calling_ae: str | None, peer: str | None
) -> dict[str, Any]:
    return {
        "sop_instance_uid": obj.sop_instance_uid,
        "sop_class_uid": obj.sop_class_uid,
        "series_uid": obj.series_uid,
        "study_uid": obj.study_uid,
        "transfer_syntax_uid": transfer_syntax_uid,
        "path": obj.path,
        "size": obj.size,
        "origin": ResultOrigin(obj.origin).value,
        "calling_ae": calling_ae,
        "peer_address": peer,
    }


def _job_of(
    conn: Connection,
    old: Any,
    obj: ResultObject,
    *,
    vendors: Sequence[str],
    studies: Iterable[str],
    series_uids: Sequence[str],
) -> Any:
    """The job an object goes with: its earlier copy's (``old``, a resend), else the match."""
    if old is None:
        return _match(conn, vendors, obj.study_uid, studies, series_uids)
    return conn.execute(
        select(jobs)
        .join(results, results.c.job_id == jobs.c.id)
        .where(results.c.id == old.result_id)
    ).one_or_none()


def _count(conn: Connection, result_id: int) -> int:
    """The objects the vendor sent for a result (radbridge's own SR does not count)."""
    n: int = conn.execute(
        select(func.count()).where(
            result_objects.c.result_id == result_id,
            result_objects.c.origin != ResultOrigin.GENERATED.value,
        )
    ).scalar_one()
    return n


def _ready(row: Any, count: int) -> str | None:
    """Why a result is complete without waiting for its quiet period, or None.

    ``vendor``: findings say ``complete: true`` and the announced objects (if
    any) are in. ``count``: the announced number of objects is in, and no
    findings say the result is preliminary.
    """
    expected = row.expected_objects
    enough = expected is None or count >= expected
    if row.vendor_complete and enough:
        return "vendor"
    # The findings' own flag: those read from a vendor SR leave ``vendor_complete`` alone.
    preliminary = (
        row.findings_json is not None and not findings_from_json(row.findings_json).complete
    )
    if expected is not None and enough and not preliminary:
        return "count"
    return None


def _match(
    conn: Connection,
    vendors: Sequence[str],
    study_uid: str,
    referenced_studies: Iterable[str],
    referenced_series: Sequence[str],
) -> Any:
    """The job of one of ``vendors`` for the study, or for the first study referenced."""
    if not vendors:
        return None
    candidates = list(dict.fromkeys([study_uid, *referenced_studies]))
    if referenced_series:
        found = conn.execute(
            select(series.c.study_uid).where(series.c.series_uid.in_(list(referenced_series)))
        ).scalars()
        candidates += [s for s in dict.fromkeys(found) if s not in candidates]
    for candidate in candidates:
        rows = conn.execute(
            select(jobs).where(jobs.c.study_uid == candidate, jobs.c.vendor.in_(list(vendors)))
        ).all()
        if rows:  # several products behind one AE title: the one waiting for a result first
            waiting = [r for r in rows if r.state == JobState.AWAITING_RESULT.value]
            return min(waiting or rows, key=lambda r: r.id)
    return None


def _move_job(conn: Connection, job_id: int, now: datetime) -> JobState:
    """Inside the completing transaction: move the job to ``result_received`` if it waits."""
    job = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
    state = JobState(job.state)
    path = _PATHS.get(state)
    if path is None:
        return state
    for step in path:
        check_transition(state, step)
        _record(
            conn,
            job_id,
            at=now,
            from_state=state,
            to_state=step,
            attempt=job.attempts,
        )
        state = step
    conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state == job.state)
        .values(state=state.value, updated_at=now, next_attempt_at=None)
    )
    return state


def _build(conn: Connection, rows: Sequence[Row[Any]]) -> list[Result]:
    ids = [r.id for r in rows]
    by_result: dict[int, list[ResultObject]] = {}
    if ids:
        objs = conn.execute(
            select(result_objects)
            .where(result_objects.c.result_id.in_(ids))
            .order_by(result_objects.c.id)
        ).all()
        for o in objs:
            by_result.setdefault(o.result_id, []).append(_object(o))
    return [
        Result(
            id=r.id,
            job_id=r.job_id,
            study_uid=r.study_uid,
            vendor=r.vendor,
            state=ResultState(r.state),
            urgent=bool(r.urgent),
            findings=findings_from_json(r.findings_json) if r.findings_json else None,
            objects=tuple(by_result.get(r.id, ())),
            expected_objects=r.expected_objects,
            created_at=r.created_at,
            updated_at=r.updated_at,
            completed_at=r.completed_at,
        )
        for r in rows
    ]
