"""Group commit on SQLite and PostgreSQL: instances of several associations durable together."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from broker.model.domain import Patient
from broker.model.errors import SpoolError
from broker.model.identity import IdentityConflictError
from broker.store import StudyStore
from broker.store.engine import make_engine
from broker.store.group_commit import GroupCommit
from broker.store.migrate import migrate
from broker.store.spool import Spool
from tests.integration.test_store import SERIES_A, SERIES_B, STUDY, T0, _rec, engine, store
from tests.peers import wait_until

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


def test_one_unsyncable_folder_among_concurrent_instances_fails_only_its_instance(
    store: StudyStore, tmp_path: Path
) -> None:
    """Three associations storing at once, the middle one's folder gone (it cannot be
    fsync'd): that one fails with SpoolError and is not indexed; the other two are."""
    commits = GroupCommit(store)
    folders = {"12.1": tmp_path, "12.2": tmp_path / "gone", "12.3": tmp_path}

    def association(sop: str) -> str:
        try:
            commits.record(
                _rec(sop, series_uid=SERIES_B if sop == "12.3" else SERIES_A), 10.0, [folders[sop]]
            )
        except SpoolError:
            return "failed"
        return "indexed"

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcome = dict(zip(folders, pool.map(association, folders), strict=True))
    assert outcome == {"12.1": "indexed", "12.2": "failed", "12.3": "indexed"}
    assert sorted(Path(p).stem for p in store.instance_paths(STUDY)) == ["12.1", "12.3"]


def test_instances_arriving_while_another_process_writes_are_committed_together(
    tmp_path: Path,
) -> None:
    """SQLite: while another process holds the database's writer lock (a second listener
    process committing), the instances of four associations wait, and the first of them
    commits all four in one transaction once the lock is free."""
    engine = make_engine(f"sqlite:///{tmp_path / 'radbridge.db'}")
    migrate(engine)
    store = StudyStore(engine)
    commits = GroupCommit(store)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "radbridge.db.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with ThreadPoolExecutor(max_workers=4) as pool:
            stored = [
                pool.submit(commits.record, _rec(f"13.{i}", path=f"/spool/13.{i}.dcm"), 10.0, [])
                for i in range(4)
            ]
            wait_until(lambda: len(commits._waiting) == 4, timeout=10)
            assert commits.groups == 0  # nothing could be committed yet
            assert holder.stdin is not None
            holder.stdin.write("release\n")
            holder.stdin.flush()
            assert all(not f.result(timeout=30).replaced for f in stored)
    finally:
        holder.kill()
        holder.wait()
        engine.dispose()
    assert (commits.groups, commits.instances) == (1, 4)
    assert len(store.instance_paths(STUDY)) == 4


#: Another process holding the writer lock file until told on stdin.
HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""
