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

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from pydicom import dcmread

from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.synthetic import StudyKind, generate_study
from broker.model.domain import InstanceRecord

CANARY_CREATOR = "RADBRIDGE CANARY"
CANARY_GROUP = 0x0011
CANARY_PATIENT_ID = "RB-CANARY"


def make_canary_study(
    folder: Path, *, kind: str, vendor: str, run: int, instances: int | None = None
) -> list[InstanceRecord]:
    """Write the canary study of ``run`` into ``folder``; the index records of its files.
    An unknown ``kind`` raises :class:`~broker.model.errors.DicomError` naming the valid."""
    paths = generate_study(
        cast(StudyKind, kind),
        folder,
        instances=instances,
        patient_id=CANARY_PATIENT_ID,
        patient_name="CANARY^RADBRIDGE",
        accession=f"RBC{run}"[:16],
    )
    tagged: set[str] = set()

    def first_of_series(series_uid: str) -> bool:
        new = series_uid not in tagged
        tagged.add(series_uid)
        return new

    now = datetime.now(UTC)
    records = []
    for path in paths:
        ds = dcmread(path)
        ds.StudyDescription = f"RADBRIDGE CANARY {ds.get('StudyDescription', '')}".strip()[:64]
        block = ds.private_block(CANARY_GROUP, CANARY_CREATOR, create=True)
        block.add_new(0x01, "LO", "TEST")
        block.add_new(0x02, "LO", vendor[:64])
        block.add_new(0x03, "LO", str(run))
        ds.save_as(path, enforce_file_format=True)
        record = instance_record_from_spooled_file(path, first_of_series)
        records.append(
            replace(record, calling_ae="RADBRIDGE", peer_address="canary", received_at=now)
        )
    return records
