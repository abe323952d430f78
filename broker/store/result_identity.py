"""A vendor's result may not attach to another patient, or to another study than its job's.

:func:`object_conflict` checks a result object before it is recorded:

- matched to a job, its own Study Instance UID must be the job's study, or one
  radbridge does not hold (a vendor may put its objects in a new study that
  references the job's); one of another study radbridge holds is refused;
- its Patient ID (and issuer) must be the patient of the study it goes with (the
  job's study, or, for an orphan, the study radbridge holds under its Study Instance
  UID), or a patient an ADT merge moved into that one (the vendor saw the study
  before the merge).

:func:`findings_conflict` refuses JSON findings whose image references name series of
another study radbridge holds. What is refused is recorded as an identity conflict and
raised as :class:`~broker.model.identity.IdentityConflictError`; nothing of it is stored
with the job, so it is never written back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from broker.model.domain import Findings, Patient, ResultObject
from broker.model.identity import (
    ConflictAction,
    ConflictKind,
    ConflictReason,
    ConflictReport,
    patient_conflict,
)
from broker.store.instance_identity import patient_of
from broker.store.patients import merged_into
from broker.store.tables import series

_NOTHING_KEPT = "it was not stored and nothing will be written back"


def object_conflict(
    conn: Connection, obj: ResultObject, job: Any, patient: Patient
) -> ConflictReport | None:
    """Why the object may not be recorded (with ``job``, a row of ``jobs``, or as an orphan
    when ``job`` is None), or None; see the module."""
    own = patient_of(conn, obj.study_uid)
    subject = f"SOP Instance UID {obj.sop_instance_uid}"
    if job is not None and job.study_uid != obj.study_uid and own is not None:
        return ConflictReport(
            kind=ConflictKind.RESULT_STUDY,
            action=ConflictAction.REFUSED,
            reason=ConflictReason.OTHER_STUDY,
            detail=(
                "the result object is of another study radbridge holds than the study of "
                f"its job; {_NOTHING_KEPT}; valid: the Study Instance UID of the study the "
                "vendor was sent, or a new one that references it"
            ),
            subject=subject,
            matched_on="study_uid",
            held=patient_of(conn, job.study_uid) or Patient(),
            claimed=patient,
            study_uid=job.study_uid,
        )
    study_uid = job.study_uid if job is not None else obj.study_uid
    held = own if study_uid == obj.study_uid else patient_of(conn, study_uid)
    if held is None:
        return None
    why = patient_conflict(held, patient)
    if why is None or merged_into(conn, patient, held):
        return None
    return ConflictReport(
        kind=ConflictKind.RESULT_PATIENT,
        action=ConflictAction.REFUSED,
        reason=ConflictReason.OTHER_PATIENT,
        detail=(
            f"the result object names another patient than its study ({why}); "
            f"{_NOTHING_KEPT}; valid: the Patient ID and Issuer of Patient ID of the study"
        ),
        subject=subject,
        matched_on="study_uid",
        held=held,
        claimed=patient,
        study_uid=study_uid,
    )


def findings_conflict(conn: Connection, job: Any, findings: Findings) -> ConflictReport | None:
    """Why the job's findings may not be recorded (they reference images of another study
    radbridge holds), or None."""
    referenced = {
        ref.series_uid: (n, m)
        for n, finding in enumerate(findings.findings)
        for m, ref in enumerate(finding.references)
    }
    if not referenced:
        return None
    rows = conn.execute(
        select(series.c.series_uid, series.c.study_uid).where(
            series.c.series_uid.in_(list(referenced))
        )
    ).all()
    for row in rows:
        if row.study_uid == job.study_uid:
            continue
        n, m = referenced[row.series_uid]
        return ConflictReport(
            kind=ConflictKind.RESULT_STUDY,
            action=ConflictAction.REFUSED,
            reason=ConflictReason.OTHER_STUDY,
            detail=(
                f"findings[{n}].references[{m}].series_instance_uid is a series of another "
                f"study than the job's; the findings were not stored; valid: series of the "
                "study the vendor was sent"
            ),
            subject=f"Series Instance UID {row.series_uid}",
            matched_on="series_uid",
            held=patient_of(conn, job.study_uid) or Patient(),
            claimed=patient_of(conn, row.study_uid) or Patient(),
            study_uid=job.study_uid,
        )
    return None
