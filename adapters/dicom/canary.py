"""A canary study: a synthetic study (:mod:`adapters.dicom.synthetic`) marked as a test,
written into the spool's canary folder for one vendor (:mod:`broker.runtime.canary`).

Every instance carries the private block ``RADBRIDGE CANARY`` in group 0x0011:

- (0011,0010) LO ``RADBRIDGE CANARY``: the private creator;
- (0011,1001) LO ``TEST``: this is a test study, not a patient's;
- (0011,1002) LO the vendor it was made for;
- (0011,1003) LO the canary run's id.

Its patient is ``RB-CANARY`` (``CANARY^RADBRIDGE``), its accession number ``RBC`` and the
run's id, and its study description starts with ``RADBRIDGE CANARY``, so that a person who
sees it on the vendor's side knows what it is.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from pydicom import dcmread

from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.synthetic import StudyKind, generate_study
from broker.model.domain import InstanceRecord
from broker.store.spool import fsync_dir, sync_tree

CANARY_CREATOR = "RADBRIDGE CANARY"
CANARY_GROUP = 0x0011
CANARY_PATIENT_ID = "RB-CANARY"


def make_canary_study(
    folder: Path, *, kind: str, vendor: str, run: int, instances: int | None = None
) -> list[InstanceRecord]:
    """Write the canary study of ``run`` into ``folder``; the index records of its files.
    An unknown ``kind`` raises :class:`~broker.model.errors.DicomError` naming the valid.

    ``folder`` appears whole or not at all, as a result's renderings do
    (:mod:`adapters.writeback.rendering`): the study is made and marked in a folder beside
    it whose name starts with a dot (which a backup skips), every file and folder fsync'd,
    then renamed into place and its parent fsync'd. A crash leaves at most that dotted
    folder, never a torn file under the name the index will hold."""
    parent = folder.parent
    if not parent.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(parent.parent)
    scratch = parent / f".{folder.name}.{secrets.token_hex(4)}"
    scratch.mkdir()
    try:
        made = _make_marked(scratch, kind=kind, vendor=vendor, run=run, instances=instances)
        sync_tree(scratch)
        scratch.rename(folder)
        fsync_dir(parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # gone once renamed
    now = datetime.now(UTC)
    tagged: set[str] = set()

    def first_of_series(series_uid: str) -> bool:
        new = series_uid not in tagged
        tagged.add(series_uid)
        return new

    records = []
    for path in made:
        placed = folder / path.relative_to(scratch)
        record = instance_record_from_spooled_file(placed, first_of_series)
        records.append(
            replace(record, calling_ae="RADBRIDGE", peer_address="canary", received_at=now)
        )
    return records


def _make_marked(
    folder: Path, *, kind: str, vendor: str, run: int, instances: int | None
) -> list[Path]:
    """The synthetic study in ``folder``, each file marked as the canary."""
    paths = generate_study(
        cast(StudyKind, kind),
        folder,
        instances=instances,
        patient_id=CANARY_PATIENT_ID,
        patient_name="CANARY^RADBRIDGE",
        accession=f"RBC{run}"[:16],
    )
    for path in paths:
        ds = dcmread(path)
        ds.StudyDescription = f"RADBRIDGE CANARY {ds.get('StudyDescription', '')}".strip()[:64]
        block = ds.private_block(CANARY_GROUP, CANARY_CREATOR, create=True)
        block.add_new(0x01, "LO", "TEST")
        block.add_new(0x02, "LO", vendor[:64])
        block.add_new(0x03, "LO", str(run))
        ds.save_as(path, enforce_file_format=True)
    return paths
