"""One UID, one object: an instance may not take a SOP or Series Instance UID held elsewhere.

The index keys instances by SOP Instance UID and series by Series Instance UID. An
instance that comes with the SOP Instance UID of one radbridge holds in another study
(or in another series of its study) would refile the held object under the new study,
and one that names a series held in another study would leave its own study without
that series. :func:`misfiled` says which, as a conflict for
:class:`~broker.store.studies.StudyStore` to record and refuse; the held object stays
as it is. A resend of an object to the study and series it is held in is no conflict.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from broker.model.domain import InstanceRecord, Patient
from broker.model.identity import (
    ConflictAction,
    ConflictKind,
    ConflictReason,
    ConflictReport,
    patient_conflict,
)
from broker.store.tables import instances, series, studies

_NOT_STORED = "the instance was not stored and the one radbridge holds is unchanged"


def patient_of(conn: Connection, study_uid: str) -> Patient | None:
    """The patient (ID and issuer) of a study radbridge holds; None if it holds none."""
    row = conn.execute(
        select(studies.c.patient_id, studies.c.issuer_of_patient_id).where(
            studies.c.study_uid == study_uid
        )
    ).one_or_none()
    return (
        None if row is None else Patient(patient_id=row.patient_id, issuer=row.issuer_of_patient_id)
    )


def misfiled(conn: Connection, rec: InstanceRecord) -> ConflictReport | None:
    """Why ``rec`` may not be indexed under its study and series, or None (see the module)."""
    held = conn.execute(
        select(instances.c.study_uid, instances.c.series_uid).where(
            instances.c.sop_instance_uid == rec.sop_instance_uid
        )
    ).one_or_none()
    if held is not None and held.study_uid != rec.study_uid:
        return _report(
            conn,
            rec,
            ConflictKind.INSTANCE_STUDY,
            held.study_uid,
            subject=f"SOP Instance UID {rec.sop_instance_uid}, sent in "
            f"Study Instance UID {rec.study_uid}",
            what="an instance with this SOP Instance UID in another study",
            valid="a new SOP Instance UID for a new object; a resend in the study and "
            "series the instance is held in",
        )
    if held is not None and held.series_uid != rec.series_uid:
        return _report(
            conn,
            rec,
            ConflictKind.INSTANCE_STUDY,
            held.study_uid,
            subject=f"SOP Instance UID {rec.sop_instance_uid}, sent in "
            f"Series Instance UID {rec.series_uid}",
            what="an instance with this SOP Instance UID in another series of the study",
            valid="a new SOP Instance UID for a new object; a resend in the series the "
            "instance is held in",
        )
    series_study = conn.execute(
        select(series.c.study_uid).where(series.c.series_uid == rec.series_uid)
    ).scalar_one_or_none()
    if series_study is not None and series_study != rec.study_uid:
        return _report(
            conn,
            rec,
            ConflictKind.SERIES_STUDY,
            series_study,
            subject=f"Series Instance UID {rec.series_uid}, sent in "
            f"Study Instance UID {rec.study_uid}",
            what="a series with this Series Instance UID in another study",
            valid="a new Series Instance UID for a series of another study",
        )
    return None


def _report(
    conn: Connection,
    rec: InstanceRecord,
    kind: ConflictKind,
    held_study: str,
    *,
    subject: str,
    what: str,
    valid: str,
) -> ConflictReport:
    held = patient_of(conn, held_study) or Patient()
    claimed = Patient(patient_id=rec.patient.patient_id, issuer=rec.patient.issuer)
    why = patient_conflict(held, claimed)
    return ConflictReport(
        kind=kind,
        action=ConflictAction.REFUSED,
        reason=ConflictReason.OTHER_STUDY if why is None else ConflictReason.OTHER_PATIENT,
        detail=(
            f"radbridge holds {what}"
            + ("" if why is None else f", of another patient ({why})")
            + f"; {_NOT_STORED}; valid: {valid}"
        ),
        subject=subject,
        matched_on="sop_instance_uid" if kind is ConflictKind.INSTANCE_STUDY else "series_uid",
        held=held,
        claimed=claimed,
        study_uid=held_study,
    )
