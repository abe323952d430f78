"""De-identification settings and the profile's options, as plain functions (no peers).

What a vendor receives is checked in ``tests/integration/test_deid.py`` (storescp) and the
round trip through ``radbridge serve`` in ``tests/e2e/test_deid_round_trip.py``.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from adapters.deid.dataset import Deidentifier
from broker.model.deid import SECRET_VARIABLE, Deidentify, DeidOption, Pseudonyms
from broker.model.errors import ConfigError
from config.loader import load_settings

SECRET = "unit-test-secret-0123456789"
CONFIG = """\
vendors:
  cloudai:
    product: Cloud lung AI
    transport: {type: dicom, ae_title: CLOUDAI, host: 127.0.0.1, port: 11113}
    deidentify: {profile: basic, options: [retain_patient_characteristics]}
routes:
  - name: chest
    when: {modality: CT}
    send: [cloudai]
    deidentify:
      profile: basic
      options: [clean_descriptors]
      burned_in: mask
      masks: [{modality: US, regions: [[0, 0, 640, 40]]}]
"""


def test_deidentify_without_the_secret_is_a_config_error(tmp_path: Path) -> None:
    """A configuration that de-identifies but has no pseudonym secret in the environment is
    refused at load, naming the file, the line and the variable to set."""
    path = tmp_path / "radbridge.yaml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    [problem] = caught.value.problems
    assert f"{path}:5" in problem and "vendors.cloudai.deidentify" in problem
    assert SECRET_VARIABLE in problem
    with pytest.raises(ConfigError, match="at least 16"):
        load_settings(path, {SECRET_VARIABLE: "short"})


def test_a_route_profile_wins_over_the_vendor_profile(tmp_path: Path) -> None:
    """With the secret set, the route's ``deidentify`` applies to what it sends; another
    route sends with the vendor's own; both say the vendor's results are re-identified."""
    path = tmp_path / "radbridge.yaml"
    path.write_text(CONFIG)
    settings = load_settings(path, {SECRET_VARIABLE: SECRET})
    route = settings.deidentify("cloudai", "chest")
    vendor = settings.deidentify("cloudai", "other-route")
    assert route is not None and vendor is not None
    assert route.describe() == "basic+clean_descriptors"
    assert route.masks[0].regions == [(0, 0, 640, 40)]
    assert vendor.describe() == "basic+retain_patient_characteristics"
    assert settings.deidentifies("cloudai")
    assert settings.privacy.pseudonym_secret is not None
    assert SECRET not in repr(settings)  # never shown


def test_keep_private_needs_a_creator_and_an_odd_group() -> None:
    """``keep_private`` entries name the private creator and the tag with ``xx``."""
    assert Deidentify(keep_private=["GEMS_PARM_01 (0043,xx39)"]).kept_private[0].element == 0x39
    with pytest.raises(ValueError, match="private creator"):
        Deidentify(keep_private=["(0010,0010)"])


def _image(patient_id: str, study_date: str) -> Dataset:
    ds = Dataset()
    ds.PatientID = patient_id
    ds.PatientName = "Wang^XiaoDong=王^小东"
    ds.PatientSex, ds.PatientAge, ds.PatientWeight = "M", "061Y", "72"
    ds.StudyDate, ds.StudyTime, ds.SeriesDate = study_date, "101500", study_date
    ds.StudyDescription = "CT chest for Wang XiaoDong 王小东"
    ds.StudyInstanceUID = f"1.2.3.{patient_id[-1]}"
    ds.AccessionNumber = "A1"
    return ds


def _day(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def test_options_keep_characteristics_shift_dates_and_clean_descriptors() -> None:
    """Retain patient characteristics keeps sex, age and weight; retain longitudinal dates
    moves every date of one patient back by the same days and keeps times; clean
    descriptors keeps the description without the patient's names; without the options
    all of these go."""
    options = [
        DeidOption.RETAIN_PATIENT_CHARACTERISTICS,
        DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
        DeidOption.CLEAN_DESCRIPTORS,
    ]
    keys = Pseudonyms(SECRET)
    first, prior, other = (
        _image("P1", "20260310"),
        _image("P1", "20250310"),
        _image("P2", "20260310"),
    )
    for ds in (first, prior, other):
        Deidentifier(Deidentify(options=options), keys).apply(ds)
    assert (first.PatientSex, first.PatientAge, first.PatientWeight) == ("M", "061Y", "72")
    assert first.StudyTime == "101500"
    assert first.StudyDate != "20260310" and first.StudyDate == first.SeriesDate
    assert (_day(first.StudyDate) - _day(prior.StudyDate)).days == 365  # the interval kept
    assert first.StudyDate != other.StudyDate  # another patient, another shift
    assert first.StudyDescription == "CT chest for"
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    plain = _image("P1", "20260310")
    Deidentifier(Deidentify(), keys).apply(plain)
    assert "PatientAge" not in plain and "StudyDescription" not in plain
    assert plain.StudyDate == "" and plain.PatientSex == ""
    assert plain.PatientID == first.PatientID != other.PatientID


def test_the_file_meta_keeps_no_sender_of_the_hospital() -> None:
    """The file meta radbridge writes as it receives names the modality (Sending and Receiving
    AE Title, Sending Presentation Address, the hospital's network address); a
    de-identified copy keeps none of them, nor a source's, and names its new SOP Instance
    UID."""
    ds = _image("P1", "20260310")
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.SendingApplicationEntityTitle = "CT_ROOM_3"
    ds.file_meta.ReceivingApplicationEntityTitle = "RADBRIDGE"
    ds.file_meta.SendingPresentationAddress = "dicom://10.8.1.7"
    ds.file_meta.SourceApplicationEntityTitle = "CT_ROOM_3"
    ds.file_meta.SourcePresentationAddress = "dicom://10.8.1.7:104"
    ds.file_meta.ReceivingPresentationAddress = "dicom://10.8.0.2:11112"
    Deidentifier(Deidentify(), Pseudonyms(SECRET)).apply(ds)
    kept = {element.keyword for element in ds.file_meta}
    assert kept == {"MediaStorageSOPInstanceUID"}
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID != "1.2.3.4.5"
