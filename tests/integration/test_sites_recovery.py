"""Sites after a crash: a spooled instance the index missed joins its study's site; one of a
study the store never knew joins its sender's site when its file meta names the sender, and
is left for its sender to send again when it names none; in a real SQLite store and spool."""

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


def _township(tmp_path: Path) -> tuple[Settings, StudyStore, Spool]:
    """Settings with township A's site (sender TWA_CT from 10.8.1.0/24), a migrated SQLite
    store and a spool in ``tmp_path``."""
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
    return settings, StudyStore(engine), Spool(tmp_path / "spool")


def test_recovered_instances_keep_their_studys_site(tmp_path: Path) -> None:
    """The second instance of site A's study, spooled but not indexed, is indexed into the
    study (still site A's); a file of an unknown study is not indexed."""
    settings, store, spool = _township(tmp_path)
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


def test_an_unknown_studys_file_naming_its_sender_joins_the_senders_site(tmp_path: Path) -> None:
    """A spooled file of a study the index does not know (a power cut lost its unsynced
    commit) whose file meta names its sender, as radbridge writes it, is indexed with that
    sender's site, called AE title and address."""
    settings, store, spool = _township(tmp_path)
    [file] = generate_study("ct_chest", tmp_path / "a", instances=1, rows=16, columns=16)
    ds = pydicom.dcmread(file)
    ds.file_meta.SendingApplicationEntityTitle = "TWA_CT"
    ds.file_meta.ReceivingApplicationEntityTitle = "RADBRIDGE"
    ds.file_meta.SendingPresentationAddress = "dicom://10.8.1.7"
    ds.save_as(file, enforce_file_format=True)
    _spool(spool, file)

    assert recover_spool(spool, store, settings) == 1
    study = store.get_study(str(ds.StudyInstanceUID))
    assert (study.site, study.calling_ae, study.called_ae, study.peer_address) == (
        "township-a",
        "TWA_CT",
        "RADBRIDGE",
        "10.8.1.7",
    )
