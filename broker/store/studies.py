"""Studies, series and instances in the store: index a received instance, close
stable studies, and read them back as domain objects.

A study belongs to the patient its first instances name: a later instance that
names another patient (ID, or issuer where both have one) is not indexed; the
identity conflict is recorded and :class:`IdentityConflictError` raised, so the
listener answers a failure status. Only an ADT merge moves a study to another
patient.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from broker.model.domain import InstanceRecord, Patient, Series, Study, StudyState
from broker.model.errors import NotFoundError, StoreError
from broker.model.identity import (
    ConflictAction,
    ConflictKind,
    ConflictReason,
    ConflictReport,
    IdentityConflictError,
    patient_conflict,
)
from broker.store.conflicts import record_conflict
from broker.store.engine import sync_log, writing
from broker.store.instance_identity import misfiled
from broker.store.prepared import Prepared, transaction
from broker.store.tables import instances, series, studies


@dataclass(frozen=True, slots=True)
class Indexed:
    """What indexing an instance did: first receipt or a replacement of an earlier copy."""

    replaced: bool
    previous_path: str | None
    study_state: StudyState


def _insert(engine_or_conn: Engine | Connection, table: Any) -> Any:
    name = engine_or_conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise StoreError(f"unsupported database dialect '{name}'; valid: sqlite, postgresql")


def _coalesce_new(stmt: Any, table: Any, names: Iterable[str]) -> dict[str, Any]:
    """Later instances fill in what earlier ones left empty, never blank it out."""
    return {n: func.coalesce(stmt.excluded[n], table.c[n]) for n in names}


def _upsert(engine: Engine, table: Any, key: str, keep: Iterable[str], fill: Iterable[str]) -> Any:
    """INSERT … ON CONFLICT (key) DO UPDATE: ``fill`` columns coalesce, the rest are replaced."""
    columns = [c.name for c in table.columns if c.name != "id"]
    stmt = _insert(engine, table).values({c: bindparam(c, type_=table.c[c].type) for c in columns})
    fill = list(fill)
    keep = [key, *keep]
    replace_cols = {c: stmt.excluded[c] for c in columns if c not in keep and c not in fill}
    return stmt, {**_coalesce_new(stmt, table, fill), **replace_cols}


_STUDY_FILL = (
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "accession_number",
    "study_date",
    "study_time",
    "study_description",
    "referring_physician",
    "institution",
)


@dataclass(frozen=True)
class _Statements:
    """The statements indexing one instance, compiled once (:mod:`broker.store.prepared`)."""

    previous_path: Prepared
    upsert_study: Prepared
    upsert_series: Prepared
    upsert_instance: Prepared

    @classmethod
    def build(cls, engine: Engine) -> _Statements:
        study, study_set = _upsert(
            engine,
            studies,
            "study_uid",
            keep=("state", "revision", "first_received_at", "stable_at"),
            fill=_STUDY_FILL,
        )
        # The study's patient is the one it has: an instance may fill it in, never change it,
        # and one naming another patient updates nothing (no row comes back).
        held_id, held_issuer = studies.c.patient_id, studies.c.issuer_of_patient_id
        new_id, new_issuer = study.excluded.patient_id, study.excluded.issuer_of_patient_id
        study_set["patient_id"] = func.coalesce(held_id, new_id)
        study_set["issuer_of_patient_id"] = func.coalesce(held_issuer, new_issuer)
        held_site, new_site = studies.c.site, study.excluded.site
        same_site = or_(held_site == new_site, and_(held_site.is_(None), new_site.is_(None)))
        same_patient = or_(
            held_id.is_(None),
            new_id.is_(None),
            and_(
                held_id == new_id,
                or_(held_issuer.is_(None), new_issuer.is_(None), held_issuer == new_issuer),
            ),
        )
        study_set["state"] = case(
            (studies.c.state == StudyState.STABLE.value, StudyState.UPDATED.value),
            else_=studies.c.state,
        )
        series_stmt, series_set = _upsert(
            engine,
            series,
            "series_uid",
            keep=("study_uid",),
            fill=[
                c.name for c in series.columns if c.name not in ("id", "series_uid", "study_uid")
            ],
        )
        # The routing tags are those of the first instance indexed: later ones never replace them.
        series_set["tags"] = func.coalesce(series.c.tags, series_stmt.excluded.tags)
        instance, instance_set = _upsert(
            engine, instances, "sop_instance_uid", keep=("receive_count",), fill=()
        )
        instance_set["receive_count"] = instances.c.receive_count + 1
        return cls(
            previous_path=Prepared(
                engine,
                select(instances.c.path).where(instances.c.sop_instance_uid == bindparam("uid")),
            ),
            upsert_study=Prepared(
                engine,
                study.on_conflict_do_update(
                    index_elements=[studies.c.study_uid],
                    set_=study_set,
                    where=and_(same_site, same_patient),
                ).returning(studies.c.state),
            ),
            # A series stays in its study, an instance in its study and series: one that
            # names another updates nothing (no row comes back; see instance_identity).
            upsert_series=Prepared(
                engine,
                series_stmt.on_conflict_do_update(
                    index_elements=[series.c.series_uid],
                    set_=series_set,
                    where=series.c.study_uid == series_stmt.excluded.study_uid,
                ).returning(series.c.id),
            ),
            upsert_instance=Prepared(
                engine,
                instance.on_conflict_do_update(
                    index_elements=[instances.c.sop_instance_uid],
                    set_=instance_set,
                    where=and_(
                        instances.c.study_uid == instance.excluded.study_uid,
                        instances.c.series_uid == instance.excluded.series_uid,
                    ),
                ).returning(instances.c.id),
            ),
        )


def _study_values(
    rec: InstanceRecord, now: datetime, due: datetime, stable: float
) -> dict[str, Any]:
    p = rec.patient
    return {
        "study_uid": rec.study_uid,
        "patient_id": p.patient_id,
        "issuer_of_patient_id": p.issuer,
        "patient_name": p.name,
        "patient_birth_date": p.birth_date,
        "patient_sex": p.sex,
        "accession_number": rec.accession_number,
        "study_date": rec.study_date,
        "study_time": rec.study_time,
        "study_description": rec.study_description,
        "referring_physician": rec.referring_physician,
        "institution": rec.institution,
        "state": StudyState.RECEIVING.value,
        "revision": 0,
        "stable_seconds": stable,
        "calling_ae": rec.calling_ae,
        "called_ae": rec.called_ae,
        "peer_address": rec.peer_address,
        "first_received_at": now,
        "last_received_at": now,
        "due_at": due,
        "stable_at": None,
        "route_due_at": None,
        "purged_at": None,  # received again: the spool holds it again
        "purged_instances": None,
        "purged_bytes": None,
        "site": rec.site,
    }


def _series_values(rec: InstanceRecord) -> dict[str, Any]:
    return {
        "series_uid": rec.series_uid,
        "study_uid": rec.study_uid,
        "modality": rec.modality,
        "body_part": rec.body_part,
        "series_description": rec.series_description,
        "series_number": rec.series_number,
        "protocol_name": rec.protocol_name,
        "slice_thickness": rec.slice_thickness,
        "image_type": "\\".join(rec.image_type) or None,
        "contrast_agent": rec.contrast_agent,
        "tags": (
            None
            if rec.series_tags is None
            else json.dumps(dict(rec.series_tags), separators=(",", ":"))
        ),
    }


def _instance_values(rec: InstanceRecord, now: datetime) -> dict[str, Any]:
    return {
        "sop_instance_uid": rec.sop_instance_uid,
        "sop_class_uid": rec.sop_class_uid,
        "series_uid": rec.series_uid,
        "study_uid": rec.study_uid,
        "transfer_syntax_uid": rec.transfer_syntax_uid,
        "instance_number": rec.instance_number,
        "number_of_frames": rec.number_of_frames,
        "path": rec.path,
        "size": rec.size,
        "calling_ae": rec.calling_ae,
        "called_ae": rec.called_ae,
        "peer_address": rec.peer_address,
        "received_at": now,
        "receive_count": 1,
    }


#: How many series this process remembers as having their routing tags in the index.
_TAGGED_MEMORY = 4096


class _MisfiledError(StoreError):
    """Raised in the indexing transaction to undo it: the instance's SOP or Series Instance
    UID is held in another study (or series)."""


class _HeldError(StoreError):
    """Raised in an all-or-nothing indexing transaction to undo it: the study is held for
    another patient or site than an instance names."""


class StudyStore:
    """The study index. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._prepared: _Statements | None = None
        self._tagged: set[str] = set()

    def record_instance(self, rec: InstanceRecord, stable_seconds: float) -> Indexed:
        """Index one durably spooled instance; re-open the study if it was stable.

        :class:`IdentityConflictError` (recorded, nothing indexed) when the study is
        held for another patient than the instance names, or its SOP or Series Instance
        UID is held in another study (:mod:`broker.store.instance_identity`).
        """
        now = rec.received_at or datetime.now(UTC)
        refused: ConflictReport | None = None
        state = previous_path = None
        try:
            with writing(self.engine) as conn:
                previous_path, state = self._index(conn.connection, rec, now, stable_seconds)
                if state is None:
                    refused = self._refuse(conn, rec, now)
        except _MisfiledError:
            refused = self._refuse_misfiled(rec, now)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot index instance: {exc}") from exc
        if refused is not None:
            raise IdentityConflictError(refused)
        if state is None:  # the study's patient changed between the two statements (a merge)
            raise StoreError("the study's patient changed while indexing; send it again")
        return self._indexed(rec, previous_path, state)

    def record_instances(
        self, batch: Sequence[tuple[InstanceRecord, float]]
    ) -> list[Indexed | None]:
        """Index several durably spooled instances (each with its stable seconds) in one
        transaction: one commit for all of them.

        The spool is the truth for a study still receiving: start-up indexes again the
        files of every study the index does not know or holds as receiving or updated
        (:mod:`broker.store.reconcile`). So on SQLite a commit that leaves every study
        receiving is not synced (a killed process loses nothing of it, a power cut only
        what start-up finds again), and one that re-opens a stable study (or keeps one
        updated) is synced before this returns.

        Each instance is indexed under its own savepoint; one that meets a conflict (or
        any error) is undone alone and its entry is None: :meth:`record_instance` indexes
        it again by itself, which records and raises what it met. Raises
        :class:`StoreError` when the transaction cannot commit (nothing is indexed).
        An instance alone needs no savepoint: its transaction is undone instead.
        """
        if len(batch) == 1:
            alone = self._record_alone(*batch[0])
            self._sync_unless_receiving([alone])
            return [alone]
        done: list[tuple[str | None, str] | None] = []
        try:
            with transaction(self.engine, synced=False) as txn:
                for rec, stable_seconds in batch:
                    now = rec.received_at or datetime.now(UTC)
                    txn.execute("SAVEPOINT instance")
                    try:
                        previous_path, state = self._index(txn, rec, now, stable_seconds)
                    except (_MisfiledError, SQLAlchemyError):
                        state = None
                    if state is None:
                        txn.execute("ROLLBACK TO SAVEPOINT instance")
                        done.append(None)
                    else:
                        done.append((previous_path, state))
                    txn.execute("RELEASE SAVEPOINT instance")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot index instances: {exc}") from exc
        indexed = [
            None if entry is None else self._indexed(rec, *entry)
            for (rec, _stable), entry in zip(batch, done, strict=True)
        ]
        self._sync_unless_receiving(indexed)
        return indexed

    def _sync_unless_receiving(self, indexed: Sequence[Indexed | None]) -> None:
        """Sync the unsynced commit of ``indexed`` unless it left every study receiving
        (:meth:`record_instances`)."""
        if any(i is not None and i.study_state is not StudyState.RECEIVING for i in indexed):
            try:
                sync_log(self.engine)
            except OSError as exc:
                raise StoreError(f"cannot sync the index: {exc.strerror}") from exc

    def _record_alone(self, rec: InstanceRecord, stable_seconds: float) -> Indexed | None:
        """:meth:`record_instances` of one instance."""
        now = rec.received_at or datetime.now(UTC)
        try:
            with transaction(self.engine, synced=False) as txn:
                previous_path, state = self._index(txn, rec, now, stable_seconds)
                if state is None:
                    raise _HeldError
        except (_MisfiledError, _HeldError):
            return None
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot index instances: {exc}") from exc
        return self._indexed(rec, previous_path, state)

    def record_study(
        self,
        recs: Sequence[InstanceRecord],
        stable_seconds: float,
        *,
        within: Callable[[Connection], None] | None = None,
    ) -> list[Indexed]:
        """Index durably spooled instances in one transaction: every one of them, or none.

        ``within`` runs in that transaction after the last one (the site-to-hub link
        marks its transfer committed there, so the study and the commit are seen
        together). The first instance refused raises :class:`IdentityConflictError`
        as :meth:`record_instance` does, and nothing of ``recs`` is indexed.
        """
        found: list[tuple[str | None, str]] = []
        refused: ConflictReport | None = None
        current: InstanceRecord | None = None
        try:
            try:
                with writing(self.engine) as conn:
                    for current in recs:
                        now = current.received_at or datetime.now(UTC)
                        previous_path, state = self._index(
                            conn.connection, current, now, stable_seconds
                        )
                        if state is None:
                            raise _HeldError
                        found.append((previous_path, state))
                    if within is not None:
                        within(conn)
            except _HeldError:  # undone; its conflict is recorded on its own
                assert current is not None
                with writing(self.engine) as conn:
                    refused = self._refuse(conn, current, datetime.now(UTC))
                if refused is None:  # the study's patient changed meanwhile (a merge)
                    raise StoreError(
                        "the study's patient changed while indexing; send it again"
                    ) from None
            except _MisfiledError:
                assert current is not None
                refused = self._refuse_misfiled(current, datetime.now(UTC))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot index instance: {exc}") from exc
        if refused is not None:
            raise IdentityConflictError(refused)
        return [self._indexed(r, p, st) for r, (p, st) in zip(recs, found, strict=True)]

    def _index(
        self, conn: Any, rec: InstanceRecord, now: datetime, stable_seconds: float
    ) -> tuple[str | None, str | None]:
        """The index statements of one instance, run in ``conn``'s transaction (a DBAPI
        connection: :meth:`Prepared.first`): its previous path and its study's state
        (None: the study is held for another patient or site); raises
        :class:`_MisfiledError` when its series or instance UID is held elsewhere."""
        stmts = self._statements()
        due = now + timedelta(seconds=stable_seconds)
        previous = stmts.previous_path.first(conn, {"uid": rec.sop_instance_uid})
        study = stmts.upsert_study.first(conn, _study_values(rec, now, due, stable_seconds))
        if study is not None and (
            stmts.upsert_series.first(conn, _series_values(rec)) is None
            or stmts.upsert_instance.first(conn, _instance_values(rec, now)) is None
        ):
            raise _MisfiledError
        return (
            None if previous is None else previous[0],
            None if study is None else study[0],
        )

    def _indexed(self, rec: InstanceRecord, previous_path: str | None, state: str) -> Indexed:
        if rec.series_tags is not None:
            if len(self._tagged) >= _TAGGED_MEMORY:
                self._tagged.clear()
            self._tagged.add(rec.series_uid)
        return Indexed(
            replaced=previous_path is not None,
            previous_path=previous_path if previous_path not in (None, rec.path) else None,
            study_state=StudyState(state),
        )

    def check_instance(self, rec: InstanceRecord) -> None:
        """Refuse (record and raise :class:`IdentityConflictError`) an instance whose study
        is held for another patient, before its file is placed: a resent instance would
        otherwise replace the stored copy."""
        now = rec.received_at or datetime.now(UTC)
        refused = None
        try:
            with self.engine.connect() as conn:
                held = conn.execute(
                    select(studies.c.patient_id, studies.c.issuer_of_patient_id).where(
                        studies.c.study_uid == rec.study_uid
                    )
                ).one_or_none()
            if (
                held is None
                or patient_conflict(
                    Patient(patient_id=held.patient_id, issuer=held.issuer_of_patient_id),
                    rec.patient,
                )
                is None
            ):
                return
            with writing(self.engine) as conn:
                refused = self._refuse(conn, rec, now)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot check the study's patient: {exc}") from exc
        if refused is not None:
            raise IdentityConflictError(refused)

    def _refuse_misfiled(self, rec: InstanceRecord, now: datetime) -> ConflictReport:
        """Record why ``rec`` was not indexed (its indexing was undone): the held instance or
        series it conflicts with."""
        try:
            with writing(self.engine) as conn:
                report = misfiled(conn, rec)
                if report is not None:
                    record_conflict(
                        conn,
                        report,
                        source="dicom",
                        sender=rec.calling_ae,
                        peer=rec.peer_address,
                        now=now,
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the instance's conflict: {exc}") from exc
        if report is None:  # the held one went away meanwhile (a study was deleted)
            raise StoreError("the index changed while indexing the instance; send it again")
        return report

    @staticmethod
    def _refuse(conn: Connection, rec: InstanceRecord, now: datetime) -> ConflictReport | None:
        """The conflict of ``rec`` with its study's patient, recorded; None if there is none."""
        row = conn.execute(
            select(studies.c.patient_id, studies.c.issuer_of_patient_id, studies.c.site).where(
                studies.c.study_uid == rec.study_uid
            )
        ).one_or_none()
        if row is None:
            return None
        if row.site != rec.site:
            site_report = ConflictReport(
                kind=ConflictKind.STUDY_SITE,
                action=ConflictAction.REFUSED,
                detail=(
                    f"radbridge holds this study for site {row.site or '(the hub)'}; an "
                    f"instance from site {rec.site or '(the hub)'} was not stored; valid: "
                    "the study's own site, or a new Study Instance UID"
                ),
                subject=f"Study Instance UID {rec.study_uid}",
                reason=ConflictReason.OTHER_SITE,
                matched_on="study_uid",
                study_uid=rec.study_uid,
            )
            record_conflict(
                conn,
                site_report,
                source="dicom",
                sender=rec.calling_ae,
                peer=rec.peer_address,
                now=now,
            )
            return site_report
        held = Patient(patient_id=row.patient_id, issuer=row.issuer_of_patient_id)
        claimed = Patient(patient_id=rec.patient.patient_id, issuer=rec.patient.issuer)
        why = patient_conflict(held, claimed)
        if why is None:
            return None
        report = ConflictReport(
            kind=ConflictKind.STUDY_PATIENT,
            action=ConflictAction.REFUSED,
            detail=(
                f"radbridge holds this study for another patient ({why}); the instance was "
                "not stored; valid: the study's own patient, or a new Study Instance UID; "
                "a patient correction comes as an ADT merge (A40)"
            ),
            subject=f"Study Instance UID {rec.study_uid}",
            reason=ConflictReason.OTHER_PATIENT,
            matched_on="study_uid",
            held=held,
            claimed=claimed,
            study_uid=rec.study_uid,
        )
        record_conflict(
            conn, report, source="dicom", sender=rec.calling_ae, peer=rec.peer_address, now=now
        )
        return report

    def wants_series_tags(self, series_uid: str) -> bool:
        """Whether an instance of this series should bring its series' routing tags: true
        until this process has indexed one that did (so only a series' first instance, per
        process, pays for reading them)."""
        return series_uid not in self._tagged

    def series_tags(self, study_uid: str) -> dict[str, dict[str, str]]:
        """The routing tags of each series of a study (by Series Instance UID); a series
        indexed before tags were kept has none."""
        stmt = select(series.c.series_uid, series.c.tags).where(
            series.c.study_uid == study_uid, series.c.tags.is_not(None)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        out: dict[str, dict[str, str]] = {}
        for uid, text in rows:
            try:
                loaded = json.loads(text)
            except ValueError:
                continue
            if isinstance(loaded, dict):
                out[uid] = {str(k): str(v) for k, v in loaded.items()}
        return out

    def prepare(self) -> None:
        """Build the indexing statements and open a connection now (a listener process
        does so as it starts), not on the first C-STORE."""
        self._statements()
        with self.engine.connect():
            pass

    def _statements(self) -> _Statements:
        """The indexing statements, built once: building them costs more than running them."""
        if self._prepared is None:
            self._prepared = _Statements.build(self.engine)
        return self._prepared

    def close_stable(self, now: datetime | None = None) -> list[str]:
        """Mark every study quiet for its stable time as stable; return their UIDs."""
        now = now or datetime.now(UTC)
        stmt = (
            update(studies)
            .where(
                and_(
                    studies.c.state.in_([StudyState.RECEIVING.value, StudyState.UPDATED.value]),
                    studies.c.due_at <= now,
                )
            )
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
                return list(conn.execute(stmt).scalars())
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot close stable studies: {exc}") from exc

    def keep_unrouted(self, study_uid: str, now: datetime | None = None) -> None:
        """A study radbridge made itself (a canary: :mod:`broker.model.canary`) is complete
        as written and never routed: stable at once, without passing the stable timer. Index
        its instances with a stable time far off first, so the timer never closes it."""
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(studies)
                    .where(studies.c.study_uid == study_uid)
                    .values(
                        state=StudyState.STABLE.value,
                        stable_at=now or datetime.now(UTC),
                        route_due_at=None,
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot keep the study unrouted: {exc}") from exc

    def next_due(self) -> datetime | None:
        """When the next collecting study falls quiet or a study is due for routing again."""
        collecting = select(func.min(studies.c.due_at)).where(
            studies.c.state.in_([StudyState.RECEIVING.value, StudyState.UPDATED.value])
        )
        rerouting = select(func.min(studies.c.route_due_at)).where(
            studies.c.state == StudyState.STABLE.value
        )
        with self.engine.connect() as conn:
            due = [conn.execute(q).scalar_one_or_none() for q in (collecting, rerouting)]
        return min((d for d in due if d is not None), default=None)

    def route_again_at(self, study_uid: str, at: datetime) -> None:
        """Ask for the stable study to be routed again at ``at`` (e.g. an order wait ends)."""
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(studies).where(studies.c.study_uid == study_uid).values(route_due_at=at)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot schedule routing of {study_uid}: {exc}") from exc

    def take_route_due(self, now: datetime | None = None) -> list[str]:
        """Stable studies due for routing again (an order came, a wait ended); clears the mark."""
        now = now or datetime.now(UTC)
        stmt = (
            update(studies)
            .where(
                studies.c.route_due_at <= now,
                studies.c.state == StudyState.STABLE.value,
            )
            .values(route_due_at=None)
            .returning(studies.c.study_uid)
        )
        try:
            with writing(self.engine) as conn:
                return list(conn.execute(stmt).scalars())
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read studies due for routing: {exc}") from exc

    def list_studies(self, limit: int = 100, offset: int = 0) -> list[Study]:
        """Studies, newest activity first, with their series and counts."""
        stmt = (
            select(studies)
            .order_by(studies.c.last_received_at.desc(), studies.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            return self._build(conn, rows)

    def site_of(self, study_uid: str) -> str | None:
        """The site a study was attributed to at intake (None: the implicit one, or unknown)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(studies.c.site).where(studies.c.study_uid == study_uid)
            ).scalar_one_or_none()

    def get_study(self, study_uid: str) -> Study:
        """One study by its Study Instance UID."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).all()
            if not rows:
                raise NotFoundError(f"no study with Study Instance UID {study_uid}")
            return self._build(conn, rows)[0]

    def instance_paths(self, study_uid: str, series_uids: Sequence[str] = ()) -> list[str]:
        """Spool paths of a study's instances (only ``series_uids`` if given), in order."""
        stmt = (
            select(instances.c.path)
            .where(instances.c.study_uid == study_uid)
            .order_by(instances.c.series_uid, instances.c.instance_number, instances.c.id)
        )
        if series_uids:
            stmt = stmt.where(instances.c.series_uid.in_(list(series_uids)))
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def known_paths(self) -> Iterator[str]:
        """Every spool path the index knows (for reconciling the spool at start)."""
        with self.engine.connect() as conn:
            yield from conn.execute(select(instances.c.path)).scalars()

    def _build(self, conn: Connection, rows: Sequence[Row[Any]]) -> list[Study]:
        uids = [r.study_uid for r in rows]
        if not uids:
            return []
        counts = (
            select(
                instances.c.series_uid,
                func.count().label("n"),
                func.coalesce(func.sum(instances.c.size), 0).label("size"),
            )
            .where(instances.c.study_uid.in_(uids))
            .group_by(instances.c.series_uid)
            .subquery()
        )
        series_rows = conn.execute(
            select(series, counts.c.n, counts.c.size)
            .join(counts, counts.c.series_uid == series.c.series_uid)
            .order_by(series.c.series_number.is_(None), series.c.series_number, series.c.id)
        ).all()
        by_study: dict[str, list[Series]] = {}
        for s in series_rows:
            by_study.setdefault(s.study_uid, []).append(
                Series(
                    series_uid=s.series_uid,
                    modality=s.modality,
                    body_part=s.body_part,
                    description=s.series_description,
                    series_number=s.series_number,
                    slice_thickness=s.slice_thickness,
                    image_type=tuple(s.image_type.split("\\")) if s.image_type else (),
                    contrast_agent=s.contrast_agent,
                    instance_count=int(s.n),
                    size=int(s.size),
                )
            )
        return [_study(r, tuple(by_study.get(r.study_uid, ()))) for r in rows]


def _study(r: Row[Any], series_list: tuple[Series, ...]) -> Study:
    modalities = tuple(dict.fromkeys(s.modality for s in series_list if s.modality))
    body_parts = tuple(dict.fromkeys(s.body_part for s in series_list if s.body_part))
    return Study(
        study_uid=r.study_uid,
        patient=Patient(
            patient_id=r.patient_id,
            issuer=r.issuer_of_patient_id,
            name=r.patient_name,
            birth_date=r.patient_birth_date,
            sex=r.patient_sex,
        ),
        accession_number=r.accession_number,
        study_date=r.study_date,
        description=r.study_description,
        modalities=modalities,
        body_parts=body_parts,
        state=StudyState(r.state),
        revision=r.revision,
        instance_count=sum(s.instance_count for s in series_list),
        size=sum(s.size for s in series_list),
        calling_ae=r.calling_ae,
        called_ae=r.called_ae,
        peer_address=r.peer_address,
        first_received_at=r.first_received_at,
        last_received_at=r.last_received_at,
        stable_at=r.stable_at,
        stable_seconds=r.stable_seconds,
        series=series_list,
        purged_at=r.purged_at,
        site=r.site,
    )


def of_sites(sites: frozenset[str]) -> Select[Any]:
    """The Study Instance UIDs of ``sites``' studies (a subquery, for rows that keep to a
    site-scoped caller's sites)."""
    return select(studies.c.study_uid).where(studies.c.site.in_(sorted(sites)))
