"""Group commit on SQLite and PostgreSQL: instances of several associations durable together."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from broker.model.domain import Patient
from broker.model.errors import SpoolError
from broker.model.identity import IdentityConflictError
from broker.store import StudyStore
from broker.store.group_commit import GroupCommit, _Waiting
from broker.store.spool import Spool
from tests.integration.test_store import SERIES_A, SERIES_B, STUDY, T0, _rec, engine, store

__all__ = ["engine", "store"]  # the fixtures, shared with the store's tests

OTHER_PATIENT = Patient(patient_id="PID-9999", issuer="HOSP", name="ROE^RICHARD")


def _spooled(spool: Spool, sop: str, series_uid: str) -> tuple[Path, list[Path]]:
    """A received file renamed into its study folder: its path and the folders to sync."""
    spool.tmp.mkdir(parents=True, exist_ok=True)
    tmp = spool.tmp / f"{sop}.part"
    tmp.write_bytes(b"DICM" * 16)
    final = spool.path_for(STUDY, series_uid, sop)
    _existed, folders = spool.rename_into_place(tmp, final)
    return final, folders


def test_concurrent_instances_share_commits_and_all_are_indexed(
    store: StudyStore, tmp_path: Path
) -> None:
    """Eight associations storing at once: every instance is indexed at its spooled path,
    in fewer commits than instances."""
    spool = Spool(tmp_path / "spool")
    commits = GroupCommit(store)
    per_thread = 12

    def association(thread: int) -> None:
        for i in range(per_thread):
            sop = f"7.{thread}.{i}"
            series_uid = SERIES_A if i % 2 else SERIES_B
            final, folders = _spooled(spool, sop, series_uid)
            rec = _rec(
                sop,
                series_uid=series_uid,
                path=str(final),
                at=T0 + timedelta(milliseconds=i),
                size=1000,
            )
            indexed = commits.record(rec, 10.0, folders)
            assert not indexed.replaced

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(association, range(8)))
    paths = store.instance_paths(STUDY)
    assert len(paths) == 8 * per_thread
    assert all(Path(p).is_file() for p in paths)
    assert commits.instances == 8 * per_thread
    assert commits.groups < commits.instances


def test_a_conflicting_instance_is_undone_alone_in_its_group(store: StudyStore) -> None:
    """One transaction of three instances, the middle one naming another patient: the
    other two are indexed, the middle one is not (None: to be indexed by itself)."""
    store.record_instance(_rec("8.0"), 10.0)
    batch = [
        (_rec("8.1"), 10.0),
        (_rec("8.2", patient=OTHER_PATIENT), 10.0),
        (_rec("8.3", series_uid=SERIES_B), 10.0),
    ]
    indexed = store.record_instances(batch)
    assert [i is not None for i in indexed] == [True, False, True]
    held = sorted(Path(p).stem for p in store.instance_paths(STUDY))
    assert held == ["8.0", "8.1", "8.3"]


def test_group_commit_refuses_a_conflict_and_records_it(store: StudyStore) -> None:
    """An instance of a study held for another patient raises the identity conflict through
    the group commit, as indexing it alone does, and is not indexed."""
    commits = GroupCommit(store)
    commits.record(_rec("9.0"), 10.0, [])
    with pytest.raises(IdentityConflictError):
        commits.record(_rec("9.1", patient=OTHER_PATIENT), 10.0, [])
    assert [Path(p).stem for p in store.instance_paths(STUDY)] == ["9.0"]


def test_an_instance_whose_folder_cannot_be_synced_fails_and_is_not_indexed(
    store: StudyStore, tmp_path: Path
) -> None:
    """A folder that cannot be fsync'd (gone): SpoolError, no index row; the next instance
    is indexed."""
    commits = GroupCommit(store)
    with pytest.raises(SpoolError):
        commits.record(_rec("10.1"), 10.0, [tmp_path / "gone"])
    commits.record(_rec("10.2"), 10.0, [tmp_path])
    assert [Path(p).stem for p in store.instance_paths(STUDY)] == ["10.2"]


def test_one_unsyncable_folder_in_a_group_fails_only_its_instance(
    store: StudyStore, tmp_path: Path
) -> None:
    """A group of three whose middle instance's folder cannot be fsync'd: that one fails with
    SpoolError and is not indexed; the other two are indexed by the group, in one commit
    after their folders were synced."""
    commits = GroupCommit(store)
    group = [
        _Waiting(_rec("12.1"), 10.0, [tmp_path]),
        _Waiting(_rec("12.2"), 10.0, [tmp_path / "gone"]),
        _Waiting(_rec("12.3", series_uid=SERIES_B), 10.0, [tmp_path]),
    ]
    commits._commit(group)  # the commit thread's step, given one group as it would gather it
    assert [w.indexed is not None for w in group] == [True, False, True]
    assert isinstance(group[1].error, SpoolError)
    assert sorted(Path(p).stem for p in store.instance_paths(STUDY)) == ["12.1", "12.3"]
    assert (commits.groups, commits.instances) == (1, 2)
