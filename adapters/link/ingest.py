"""A hub's staging of transfers, and their commit: the instances in, all or nothing.

Parts wait in the spool's ``transfers/ID/`` folder, one file per part
(``INDEX.part``), each written in ``tmp/``, fsync'd and renamed into place, so a
part the hub acknowledged is whole. The commit (:func:`commit`), under the
transfer's locks (the staging folder's file lock, and with several hub nodes on
PostgreSQL the store's advisory lock, :meth:`broker.store.transfers.TransferStore.lock`):

1. every part is there and matches its checksum; decompressed in order, every
   instance and the whole stream match theirs; every instance is a Part 10 file
   of the manifest's study with the manifest's SOP Instance UID;
2. the instances are fsync'd and renamed into the study's spool folder, as a
   C-STORE's are, and indexed in **one** transaction that also marks the
   transfer committed: the study's new instances are seen together, or none;
3. the staged parts go, and the study is reported for completion (as an
   association's end reports its studies).

A failure before step 2's transaction leaves the index as it was (files placed
for it are removed again); a crash between the renames and that transaction
leaves files the next start's spool recovery leaves to the site's retry, which
commits the transfer again. Instances are attributed to the transfer's site.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from adapters.dicom.mapping import instance_record_from_part10
from adapters.link.parts import InstanceEntry, Manifest, TransferError, sha256, unpack
from broker.model.domain import InstanceRecord
from broker.model.errors import InvalidDicomError, SpoolError
from broker.model.logging import get_logger
from broker.store import StudyStore
from broker.store.spool import Spool, fsync_dir
from broker.store.transfers import TransferLockedError, TransferStore

LOG = get_logger("radbridge.link.hub")
_PART = re.compile(r"^(\d{1,7})\.part$")
_ID = re.compile(r"^[0-9a-f]{32}$")
#: Lock files the transfers share (a commit holds one while it runs).
LOCK_STRIPES = 64
#: The longest time between two looks for abandoned transfers.
PURGE_CHECK_SECONDS = 300.0


class MissingPartsError(TransferError):
    """The commit came before every part (or a staged part was corrupt and is dropped)."""

    def __init__(self, missing: Iterable[int]) -> None:
        self.missing = sorted(missing)
        shown = ", ".join(str(i) for i in self.missing[:10])
        more = ", …" if len(self.missing) > 10 else ""
        super().__init__(f"{len(self.missing)} part(s) missing: {shown}{more}")


class Staging:
    """The spool's ``transfers/`` folder: a folder per open transfer, a file per part."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.root = spool.root / "transfers"

    def folder(self, transfer_id: str) -> Path:
        if not _ID.fullmatch(transfer_id):
            raise TransferError(f"not a transfer id: {transfer_id[:40]!r}")
        return self.root / transfer_id

    def held(self, transfer_id: str) -> list[int]:
        """The indexes of the parts staged for the transfer."""
        folder = self.folder(transfer_id)
        if not folder.is_dir():
            return []
        found = (_PART.fullmatch(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m is not None)

    def part_path(self, transfer_id: str, index: int) -> Path:
        return self.folder(transfer_id) / f"{index}.part"

    def new_part(self, transfer_id: str, index: int) -> Path:
        """A file in the spool's ``tmp/`` for a part on its way in."""
        self.spool.tmp.mkdir(parents=True, exist_ok=True)
        return self.spool.tmp / f"transfer-{self.folder(transfer_id).name}-{index}-{os.getpid()}"

    def keep(self, transfer_id: str, index: int, written: Path) -> None:
        """A received part, fsync'd, into place (its folder made durably the first time)."""
        folder = self.folder(transfer_id)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)
        self.spool.flush(written)
        self.spool.place(written, self.part_path(transfer_id, index))

    def read(self, transfer_id: str, index: int) -> bytes:
        try:
            return self.part_path(transfer_id, index).read_bytes()
        except FileNotFoundError:
            raise MissingPartsError([index]) from None
        except OSError as exc:
            raise SpoolError(f"cannot read part {index} of a transfer: {exc.strerror}") from exc

    def remove(self, transfer_id: str) -> None:
        shutil.rmtree(self.folder(transfer_id), ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, transfer_id: str) -> Iterator[None]:
        """Hold the transfer: one commit (or purge) at a time, in every process of this host
        (one of :data:`LOCK_STRIPES` lock files, never removed, so no lock is lost)."""
        self.root.mkdir(parents=True, exist_ok=True)
        stripe = int(self.folder(transfer_id).name[:4], 16) % LOCK_STRIPES
        fd = os.open(self.root / f".lock-{stripe}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class Committed:
    """What a commit indexed."""

    study_uid: str
    instances: int
    replaced: int


def commit(
    transfer_id: str,
    site: str,
    manifest: Manifest,
    *,
    staging: Staging,
    store: StudyStore,
    stable_seconds: float,
    peer: str,
    evidence: Callable[[list[str]], object] | None = None,
) -> Committed:
    """Check, place and index a transfer's instances, all or nothing (see the module
    docstring); :class:`TransferError` (or :class:`MissingPartsError`) when the parts do
    not make the study the manifest describes, IdentityConflictError when the hub holds
    the study for another patient or site."""
    spool = staging.spool
    held = set(staging.held(transfer_id))
    missing = {p.index for p in manifest.parts} - held
    if missing:
        raise MissingPartsError(missing)
    work = spool.tmp / f"commit-{transfer_id}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    placed: list[Path] = []
    try:
        files = _unpacked(transfer_id, manifest, staging, work)
        now = datetime.now(UTC)
        records = [
            _record(path, entry, manifest, site=site, peer=peer, now=now, store=store)
            for path, entry in zip(files, manifest.instances, strict=True)
        ]
        for path in files:
            spool.flush(path)
        finals = [spool.path_for(r.study_uid, r.series_uid, r.sop_instance_uid) for r in records]
        for record, final in zip(records, finals, strict=True):
            if final.exists():  # a copy held: refuse another patient before it is replaced
                store.check_instance(record)
        with spool.study_lock(manifest.study_instance_uid):  # a retention purge waits
            for path, final in zip(files, finals, strict=True):
                if not spool.place(path, final):
                    placed.append(final)
            indexed = store.record_study(
                [replace(r, path=str(f)) for r, f in zip(records, finals, strict=True)],
                stable_seconds,
                within=lambda conn: TransferStore.mark_committed(conn, transfer_id, now),
            )
        placed.clear()  # indexed: they stay
    finally:
        for final in placed:
            with contextlib.suppress(SpoolError):
                spool.discard(final)
        shutil.rmtree(work, ignore_errors=True)
    for done in indexed:
        if done.previous_path:
            with contextlib.suppress(SpoolError):
                spool.discard(Path(done.previous_path))
    staging.remove(transfer_id)
    if evidence is not None:
        try:
            evidence([manifest.study_instance_uid])
        except Exception as exc:  # the quiet timer still closes it
            LOG.warning("study not reported for completion", error=str(exc))
    return Committed(
        study_uid=manifest.study_instance_uid,
        instances=len(indexed),
        replaced=sum(1 for i in indexed if i.replaced),
    )


def _unpacked(transfer_id: str, manifest: Manifest, staging: Staging, work: Path) -> list[Path]:
    """The instances, decompressed and checked, as files in ``work``; a staged part that
    fails its checksum is dropped (the site sends it again)."""
    files: list[Path] = []

    def open_instance(number: int, _entry: InstanceEntry) -> BinaryIO:
        files.append(work / f"{number}.dcm")
        return files[-1].open("wb")

    def read_part(index: int) -> bytes:
        data = staging.read(transfer_id, index)
        if manifest.parts[index].sha256 != sha256(data):
            staging.part_path(transfer_id, index).unlink(missing_ok=True)
            raise MissingPartsError([index])
        return data

    unpack(manifest, read_part, open_instance)
    return files


def _record(
    path: Path,
    entry: InstanceEntry,
    manifest: Manifest,
    *,
    site: str,
    peer: str,
    now: datetime,
    store: StudyStore,
) -> InstanceRecord:
    try:
        record = instance_record_from_part10(
            path,
            calling_ae="",
            called_ae="",
            peer_address=peer,
            received_at=now,
            wants_series_tags=store.wants_series_tags,
            site=site,
        )
    except InvalidDicomError as exc:
        raise TransferError(f"an instance cannot be read as DICOM: {exc}") from exc
    if record.sop_instance_uid != entry.sop_instance_uid:
        raise TransferError("an instance's SOP Instance UID is not the one its manifest names")
    if record.study_uid != manifest.study_instance_uid:
        raise TransferError("an instance is of another study than the transfer's")
    return record


class AbandonedTransfers:
    """The service timer's task at a hub: :func:`purge_abandoned` every ``abandon_after /
    10`` (1 s to :data:`PURGE_CHECK_SECONDS`), so abandoned parts go whether or not another
    transfer opens (``abandon_after`` read from the configuration in force each time)."""

    def __init__(
        self, transfers: TransferStore, staging: Staging, abandon_after: Callable[[], float]
    ) -> None:
        self.transfers = transfers
        self.staging = staging
        self.abandon_after = abandon_after
        self._next: datetime | None = None

    def __call__(self, now: datetime) -> datetime | None:
        if self._next is None or now >= self._next:
            after = self.abandon_after()
            purge_abandoned(self.transfers, self.staging, after, now)
            every = min(max(after / 10, 1.0), PURGE_CHECK_SECONDS)
            self._next = now + timedelta(seconds=every)
        return self._next


def purge_abandoned(
    transfers: TransferStore, staging: Staging, abandon_after: float, now: datetime | None = None
) -> int:
    """Remove the staged parts of transfers no part came for in ``abandon_after`` seconds;
    how many were purged."""
    now = now or datetime.now(UTC)
    before = now - timedelta(seconds=abandon_after)
    purged = 0
    for transfer in transfers.abandoned(before):
        try:
            with staging.lock(transfer.id), transfers.lock(transfer.id, wait=0):
                if transfers.mark_purged(transfer.id, before, now):
                    staging.remove(transfer.id)
                    purged += 1
        except TransferLockedError:  # another node commits it: not abandoned
            continue
    if purged:
        LOG.info("abandoned transfers purged", count=purged)
    return purged
