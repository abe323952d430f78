"""The durable spool: received objects stored as they came, fsync'd, renamed into place.

Layout::

    SPOOL/tmp/                       objects still arriving (cleared at start)
    SPOOL/studies/STUDY/SERIES/SOP.dcm
    SPOOL/results/STUDY/SOP.dcm      result objects from vendors (never in the study index)
    SPOOL/canary/runRUN/…            canary studies radbridge made (indexed, never routed;
                                     made in .runRUN.…/ and renamed into place whole)
    SPOOL/rendered/RESULT/TARGET.…/  a result's renderings for a target (made once, kept
                                     for its retries; purged with the result's objects)
    SPOOL/priors/job-JOB/            priors fetched from a PACS for a job (never indexed;
                                     removed once sent, or once a vendor pulled them)
    SPOOL/nodes/NODE/tmp/            with ``node.id``: that node's objects still arriving

A backup lists the files of :attr:`Spool.kept` (what the store refers to and a restore
needs); the rest are objects still arriving, which no sender was told are stored, and
priors, copies the PACS keeps that a job not yet sent fetches again.

Several nodes (``node.id``) share one spool: each keeps what it is still receiving,
and its lock, in its own folder under ``nodes/``, and places finished objects in the
shared ``studies/`` and ``results/``, where every node's workers read them by the
paths in the index and retention locks a study's one folder.

A file appears under ``studies/`` only complete: written in ``tmp/``, fsync'd,
renamed, and the directory fsync'd, so neither a crash nor a power cut leaves
half an object where the index could point at it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from broker.model.errors import SpoolError

_SAFE_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def _component(uid: str) -> str:
    """A UID as a file name; anything unusual becomes a stable hash, never a path."""
    if _SAFE_UID.fullmatch(uid) and ".." not in uid:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file and folder under ``root``, and ``root``: a folder built aside is on
    the disk before it is renamed into place whole (renderings, canary studies)."""
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Spool:
    """Where received bytes live; the index stores the paths this class hands out."""

    def __init__(self, root: Path, node: str | None = None) -> None:
        self.root = root
        self.own = root if node is None else root / "nodes" / node
        """This process's part: the whole spool, or its node's folder under ``nodes/``."""
        self.tmp = self.own / "tmp"
        self.studies = root / "studies"
        self.results = root / "results"
        self.priors = root / "priors"
        """Prior studies fetched for jobs (:mod:`broker.model.priors`): never indexed."""
        self.canaries = root / "canary"
        """Canary studies radbridge made (:mod:`broker.model.canary`): indexed, never routed."""
        self.rendered = root / "rendered"
        """Renderings of results for write-back targets, one folder per result id."""
        self._lock_fd: int | None = None

    @property
    def kept(self) -> tuple[Path, ...]:
        """The folders whose files radbridge keeps for the store's rows (a backup lists
        them): received studies, results, canary studies, results' renderings."""
        return (self.studies, self.results, self.canaries, self.rendered)

    def lock(self) -> None:
        """Take the spool (a node: its folder) for this service; a second radbridge on it
        (a node: with the same ``node.id``) fails to start."""
        try:
            self.own.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.own / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SpoolError(
                f"the spool {self.own} is in use by another radbridge process"
            ) from exc
        except OSError as exc:
            raise SpoolError(f"cannot lock the spool {self.own}: {exc.strerror}") from exc

    @property
    def lock_descriptor(self) -> int | None:
        """The descriptor holding the spool's lock (a forked child closes its copy)."""
        return self._lock_fd

    def prepare(self) -> None:
        """Create the folders; remove anything left half-received by a crash."""
        try:
            self.studies.mkdir(parents=True, exist_ok=True)
            self.results.mkdir(parents=True, exist_ok=True)
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir(parents=True)
        except OSError as exc:
            raise SpoolError(f"cannot prepare the spool at {self.root}: {exc}") from exc

    @staticmethod
    def folder_name(study_uid: str) -> str:
        """The name of a study's folder under ``studies/``."""
        return _component(study_uid)

    @contextlib.contextmanager
    def study_lock(self, study_uid: str, *, exclusive: bool = False) -> Iterator[None]:
        """Hold a study's folder: shared while an instance is placed and indexed, exclusive
        while retention purges the study (creating the folder, durably, if needed)."""
        folder = self.studies / _component(study_uid)
        for attempt in range(3):  # a purge may remove the folder between mkdir and open
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise SpoolError(f"the study folder {folder.name} keeps vanishing") from None
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    fsync_dir(self.studies)
                except OSError as exc:
                    raise SpoolError(
                        f"cannot make the study folder {folder.name}: {exc.strerror}"
                    ) from exc
            except OSError as exc:
                raise SpoolError(
                    f"cannot open the study folder {folder.name}: {exc.strerror}"
                ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        return Path(
            os.path.join(
                self.studies,
                _component(study_uid),
                _component(series_uid),
                f"{_component(sop_instance_uid)}.dcm",
            )
        )

    def result_path_for(self, study_uid: str, sop_instance_uid: str) -> Path:
        """Where a result object is kept: apart from the studies, so it is never indexed."""
        return self.results / _component(study_uid) / f"{_component(sop_instance_uid)}.dcm"

    def flush(self, tmp_file: Path, fd: int | None = None) -> None:
        """Force a received file's bytes to disk (before ``place``), through ``fd`` while
        the file is still open."""
        try:
            if fd is not None:
                os.fdatasync(fd)
                return
            fd = os.open(tmp_file, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError(f"cannot sync {tmp_file.name} to disk: {exc.strerror}") from exc

    def place(self, tmp_file: Path, final: Path) -> bool:
        """Rename a flushed file into place, durably; True if it replaced a copy."""
        existed, folders = self.rename_into_place(tmp_file, final)
        self.sync_folders(folders)
        return existed

    def rename_into_place(self, tmp_file: Path, final: Path) -> tuple[bool, list[Path]]:
        """Rename a flushed file into place: whether it replaced a copy, and the folders
        to fsync (:meth:`sync_folders`) before the rename is durable: its own, and the
        parent of each folder it created."""
        try:
            existed = final.exists()
            created = []
            parent = final.parent
            while not parent.exists():
                created.append(parent)
                parent = parent.parent
            if created:
                final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_file, final)
        except OSError as exc:
            raise SpoolError(f"cannot store {final.name} in the spool: {exc.strerror}") from exc
        return existed, [final.parent, *(folder.parent for folder in created)]

    @staticmethod
    def sync_folders(folders: Iterable[Path]) -> None:
        """fsync each folder once (renames into them become durable)."""
        for folder in dict.fromkeys(folders):
            try:
                fsync_dir(folder)
            except OSError as exc:
                raise SpoolError(f"cannot sync the folder {folder.name}: {exc.strerror}") from exc

    def discard(self, path: Path) -> None:
        """Remove a file that must not stay (ignore it being gone already)."""
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SpoolError(f"cannot remove {path}: {exc.strerror}") from exc
