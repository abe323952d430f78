"""Retention: what the spool and the store no longer need, listed and purged.

A study is purged from the spool once it is stable, none of its jobs is
unfinished, and its last job changed (or, without jobs, it became stable)
before the cutoff: the later one of ``studies_failed`` when a job of it is
dead. Its instance files and index rows go; the study row stays, marked
purged with the instances and bytes it held, and keeps its jobs and history.
A result's objects, and its renderings kept for write-back retries, go once every
write-back of the result is finished. Rows
of the store go by their time: job history, verbatim messages, and orders that are
completed, cancelled or discontinued (with their links to studies; their messages
stay, unlinked, until their own retention). What the store keeps of a study's content
goes with its instances: once a study is purged and nothing more happens to it (no job
of it can bring a result, no write-back of it is unfinished), its events, its procedure
step notices, its corrections (none still being written) and the pseudonyms sent with
it (a patient's, and a prior's, only once no study of that patient ID is kept) are
deleted at the next purge; procedure step notices that never named a study go
by their last change after ``studies_done``. The study row, its jobs and their history
stay. The audit trail is append-only (a trigger refuses updates and deletes) unless
``audit`` is set: then the rows older than it go in one transaction that records the
horizon in ``audit_purges`` (the trigger deletes only rows below a recorded horizon) and
an ``audit.purge`` row saying how many and older than when.

Each study is purged holding its spool folder's exclusive lock
(:meth:`Spool.study_lock`), which the listener holds shared while it places and
indexes an instance: a resent instance is never removed after its index
commit. The row is marked purged in one conditional update (the study must
still be stable and unchanged) before its files are removed; a purge cut
short by a crash removes the remaining files of purged studies next time.
Every purged study and result object is audited.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from broker.model.deid import PseudonymKind
from broker.model.domain import OrderStatus, StudyState
from broker.model.jobs import JobState
from broker.model.logging import get_logger
from broker.model.writeback import DeliveryState
from broker.store.audit import SYSTEM, record_in
from broker.store.engine import writing
from broker.store.spool import Spool
from broker.store.tables import (
    audit,
    audit_purges,
    corrections,
    deliveries,
    instances,
    job_events,
    jobs,
    order_links,
    order_message_links,
    order_messages,
    orders,
    procedure_notices,
    pseudonyms,
    result_objects,
    studies,
    study_events,
)

LOG = get_logger("radbridge.retention")

#: Job states after which nothing more happens to a job without an operator.
JOB_FINAL = (JobState.DONE.value, JobState.CANCELLED.value, JobState.DEAD.value)
DELIVERY_FINAL = (DeliveryState.DONE.value, DeliveryState.DEAD.value)
ORDER_FINAL = (
    OrderStatus.COMPLETED.value,
    OrderStatus.CANCELLED.value,
    OrderStatus.DISCONTINUED.value,
)
#: The audit action of a purge.
PURGE = "spool.purge"
#: The audit action of a purge of the audit trail itself (``retention.audit_days``).
AUDIT_PURGE = "audit.purge"


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Instants before which each kind goes (None: kept for ever)."""

    studies_done: datetime | None = None
    studies_failed: datetime | None = None
    results: datetime | None = None
    messages: datetime | None = None
    job_history: datetime | None = None
    orders: datetime | None = None
    audit: datetime | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """Something a purge removes: a study's copy, a result object, or rows of a table."""

    kind: str
    """``study``, ``result object``, ``job history``, ``messages``, ``orders``, ``study
    events``, ``procedure steps``, ``corrections``, ``pseudonyms``, ``audit``."""
    target: str
    count: int
    bytes: int = 0
    seen: datetime | None = None
    """For a study: its ``last_received_at`` when listed (it must not change before)."""


@dataclass(slots=True)
class Purge:
    items: list[Item] = field(default_factory=list)
    more: bool = False
    """A purge stopped at its ``limit``: more is due."""

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.items)


class Retention:
    """Lists and purges what ``Cutoffs`` let go."""

    def __init__(self, engine: Engine, spool: Spool) -> None:
        self.engine = engine
        self.spool = spool

    # -- what would go -------------------------------------------------------------

    def plan(self, cutoffs: Cutoffs) -> Purge:
        """What a purge now would remove (nothing is changed)."""
        return Purge(
            [
                *self._studies(cutoffs),
                *self._result_objects(cutoffs),
                *self._renderings(cutoffs),
                *self._rows(cutoffs),
                *self._audit(cutoffs),
            ]
        )

    def _audit(self, cutoffs: Cutoffs) -> list[Item]:
        if cutoffs.audit is None:
            return []
        with self.engine.connect() as conn:
            n = conn.execute(
                select(func.count()).select_from(audit).where(audit.c.at < cutoffs.audit)
            ).scalar_one()
        return [Item("audit", "audit", int(n))] if n else []

    def _studies(self, cutoffs: Cutoffs) -> list[Item]:
        if cutoffs.studies_done is None and cutoffs.studies_failed is None:
            return []
        per_study = (
            select(
                jobs.c.study_uid,
                func.max(jobs.c.updated_at).label("finished"),
                func.sum(case((jobs.c.state.in_(JOB_FINAL), 0), else_=1)).label("open"),
                func.sum(case((jobs.c.state == JobState.DEAD.value, 1), else_=0)).label("dead"),
            )
            .group_by(jobs.c.study_uid)
            .subquery()
        )
        held = (
            select(
                instances.c.study_uid,
                func.count().label("n"),
                func.coalesce(func.sum(instances.c.size), 0).label("size"),
            )
            .group_by(instances.c.study_uid)
            .subquery()
        )
        stmt = (
            select(
                studies.c.study_uid,
                studies.c.stable_at,
                studies.c.last_received_at,
                per_study.c.finished,
                per_study.c.open,
                per_study.c.dead,
                held.c.n,
                held.c.size,
            )
            .outerjoin(per_study, per_study.c.study_uid == studies.c.study_uid)
            .outerjoin(held, held.c.study_uid == studies.c.study_uid)
            .where(studies.c.purged_at.is_(None), studies.c.state == StudyState.STABLE.value)
            .order_by(studies.c.id)
        )
        items = []
        with self.engine.connect() as conn:
            for r in conn.execute(stmt):
                if r.open:
                    continue
                cutoff = cutoffs.studies_failed if r.dead else cutoffs.studies_done
                finished = r.finished or r.stable_at
                if cutoff is None or finished is None or finished >= cutoff:
                    continue
                items.append(
                    Item("study", r.study_uid, int(r.n or 0), int(r.size or 0), r.last_received_at)
                )
        return items

    def _result_objects(self, cutoffs: Cutoffs) -> list[Item]:
        if cutoffs.results is None:
            return []
        per_result = (
            select(
                deliveries.c.result_id,
                func.max(deliveries.c.updated_at).label("finished"),
                func.sum(case((deliveries.c.state.in_(DELIVERY_FINAL), 0), else_=1)).label("open"),
            )
            .where(deliveries.c.result_id.is_not(None))
            .group_by(deliveries.c.result_id)
            .subquery()
        )
        stmt = (
            select(result_objects.c.path, result_objects.c.size)
            .join(per_result, per_result.c.result_id == result_objects.c.result_id)
            .where(
                result_objects.c.purged_at.is_(None),
                per_result.c.open == 0,
                per_result.c.finished < cutoffs.results,
            )
        )
        with self.engine.connect() as conn:
            return [Item("result object", r.path, 1, int(r.size)) for r in conn.execute(stmt)]

    def _renderings(self, cutoffs: Cutoffs) -> list[Item]:
        """The results' folders of renderings (``SPOOL/rendered/RESULT``) whose result's
        write-backs are all finished before ``cutoffs.results``: they go with its objects."""
        if cutoffs.results is None or not self.spool.rendered.is_dir():
            return []
        kept = {p.name: p for p in self.spool.rendered.iterdir() if p.name.isdigit()}
        if not kept:
            return []
        finished = (
            select(deliveries.c.result_id)
            .where(deliveries.c.result_id.in_([int(n) for n in kept]))
            .group_by(deliveries.c.result_id)
            .having(
                func.sum(case((deliveries.c.state.in_(DELIVERY_FINAL), 0), else_=1)) == 0,
                func.max(deliveries.c.updated_at) < cutoffs.results,
            )
        )
        with self.engine.connect() as conn:
            ids = sorted(conn.execute(finished).scalars())
        items = []
        for result_id in ids:
            files = [f for f in kept[str(result_id)].rglob("*") if f.is_file()]
            size = sum(f.stat().st_size for f in files)
            items.append(Item("renderings", str(kept[str(result_id)]), len(files), size))
        return items

    def _rows(self, cutoffs: Cutoffs) -> list[Item]:
        items = []
        with self.engine.connect() as conn:
            for label, (table, which) in _row_kinds(cutoffs).items():
                n = conn.execute(select(func.count()).select_from(table).where(which)).scalar_one()
                if n:
                    items.append(Item(label, table.name, int(n)))
        return items

    # -- removing it ---------------------------------------------------------------

    def purge(
        self,
        cutoffs: Cutoffs,
        *,
        actor: str = SYSTEM,
        now: datetime | None = None,
        limit: int | None = None,
    ) -> Purge:
        """Remove what :meth:`plan` lists (each study only if it is still unchanged); at
        most ``limit`` studies and result objects (then ``more`` says if some are left)."""
        now = now or datetime.now(UTC)
        self.finish_interrupted()
        done = Purge()
        plan = self.plan(cutoffs)
        purgers = {
            "study": self._purge_study,
            "result object": self._purge_result_object,
            "renderings": self._purge_renderings,
        }
        files = [i for i in plan.items if i.kind in purgers]
        done.more = limit is not None and len(files) > limit
        for item in files[:limit]:
            if purgers[item.kind](item, actor, now):
                done.items.append(item)
        rows = self._rows(cutoffs)  # after the studies: the rows of those just purged too
        done.items.extend(self._purge_rows(cutoffs, rows, actor, now))
        done.items.extend(self._purge_audit(cutoffs, actor, now))
        if done.items:
            LOG.info(
                "retention purge",
                studies=sum(i.kind == "study" for i in done.items),
                result_objects=sum(i.kind == "result object" for i in done.items),
                bytes=done.bytes,
            )
        return done

    def _purge_study(self, item: Item, actor: str, now: datetime) -> bool:
        uid = item.target
        with self.spool.study_lock(uid, exclusive=True):
            with writing(self.engine) as conn:
                marked = conn.execute(
                    update(studies)
                    .where(
                        studies.c.study_uid == uid,
                        studies.c.purged_at.is_(None),
                        studies.c.state == StudyState.STABLE.value,
                        studies.c.last_received_at == item.seen,
                    )
                    .values(purged_at=now, purged_instances=item.count, purged_bytes=item.bytes)
                ).rowcount
                if not marked:  # received again, or purged by another process
                    return False
                paths = list(
                    conn.execute(
                        select(instances.c.path).where(instances.c.study_uid == uid)
                    ).scalars()
                )
                conn.execute(delete(instances).where(instances.c.study_uid == uid))
                record_in(
                    conn,
                    actor,
                    PURGE,
                    f"study:{uid}",
                    detail={"instances": item.count, "bytes": item.bytes},
                    now=now,
                )
            _remove(Path(p) for p in paths)
            shutil.rmtree(self.spool.studies / self.spool.folder_name(uid), ignore_errors=True)
        return True

    def _purge_result_object(self, item: Item, actor: str, now: datetime) -> bool:
        with writing(self.engine) as conn:
            marked = conn.execute(
                update(result_objects)
                .where(result_objects.c.path == item.target, result_objects.c.purged_at.is_(None))
                .values(purged_at=now)
            ).rowcount
            if not marked:
                return False
            record_in(
                conn,
                actor,
                PURGE,
                f"result-object:{Path(item.target).name}",
                detail={"bytes": item.bytes},
                now=now,
            )
        _remove([Path(item.target)])
        return True

    def _purge_renderings(self, item: Item, actor: str, now: datetime) -> bool:
        folder = Path(item.target)
        with writing(self.engine) as conn:
            record_in(
                conn,
                actor,
                PURGE,
                f"renderings:result-{folder.name}",
                detail={"files": item.count, "bytes": item.bytes},
                now=now,
            )
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def _purge_rows(
        self, cutoffs: Cutoffs, planned: Iterable[Item], actor: str, now: datetime
    ) -> list[Item]:
        kinds = {i.kind: i for i in planned}
        out = []
        with writing(self.engine) as conn:
            for label, (table, which) in _row_kinds(cutoffs).items():
                if label in kinds and label != "orders":
                    n = conn.execute(delete(table).where(which)).rowcount
                    out.append(Item(label, table.name, int(n)))
            if "orders" in kinds and cutoffs.orders is not None:
                old = select(orders.c.id).where(_old_orders(cutoffs.orders))
                conn.execute(delete(order_links).where(order_links.c.order_id.in_(old)))
                conn.execute(
                    delete(order_message_links).where(order_message_links.c.order_id.in_(old))
                )
                conn.execute(
                    update(order_messages)
                    .where(order_messages.c.order_id.in_(old))
                    .values(order_id=None)
                )
                n = conn.execute(delete(orders).where(_old_orders(cutoffs.orders))).rowcount
                out.append(Item("orders", "orders", int(n)))
            for item in out:
                record_in(conn, actor, PURGE, item.target, detail={"rows": item.count}, now=now)
        return out

    def _purge_audit(self, cutoffs: Cutoffs, actor: str, now: datetime) -> list[Item]:
        """The audit rows older than ``cutoffs.audit``, in one transaction with the purge's
        horizon (the trigger deletes nothing newer) and the audit row that says it."""
        before = cutoffs.audit
        if before is None or not self._audit(cutoffs):
            return []
        old = audit.c.at < before
        with writing(self.engine) as conn:
            n = int(conn.execute(select(func.count()).select_from(audit).where(old)).scalar_one())
            conn.execute(insert(audit_purges).values(before=before, at=now, actor=actor, rows=n))
            conn.execute(delete(audit).where(old))
            record_in(
                conn,
                actor,
                AUDIT_PURGE,
                "audit",
                detail={"rows": n, "before": before.isoformat()},
                now=now,
            )
        LOG.info("audit purge", rows=n, before=before.isoformat())
        return [Item("audit", "audit", n)]

    def finish_interrupted(self) -> None:
        """Remove the folders of studies marked purged that a crash left in the spool."""
        with self.engine.connect() as conn:
            purged = list(
                conn.execute(select(studies.c.study_uid).where(studies.c.purged_at.is_not(None)))
                .scalars()
                .all()
            )
        for uid in purged:
            folder = self.spool.studies / self.spool.folder_name(uid)
            if folder.exists():
                with self.spool.study_lock(uid, exclusive=True), self.engine.connect() as conn:
                    still = conn.execute(
                        select(func.count())
                        .select_from(instances)
                        .where(instances.c.study_uid == uid)
                    ).scalar_one()
                    if not still:  # not received again meanwhile
                        shutil.rmtree(folder, ignore_errors=True)


def _row_kinds(cutoffs: Cutoffs) -> dict[str, tuple[Table, ColumnElement[bool]]]:
    """The rows a purge with ``cutoffs`` takes, by kind: their table and which rows."""
    kinds: dict[str, tuple[Table, ColumnElement[bool]]] = {}
    if cutoffs.job_history is not None:
        kinds["job history"] = (job_events, job_events.c.at < cutoffs.job_history)
    if cutoffs.messages is not None:
        kinds["messages"] = (order_messages, order_messages.c.received_at < cutoffs.messages)
    if cutoffs.orders is not None:
        kinds["orders"] = (orders, _old_orders(cutoffs.orders))
    if cutoffs.studies_done is not None or cutoffs.studies_failed is not None:
        gone = _studies_gone()
        corrected = (
            select(deliveries.c.id)
            .where(
                deliveries.c.correction_id == corrections.c.id,
                deliveries.c.state.not_in(DELIVERY_FINAL),
            )
            .exists()
        )
        kinds["study events"] = (study_events, study_events.c.study_uid.in_(gone))
        orphan_cutoff = min(c for c in (cutoffs.studies_done, cutoffs.studies_failed) if c)
        kinds["procedure steps"] = (
            procedure_notices,
            or_(
                procedure_notices.c.study_uid.in_(gone),
                # a notice that never named a study (an MPPS before any image): by its age
                and_(
                    procedure_notices.c.study_uid.is_(None),
                    procedure_notices.c.updated_at < orphan_cutoff,
                ),
            ),
        )
        kinds["corrections"] = (corrections, and_(corrections.c.study_uid.in_(gone), ~corrected))
        kinds["pseudonyms"] = (pseudonyms, _pseudonyms_gone(gone))
    return kinds


def _studies_gone() -> Select[tuple[str]]:
    """Studies retention purged (their instances are gone) that nothing more happens to: no
    job of theirs can still bring a result, no write-back of theirs is unfinished."""
    working = (
        select(jobs.c.id)
        .where(jobs.c.study_uid == studies.c.study_uid, jobs.c.state.not_in(JOB_FINAL))
        .exists()
    )
    writing_back = (
        select(deliveries.c.id)
        .where(
            deliveries.c.study_uid == studies.c.study_uid,
            deliveries.c.state.not_in(DELIVERY_FINAL),
        )
        .exists()
    )
    return select(studies.c.study_uid).where(
        studies.c.purged_at.is_not(None), ~working, ~writing_back
    )


def _pseudonyms_gone(gone: Select[tuple[str]]) -> ColumnElement[bool]:
    """Pseudonyms sent with studies that are gone, once the study they were issued for is
    not kept in the index either; but a patient's only when no study of that patient ID is
    still kept (one patient, one pseudonym: a later study of theirs may still get a result
    that names it).

    A prior's pseudonyms go with the newer study whose job sent them, never with the
    prior's own study: that newer study's result may still name them. ``sent_with`` holds
    the latest study that sent them, and an earlier one may still wait for its result;
    priors come only for the same patient ID, so a prior's go once no study of the patient
    ID of the study that sent them is still kept.

    A prior's pseudonym recorded before ``sent_with`` (migration 0041) names no study that
    sent it, and nothing in the store says which did: one of the studies with a job created
    by the time it was issued. It goes once each of those is gone (no job of a study still
    kept was created before it was issued); a guess at one of them could purge it while a
    result that names it may still come back."""
    kept = studies.alias("kept")
    patient_kept = (
        select(kept.c.id)
        .where(kept.c.patient_id == pseudonyms.c.original, kept.c.study_uid.not_in(gone))
        .exists()
    )
    sender = studies.alias("sender")
    kin_kept = (
        select(kept.c.id)
        .join(sender, sender.c.patient_id == kept.c.patient_id)
        .where(sender.c.study_uid == pseudonyms.c.sent_with, kept.c.study_uid.not_in(gone))
        .exists()
    )
    indexed = select(studies.c.study_uid).where(studies.c.purged_at.is_(None))
    oldest_kept_job = (
        select(func.min(jobs.c.created_at)).where(jobs.c.study_uid.not_in(gone)).scalar_subquery()
    )
    return and_(
        or_(
            # with the study whose job sent it, once the study it was issued for is not
            # kept in the index either (a prior's: nor any study of the sender's patient)
            and_(
                pseudonyms.c.sent_with.in_(gone),
                pseudonyms.c.study_uid.not_in(indexed),
                or_(pseudonyms.c.sent_with == pseudonyms.c.study_uid, ~kin_kept),
            ),
            # recorded before sent_with, with the study it was issued for
            and_(pseudonyms.c.sent_with.is_(None), pseudonyms.c.study_uid.in_(gone)),
            # a prior's recorded before sent_with: once every study that may have sent it is
            and_(
                pseudonyms.c.sent_with.is_(None),
                pseudonyms.c.study_uid.not_in(select(studies.c.study_uid)),
                or_(oldest_kept_job.is_(None), pseudonyms.c.issued_at < oldest_kept_job),
            ),
        ),
        or_(pseudonyms.c.kind != PseudonymKind.PATIENT.value, ~patient_kept),
    )


def _old_orders(cutoff: datetime) -> ColumnElement[bool]:
    """Orders nothing more happens to, last changed before ``cutoff``."""
    return and_(orders.c.status.in_(ORDER_FINAL), orders.c.updated_at < cutoff)


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


__all__ = ["AUDIT_PURGE", "PURGE", "Cutoffs", "Item", "Purge", "Retention"]
