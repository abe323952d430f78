"""Start-up with a full spool: 100,000 stored instances, and what reconciling them costs.

    .venv/bin/python -m tests.bench.startup [--instances N] [--per-study N] [--workdir DIR]

Builds a spool and a SQLite index quickly, without DICOM: one small CT file
written ``--instances`` times under ``studies/STUDY/SERIES/SOP.dcm``, and the
matching study, series and instance rows inserted in bulk (studies stable).
Then adds what a crash leaves: a study folder the index does not know (3
files) and a study still receiving with one file not indexed. It measures:

* the old reconciliation, for comparison: every index path read and every file
  of the spool listed (``known_paths`` + ``studies/*/*/*.dcm``);
* the new one (``adapters.dicom.listener.recover_spool``), which reads only
  the folders of studies unknown or still receiving;
* ``radbridge serve`` from its start to its "radbridge started" line, then
  SIGTERM (medians of ``--repeats``).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import insert

from adapters.dicom.listener import recover_spool
from broker.model.domain import StudyState
from broker.store import StudyStore, make_engine
from broker.store.migrate import migrate
from broker.store.spool import Spool
from broker.store.tables import instances, series, studies
from config.schema import Settings
from tests.peers import free_port
from tests.service import RADBRIDGE, base_config


def _ct(study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = "BENCH"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(512)
    return ds


def _write(spool: Spool, ds: Dataset) -> Path:
    path = spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def build(folder: Path, count: int, per_study: int) -> tuple[Settings, int]:
    """Spool files and index rows for ``count`` instances; the files a crash left (unindexed)."""
    config = base_config(folder, free_port())
    settings = Settings.model_validate(config)
    (folder / "radbridge.yaml").write_text(yaml.safe_dump(config))
    engine = make_engine(settings.database_url())
    migrate(engine)
    spool = Spool(settings.storage.spool)
    spool.prepare()
    # Indexed files are never read at start: one small CT's bytes serve for all of them.
    template = io.BytesIO()
    _ct("1.2.3", "1.2.3.4", "1.2.3.4.5").save_as(template, enforce_file_format=True)
    data = template.getvalue()
    now = datetime.now(UTC) - timedelta(days=1)
    study_rows: list[dict[str, Any]] = []
    series_rows: list[dict[str, Any]] = []
    instance_rows: list[dict[str, Any]] = []
    per_series = max(1, per_study // 4)
    for n in range(count):
        if n % per_study == 0:
            study_uid = generate_uid()
            study_rows.append(
                {
                    "study_uid": study_uid,
                    "state": StudyState.STABLE.value,
                    "revision": 0,
                    "stable_seconds": 10.0,
                    "calling_ae": "CT01",
                    "called_ae": "RADBRIDGE",
                    "peer_address": "127.0.0.1",
                    "first_received_at": now,
                    "last_received_at": now,
                    "due_at": now,
                    "stable_at": now,
                }
            )
        if n % per_series == 0:
            series_uid = generate_uid()
            series_rows.append({"series_uid": series_uid, "study_uid": study_uid, "modality": "CT"})
        sop_uid = generate_uid()
        path = spool.path_for(study_uid, series_uid, sop_uid)
        if n % per_series == 0:
            path.parent.mkdir(parents=True)
        path.write_bytes(data)
        instance_rows.append(
            {
                "sop_instance_uid": sop_uid,
                "sop_class_uid": CTImageStorage,
                "series_uid": series_uid,
                "study_uid": study_uid,
                "transfer_syntax_uid": ExplicitVRLittleEndian,
                "path": str(path),
                "size": len(data),
                "calling_ae": "CT01",
                "called_ae": "RADBRIDGE",
                "peer_address": "127.0.0.1",
                "received_at": now,
                "receive_count": 1,
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(studies), study_rows)
        conn.execute(insert(series), series_rows)
        for start in range(0, len(instance_rows), 10000):
            conn.execute(insert(instances), instance_rows[start : start + 10000])
    # What a crash leaves: a new study's files before its first commit, and a receiving
    # study's last file before its commit.
    unknown_study, unknown_series = generate_uid(), generate_uid()
    for _ in range(3):
        _write(spool, _ct(unknown_study, unknown_series, generate_uid()))
    with engine.begin() as conn:
        conn.execute(
            studies.update()
            .where(studies.c.study_uid == study_rows[0]["study_uid"])
            .values(state=StudyState.RECEIVING.value)
        )
    _write(spool, _ct(study_rows[0]["study_uid"], generate_uid(), generate_uid()))
    engine.dispose()
    return settings, 4


def old_scan(settings: Settings) -> float:
    """Seconds of the reconciliation before: every index path, every spool file."""
    store = StudyStore(make_engine(settings.database_url()))
    started = time.perf_counter()
    known = set(store.known_paths())
    unknown = [
        p for p in Spool(settings.storage.spool).studies.glob("*/*/*.dcm") if str(p) not in known
    ]
    elapsed = time.perf_counter() - started
    assert len(unknown) == 4, len(unknown)
    return elapsed


def new_scan(settings: Settings, expected: int) -> float:
    store = StudyStore(make_engine(settings.database_url()))
    started = time.perf_counter()
    added = recover_spool(Spool(settings.storage.spool), store, settings)
    elapsed = time.perf_counter() - started
    assert added == expected, added
    return elapsed


def serve_start(folder: Path) -> float:
    """Seconds from ``radbridge serve`` starting until it logs that it started."""
    log_path = folder / "serve.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    started = time.perf_counter()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [RADBRIDGE, "serve", "-c", str(folder / "radbridge.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while True:
            with log_path.open("rb") as f:
                f.seek(offset)
                if b"radbridge started" in f.read():
                    return time.perf_counter() - started
            if process.poll() is not None or time.perf_counter() - started > 300:
                raise RuntimeError(log_path.read_text()[-2000:])
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--per-study", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rb-startup-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        settings, leftovers = build(folder, args.instances, args.per_study)
        print(
            f"built {args.instances} instances in {args.instances // args.per_study} studies "
            f"in {time.perf_counter() - started:.1f} s"
        )
        old = old_scan(settings)
        new = new_scan(settings, leftovers)
        print(f"reconcile, before (whole spool and index): {old:.3f} s")
        print(f"reconcile, now (unknown and receiving studies): {new:.3f} s")
        os.sync()
        starts = [serve_start(folder) for _ in range(args.repeats)]
        print(
            f"radbridge serve until started: median {statistics.median(starts):.2f} s "
            f"({', '.join(f'{s:.2f}' for s in starts)})"
        )


if __name__ == "__main__":
    main()
