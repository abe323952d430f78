"""The study index on SQLite and PostgreSQL: a SOP or Series Instance UID stays where it is held.

The index refuses (records and raises :class:`IdentityConflictError`) an instance whose
SOP Instance UID it holds in another study or series, or whose Series Instance UID it
holds in another study, inside the indexing transaction: concurrent senders cannot
refile a held instance either.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from broker.model.domain import Patient
from broker.model.errors import NotFoundError, StoreError
from broker.model.identity import ConflictKind, ConflictReason, IdentityConflictError
from broker.store import StudyStore
from broker.store.conflicts import ConflictStore
from broker.store.tables import instances
from tests.integration.test_store import SERIES_A, SERIES_B, STUDY, _rec, engine, store

__all__ = ["engine", "store"]  # the fixtures, shared with tests/integration/test_store.py

OTHER_STUDY = "1.2.826.0.1.3680043.10.511.2"


def _held(store: StudyStore, sop: str) -> tuple[str, str, str]:
    with store.engine.connect() as conn:
        row = conn.execute(
            select(instances.c.study_uid, instances.c.series_uid, instances.c.path).where(
                instances.c.sop_instance_uid == sop
            )
        ).one()
    return row.study_uid, row.series_uid, row.path


def test_a_sop_instance_uid_in_another_study_or_series_is_refused(store: StudyStore) -> None:
    """The SOP Instance UID of a held instance, in another study (same patient, then
    another patient) or another series of its study, raises IdentityConflictError; the
    held row keeps its study, series and path, the other study is not created, and each
    refusal is one open conflict under the held study (a repeat counts on it)."""
    store.record_instance(_rec("1.1"), stable_seconds=10)
    held = _held(store, "1.1")
    other_patient = Patient(patient_id="PID-9", issuer="HOSP")
    attempts = [
        (_rec("1.1", study=OTHER_STUDY, series_uid=OTHER_STUDY + ".1"), ConflictReason.OTHER_STUDY),
        (
            _rec("1.1", study=OTHER_STUDY, series_uid=OTHER_STUDY + ".1", patient=other_patient),
            ConflictReason.OTHER_PATIENT,
        ),
        (_rec("1.1", series_uid=SERIES_B), ConflictReason.OTHER_STUDY),
    ]
    for rec, reason in attempts:
        with pytest.raises(IdentityConflictError) as refused:
            store.record_instance(rec, stable_seconds=10)
        assert refused.value.report.kind is ConflictKind.INSTANCE_STUDY
        assert refused.value.report.reason is reason
        assert _held(store, "1.1") == held
    with pytest.raises(NotFoundError):
        store.get_study(OTHER_STUDY)
    with pytest.raises(IdentityConflictError):
        store.record_instance(attempts[0][0], stable_seconds=10)
    listed = ConflictStore(store.engine).list(kind=ConflictKind.INSTANCE_STUDY, study_uid=STUDY)
    assert sorted(c.count for c in listed) == [1, 1, 2]
    assert store.record_instance(_rec("1.1"), stable_seconds=10).replaced
    assert store.get_study(STUDY).instance_count == 1


def test_a_series_instance_uid_in_another_study_is_refused(store: StudyStore) -> None:
    """An instance naming a series held in another study raises IdentityConflictError and
    indexes nothing; the held study keeps the series and takes more of its instances."""
    store.record_instance(_rec("1.1"), stable_seconds=10)
    with pytest.raises(IdentityConflictError) as refused:
        store.record_instance(_rec("2.1", study=OTHER_STUDY, series_uid=SERIES_A), 10)
    assert refused.value.report.kind is ConflictKind.SERIES_STUDY
    assert refused.value.report.study_uid == STUDY
    with pytest.raises(NotFoundError):
        store.get_study(OTHER_STUDY)
    store.record_instance(_rec("1.2"), stable_seconds=10)
    [series] = store.get_study(STUDY).series
    assert (series.series_uid, series.instance_count) == (SERIES_A, 2)


def test_concurrent_senders_of_one_sop_instance_uid_in_several_studies_keep_one(
    store: StudyStore,
) -> None:
    """Eight threads index the same new SOP Instance UID, each in a study of its own, at
    once: exactly one is indexed and stays so; every other one is refused (or told to send
    again), never indexed over it."""
    for round_ in range(3):
        sop = f"3.{round_}"
        studies = [f"{OTHER_STUDY}.{round_}.{n}" for n in range(8)]

        def index(study: str, sop: str = sop) -> str | None:
            try:
                store.record_instance(_rec(sop, study=study, series_uid=study + ".1"), 10)
            except (IdentityConflictError, StoreError):
                return None
            return study

        with ThreadPoolExecutor(max_workers=8) as pool:
            indexed = [s for s in pool.map(index, studies) if s is not None]
        assert len(indexed) == 1, indexed
        assert _held(store, sop)[0] == indexed[0]
