"""Sites after a crash: a spooled instance the index missed joins its study's site, and one of
a study the store never knew is left for its sender to send again (it was never
acknowledged); in a real SQLite store and spool."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from adapters.dicom.listener import recover_spool
from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.synthetic import generate_study
from broker.model.errors import NotFoundError
from broker.store import StudyStore, make_engine
from broker.store.migrate import migrate
from broker.store.spool import Spool
from config.schema import Settings


def _spool(spool: Spool, file: Path) -> Path:
    ds = pydicom.dcmread(file, stop_before_pixels=True)
    final = spool.path_for(
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, final)
    return final


def test_recovered_instances_keep_their_studys_site(tmp_path: Path) -> None:
    """The second instance of site A's study, spooled but not indexed, is indexed into the
    study (still site A's); a file of an unknown study is not indexed."""
    settings = Settings.model_validate(
        {
            "storage": {"spool": str(tmp_path / "spool"), "database": "sqlite:///x.db"},
            "sites": {
                "township-a": {
                    "name": "A",
                    "senders": [{"ae_title": "TWA_CT", "host": "10.8.1.0/24"}],
                }
            },
        }
    )
    engine = make_engine(f"sqlite:///{tmp_path}/radbridge.db")
    migrate(engine)
    store, spool = StudyStore(engine), Spool(tmp_path / "spool")
    first, second = generate_study("ct_chest", tmp_path / "a", instances=2, rows=16, columns=16)
    [stray] = generate_study("ct_chest", tmp_path / "x", instances=1, rows=16, columns=16)
    indexed = instance_record_from_spooled_file(_spool(spool, first))
    store.record_instance(replace(indexed, site="township-a"), 10.0)
    _spool(spool, second)
    stray_uid = str(pydicom.dcmread(_spool(spool, stray), stop_before_pixels=True).StudyInstanceUID)

    assert recover_spool(spool, store, settings) == 1
    study = store.get_study(indexed.study_uid)
    assert (study.site, study.instance_count) == ("township-a", 2)
    with pytest.raises(NotFoundError):
        store.get_study(stray_uid)
