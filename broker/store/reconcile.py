"""What start-up reconciles between the spool and the index: only what may be unfinished.

The spool is the truth of a study still receiving. A crash between an instance's
rename into the spool and its index commit leaves a complete file the index does
not know; its C-STORE was never answered success, so the sender sends it again,
but the file is indexed at start all the same. A power cut may also lose index
commits that were acknowledged: on SQLite an instance's commit is not synced
while its study is receiving (:meth:`broker.store.studies.StudyStore.record_instances`),
and the file names its sender (its file meta), so it is indexed again as it arrived.
Such a file can only be in a study folder the index does not know (a study whose
commits were all lost) or in a study still receiving (or re-opened by a new
instance: that commit is synced). Start-up therefore lists the spool's study
folders (one entry per study), reads the studies' states (one query), and reads
the files and index rows of those studies only: it does not grow with the stable
studies the spool holds.

A late instance of a study already stable that a crash left unindexed was not
acknowledged (its commit, which re-opens the study, is synced before the answer);
it is indexed when the sender sends it again, and the study's retention purge
removes the study's folder with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from broker.model.domain import StudyState
from broker.store.tables import instances, studies


@dataclass(frozen=True, slots=True)
class Unfinished:
    """Study folders of the spool that may hold files the index does not know."""

    folders: list[Path]
    known_paths: set[str]
    """Index paths of the studies of ``folders`` (the rest of the index is not read)."""

    def files(self) -> Iterator[Path]:
        for folder in self.folders:
            yield from folder.glob("*/*.dcm")


def unfinished(engine: Engine, studies_root: Path, folder_of: Callable[[str], str]) -> Unfinished:
    """The folders under ``studies_root`` unknown to the index or of a study still receiving;
    ``folder_of`` names a study's folder (``Spool`` does)."""
    with engine.connect() as conn:
        rows = conn.execute(select(studies.c.study_uid, studies.c.state)).all()
    known = {folder_of(uid): uid for uid, _ in rows}
    collecting = (StudyState.RECEIVING.value, StudyState.UPDATED.value)
    receiving = {uid for uid, state in rows if state in collecting}
    folders: list[Path] = []
    uids: list[str] = []
    if studies_root.is_dir():
        for entry in studies_root.iterdir():
            uid = known.get(entry.name)
            if uid is None or uid in receiving:
                folders.append(entry)
                if uid is not None:
                    uids.append(uid)
    paths: set[str] = set()
    with engine.connect() as conn:
        for start in range(0, len(uids), 500):
            paths.update(
                conn.execute(
                    select(instances.c.path).where(
                        instances.c.study_uid.in_(uids[start : start + 500])
                    )
                ).scalars()
            )
    return Unfinished(folders, paths)


__all__ = ["Unfinished", "unfinished"]
