"""Put a generated study into a spool and index it, as the listener would have."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.synthetic import generate_study
from broker.store import StudyStore
from broker.store.spool import Spool


def spool_files(engine: Engine, spool: Spool, paths: Iterable[Path]) -> tuple[str, list[Path]]:
    """Move DICOM files into ``spool`` and index them; the last one's study UID and the files."""
    studies = StudyStore(engine)
    placed = []
    study_uid = ""
    for path in paths:
        record = instance_record_from_spooled_file(path)
        final = spool.path_for(record.study_uid, record.series_uid, record.sop_instance_uid)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, final)
        studies.record_instance(replace(record, path=str(final)), 0.0)
        placed.append(final)
        study_uid = record.study_uid
    return study_uid, placed


def spool_study(
    engine: Engine, spool: Spool, kind: Any, out: Path, **options: Any
) -> tuple[str, list[Path]]:
    """Generate a study into ``out``, move it into ``spool``, index it; its UID and files."""
    return spool_files(engine, spool, generate_study(kind, out, **options))
