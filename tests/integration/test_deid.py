"""De-identification for a vendor, checked in what the vendor's dcmtk ``storescp`` receives.

The job engine sends spooled studies (a CT study of a patient with a Chinese name and
extra identifying attributes in nested sequences, private attributes, a 10-frame
secondary capture, images with burned-in text) to vendors whose profile is PS3.15
Annex E Basic: every attribute the standard's table (as ``dicom-anonymizer`` carries
it) removes, empties or replaces is checked in the received files, the identifying
values are searched for in their bytes, ``dciodvfy`` finds no new error, pixels are
masked where configured, and the spool keeps the original.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Engine

from adapters.deid.reidentify import reidentify_file
from adapters.dicom.synthetic import encoding_variants, generate_study
from adapters.harness.products import ProductKind, make_sc, make_seg
from adapters.results.sr import SourceStudy
from broker.engine.bus import Bus
from broker.engine.dispatch import JobWorker
from broker.engine.plan import FixedPlan, FixedPlans, VendorSpec
from broker.model.deid import Deidentify
from broker.model.jobs import Job, JobState
from broker.model.vendor import TRANSPORTS
from broker.store import JobStore, StudyStore
from broker.store.audit import AuditLog
from broker.store.pseudonyms import PseudonymStore
from broker.store.spool import Spool
from tests import cli_fork
from tests.databases import empty_database
from tests.peers import LOOPBACK, StoreSCP, ensure_debian_packages
from tests.spooling import spool_files

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("deid_storescp")]

SECRET = f"test-secret-{uuid.uuid4().hex}"
CHINESE = "Wang^XiaoDong=王^小东"
KEPT_PRIVATE = "RADBRIDGE SYNTH 1.0 (0009,xx01)"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
BASIC = Deidentify(keep_private=[KEPT_PRIVATE])
PROFILES = {
    "cloudai": BASIC,
    "cloudai2": BASIC,
    "sono": Deidentify.model_validate(
        {
            "burned_in": "mask",
            "masks": [{"modality": "US", "manufacturer": "Acme", "regions": [[0, 0, 64, 10]]}],
        }
    ),
    "sonorefuse": Deidentify(),
}


@dataclass
class World:
    engine: Engine
    spool: Spool
    folder: Path
    worker: JobWorker
    scps: dict[str, StoreSCP]
    studies: dict[str, tuple[str, list[Path]]]
    sent: dict[tuple[str, str], Job] = field(default_factory=dict)

    def send(self, study: str, vendor: str) -> Job:
        """Create the job of ``study`` for ``vendor`` and send it, once (tests of this module
        may run in any order, or apart); the job after its attempt."""
        if (study, vendor) not in self.sent:
            jobs = JobStore(self.engine)
            created = jobs.create(self.studies[study][0], vendor, route="deid", max_attempts=1)
            done = self.worker.run_once(vendor)
            assert done is not None and done.id == created.job.id
            self.sent[(study, vendor)] = jobs.get(done.id)
        return self.sent[(study, vendor)]

    def received(self, vendor: str) -> dict[str, Path]:
        """The files ``vendor``'s storescp holds, by SOP Instance UID."""
        files = [p for p in self.scps[vendor].folder.iterdir() if p.is_file()]
        return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}

    def copy_of(self, vendor: str, original: Path) -> Path:
        """The file ``vendor`` received for the spooled ``original`` (found through the
        pseudonym table), checked to carry the original's pixel data unchanged."""
        received = self.received(vendor)
        table = PseudonymStore(self.engine).lookup(list(received))
        source = dcmread(original)
        [copy] = [
            path
            for sop, path in received.items()
            if sop in table and table[sop].original == source.SOPInstanceUID
        ]
        assert dcmread(copy).PixelData == source.PixelData
        return copy


def _identifying(ds: Dataset, frame_of_reference: str) -> None:
    """Add identifying attributes of the kinds a hospital's objects carry, nested ones too."""
    ds.OtherPatientIDs = "OTHER-4711"
    ds.PatientAddress = "88 Renmin Road, Shanghai"
    ds.PatientTelephoneNumbers = "+86-21-5555-0101"
    ds.PatientBirthDate = "19610301"
    ds.OperatorsName = "LI^TECHNICIAN"
    ds.PerformingPhysicianName = "ZHAO^DOCTOR"
    ds.StudyID = "SID-991"
    request = Dataset()
    request.AccessionNumber = ds.AccessionNumber
    request.RequestedProcedureID = "RP-5521"
    request.ScheduledProcedureStepID = "SPS-5521"
    ds.RequestAttributesSequence = DicomSequence([request])
    person = Dataset()
    person.PersonName = "QIAN^NURSE"
    person.PersonIdentificationCodeSequence = DicomSequence()
    ds.VerifyingObserverSequence = DicomSequence([person])
    ds.FrameOfReferenceUID = frame_of_reference


def _ultrasound(path: Path, *, manufacturer: str) -> Path:
    """A 2-frame 64x64 ultrasound with burned-in text (BurnedInAnnotation YES), all 200s."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "CHEN^MEI", "US-PAT-7", "USACC7"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "US", manufacturer, "Sono 1"
    ds.BurnedInAnnotation = "YES"
    ds.InstanceNumber = 1
    pixels = np.full((2, 64, 64), 200, dtype=np.uint8)
    ds.set_pixel_data(pixels, "MONOCHROME2", 8, generate_instance_uid=False)
    ds.NumberOfFrames = 2
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = "33.3"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A SQLite store and spool holding the studies, a storescp per vendor, a job worker
    whose plan de-identifies for every vendor."""
    folder = tmp_path_factory.mktemp("deid")
    with ExitStack() as stack:
        engine = stack.enter_context(empty_database("sqlite", folder))
        spool = Spool(folder / "spool")
        spool.prepare()
        scps = {
            name: stack.enter_context(StoreSCP(folder / name, ae_title=name.upper()))
            for name in PROFILES
        }
        specs = {
            name: VendorSpec(
                name,
                "dicom",
                {"ae_title": name.upper(), "host": LOOPBACK, "port": scp.port, "timeout": 10},
                max_attempts=1,
            )
            for name, scp in scps.items()
        }
        transports = {n: TRANSPORTS.get("dicom").from_params(n, s.params) for n, s in specs.items()}
        plan = FixedPlan(
            vendors=specs,
            transports=transports,
            deidentified=dict(PROFILES),
            pseudonym_secret=SECRET,
        )
        bus = Bus("memory://", prefix=f"deid-{uuid.uuid4().hex[:8]}")
        stack.callback(bus.close)
        worker = JobWorker(engine, bus, FixedPlans(plan), scratch=folder / "scratch")
        made = folder / "made"
        ct = generate_study(
            "ct_head",
            made / "ct",
            instances=3,
            rows=32,
            columns=32,
            patient_id="SH-0042",
            patient_name=CHINESE,
            accession="A20260001",
            charset="GB18030",
        )
        frame_of_reference = generate_uid()
        for n, path in enumerate(ct):
            ds = dcmread(path)
            _identifying(ds, frame_of_reference)
            if n == 2:  # a reference to another instance of the study, nested
                source = Dataset()
                source.ReferencedSOPClassUID = ds.SOPClassUID
                source.ReferencedSOPInstanceUID = dcmread(ct[0]).SOPInstanceUID
                ds.SourceImageSequence = DicomSequence([source])
            ds.save_as(path, enforce_file_format=True)
        variants = {v.name: v.path for v in encoding_variants(made / "variants")}
        (made / "us").mkdir()
        studies = {
            "ct": spool_files(engine, spool, ct),
            "private": spool_files(engine, spool, [variants["private_sequences"]]),
            "multiframe": spool_files(engine, spool, [variants["multiframe"]]),
            "chinese": spool_files(engine, spool, [variants["charset_gb18030"]]),
            "us": spool_files(
                engine, spool, [_ultrasound(made / "us" / "a.dcm", manufacturer="Acme")]
            ),
            "us_other": spool_files(
                engine, spool, [_ultrasound(made / "us" / "b.dcm", manufacturer="Other")]
            ),
        }
        yield World(engine, spool, folder, worker, scps, studies)


def _table() -> dict[int, str]:
    """Tag → the Basic profile's action in PS3.15 Table E.1-1 (``dicom-anonymizer``'s copy)."""
    table = dicom_anonymization_database_selector("dicomfields_2026c")
    return {
        t[0] << 16 | t[1]: category
        for category, tags in table.items()
        if category != "ALL_TAGS"
        for t in tags
        if len(t) == 2
    }


def _check_basic(original: Dataset, sent: Dataset) -> list[str]:
    """What in ``sent`` breaks the Basic profile's action for an attribute of ``original``."""
    problems = []
    pseudonymized = {"PatientID", "PatientName", "AccessionNumber"}
    for tag, category in _table().items():
        if tag not in original or tag >> 16 == 0x0002:
            continue
        before = original[tag]
        after = sent.get(tag)
        name = before.keyword
        if name in pseudonymized:
            if after is None or not after.value or str(after.value) == str(before.value):
                problems.append(f"{name} not replaced by a pseudonym")
        elif category == "X_TAGS":
            if after is not None:
                problems.append(f"{name} (X) still present")
        elif category in ("Z_TAGS", "X_Z_TAGS"):
            if after is not None and after.value not in ("", None, b"") and len(after.value):
                problems.append(f"{name} ({category}) not empty: {after.value!r}")
        elif category == "U_TAGS":
            if after is None or str(after.value) == str(before.value):
                problems.append(f"{name} (U) not replaced")
            elif not str(after.value).startswith("2.25."):
                problems.append(f"{name} (U) is {after.value}, not a 2.25 UID")
        elif (
            category != "X_Z_U_STAR_TAGS"
            and before.VR != "SQ"
            and after is not None
            and before.value
            and str(after.value) == str(before.value)
        ):
            problems.append(f"{name} ({category}) kept its value")
    for elem in sent.iterall():
        if elem.tag.is_private and not (
            elem.tag.group == 0x0009 and elem.tag.element in (0x10, 0x1001)
        ):
            problems.append(f"private {elem.tag} kept")
    return problems


def _identifying_bytes(ds: Dataset) -> list[bytes]:
    """Values of ``ds`` that must not be found anywhere in a de-identified copy's bytes."""
    texts = [
        str(ds.PatientID),
        str(ds.AccessionNumber),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
    ]
    for keyword in ("OtherPatientIDs", "PatientAddress", "PatientTelephoneNumbers", "StudyID"):
        if keyword in ds:
            texts.append(str(ds.data_element(keyword).value))
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.keyword in ("ReferencedSOPInstanceUID", "FrameOfReferenceUID"):
            texts.append(str(elem.value))
    found = [t.encode() for t in texts if len(t) >= 4]
    name = str(ds.PatientName)
    for part in name.replace("=", "^").split("^"):
        if len(part) >= 2:
            found += [part.encode("utf-8"), part.encode("gb18030")]
    return found


def _dciodvfy_errors(path: Path) -> set[str]:
    ensure_debian_packages("dciodvfy")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return {line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}


def test_what_the_vendor_receives_carries_nothing_the_basic_profile_removes(world: World) -> None:
    """Every attribute Table E.1-1 removes, empties or replaces is so in what storescp received
    (a CT study with a Chinese name and nested identifying sequences, private attributes, a
    10-frame image, a GB18030 study); no identifying value is anywhere in the received bytes;
    only the allow-listed private attribute is kept; the spool keeps the originals."""
    studies = ("ct", "private", "multiframe", "chinese")
    for study in studies:
        job = world.send(study, "cloudai")
        assert job.state is JobState.AWAITING_RESULT, job.last_error
    received = world.received("cloudai")
    assert len(received) == 6
    problems = []
    sent_by_original: dict[str, Dataset] = {}
    for path in [p for study in studies for p in world.studies[study][1]]:
        original = dcmread(path)
        copy = world.copy_of("cloudai", path)
        sent = dcmread(copy)
        sent_by_original[str(original.SOPInstanceUID)] = sent
        problems += [f"{path.name}: {p}" for p in _check_basic(original, sent)]
        raw = copy.read_bytes()
        problems += [
            f"{path.name}: {value!r} found in the received file"
            for value in _identifying_bytes(original)
            if value in raw
        ]
        assert sent.PatientIdentityRemoved == "YES"
        assert "113100" in [c.CodeValue for c in sent.DeidentificationMethodCodeSequence]
    assert problems == []
    private = sent_by_original[str(dcmread(world.studies["private"][1][0]).SOPInstanceUID)]
    assert private[0x00091001].value == "outer private value"  # allow-listed
    # the nested reference points at the pseudonym of the instance it references
    ct = [dcmread(p) for p in world.studies["ct"][1]]
    first = sent_by_original[str(ct[0].SOPInstanceUID)]
    third = sent_by_original[str(ct[2].SOPInstanceUID)]
    assert third.SourceImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    multiframe = sent_by_original[str(dcmread(world.studies["multiframe"][1][0]).SOPInstanceUID)]
    assert int(multiframe.NumberOfFrames) == 10
    assert multiframe.PixelData == dcmread(world.studies["multiframe"][1][0]).PixelData


def test_pseudonyms_are_stable_and_never_shared_and_recorded(world: World) -> None:
    """The same study de-identified again (for a second vendor) gets the same pseudonyms;
    different patients never share one; every pseudonym sent is in the store's table."""
    for study in ("ct", "private", "multiframe", "chinese"):
        job = world.send(study, "cloudai")
        assert job.state is JobState.AWAITING_RESULT, job.last_error
    for study in ("ct", "private", "chinese"):
        job = world.send(study, "cloudai2")
        assert job.state is JobState.AWAITING_RESULT, job.last_error
    first, second = world.received("cloudai"), world.received("cloudai2")
    assert set(second) <= set(first)  # same SOP Instance UIDs
    for sop, path in second.items():
        a, b = dcmread(first[sop], stop_before_pixels=True), dcmread(path, stop_before_pixels=True)
        assert (a.StudyInstanceUID, a.SeriesInstanceUID, a.PatientID, a.AccessionNumber) == (
            b.StudyInstanceUID,
            b.SeriesInstanceUID,
            b.PatientID,
            b.AccessionNumber,
        )
    patients: dict[str, str] = {}
    for study in ("ct", "private", "multiframe", "chinese"):
        original = dcmread(world.studies[study][1][0], stop_before_pixels=True)
        sent = dcmread(world.copy_of("cloudai", world.studies[study][1][0]))
        patients[str(original.PatientID)] = str(sent.PatientID)
    assert len(set(patients.values())) == len(patients) == 4
    table = PseudonymStore(world.engine).lookup([*first, *patients.values()])
    assert set(first) <= set(table)
    assert {table[p].original for p in patients.values()} == set(patients)


def test_deidentified_copies_add_no_dciodvfy_error(world: World) -> None:
    """``dciodvfy`` reports no error on a de-identified copy that it did not report on the
    original (CT with nested sequences, 10-frame secondary capture, GB18030 names)."""
    checked = 0
    for study in ("ct", "multiframe", "chinese"):
        assert world.send(study, "cloudai").state is JobState.AWAITING_RESULT
        for path in world.studies[study][1]:
            copy = world.copy_of("cloudai", path)
            new = _dciodvfy_errors(copy) - _dciodvfy_errors(path)
            assert new == set(), f"{study}: {sorted(new)}"
            checked += 1
    assert checked == 5


def test_burned_in_text_is_masked_where_configured(world: World) -> None:
    """An ultrasound with burned-in text reaches a vendor whose profile masks that
    manufacturer's images with the configured region at 0 in every frame and every other
    pixel unchanged; its Burned In Annotation says NO; the spool keeps the original pixels."""
    job = world.send("us", "sono")
    assert job.state is JobState.AWAITING_RESULT, job.last_error
    [path] = world.received("sono").values()
    sent = dcmread(path)
    pixels = sent.pixel_array
    assert pixels.shape == (2, 64, 64)
    assert (pixels[:, 0:10, :] == 0).all()
    assert (pixels[:, 10:, :] == 200).all()
    assert sent.BurnedInAnnotation == "NO"
    assert "113101" in [c.CodeValue for c in sent.DeidentificationMethodCodeSequence]
    assert (dcmread(world.studies["us"][1][0]).pixel_array == 200).all()


def test_burned_in_text_without_a_mask_is_refused(world: World) -> None:
    """An image with burned-in text is never sent unmasked: to a vendor whose profile says
    refuse, and to one whose masks do not match its manufacturer, nothing is sent and the
    job is dead with the reason."""
    refused = world.send("us", "sonorefuse")
    assert refused.state is JobState.DEAD
    assert "burned-in" in (refused.last_error or "")
    assert list(world.received("sonorefuse")) == []
    unmatched = world.send("us_other", "sono")
    assert unmatched.state is JobState.DEAD
    assert "no mask matches" in (unmatched.last_error or "")
    assert all(
        dcmread(p, stop_before_pixels=True).Manufacturer == "Acme"
        for p in world.received("sono").values()
    )


@pytest.mark.parametrize("kind", ["seg", "sc"])
def test_a_vendors_seg_or_sc_is_mapped_back_to_the_original_study(world: World, kind: str) -> None:
    """A SEG (highdicom, references per frame, frame of reference) or a secondary capture
    (source image reference) that a vendor made from the pseudonymous copies is mapped back:
    study, referenced series and instances and frame of reference are the originals, the
    patient (Chinese name) and accession those radbridge holds, the object's own SOP
    Instance and Series UIDs are the vendor's; dciodvfy finds no error the vendor's object
    did not have."""
    assert world.send("ct", "cloudai").state is JobState.AWAITING_RESULT
    originals = [dcmread(p) for p in world.studies["ct"][1]]
    copies = [dcmread(world.copy_of("cloudai", p)) for p in world.studies["ct"][1]]
    source = SourceStudy.from_datasets(copies)
    made = {"seg": make_seg, "sc": make_sc}[kind](ProductKind.HEAD_CT_BLEED, source, copies)
    path = world.folder / f"vendor-{kind}.dcm"
    made.save_as(path, enforce_file_format=True)
    before = _dciodvfy_errors(path)
    vendor_uids = {str(e.value) for e in made.iterall() if e.VR == "UI"}

    back = reidentify_file(path, PseudonymStore(world.engine), StudyStore(world.engine))

    assert back is not None and back.study_uid == originals[0].StudyInstanceUID
    ds = dcmread(path)
    assert ds.StudyInstanceUID == originals[0].StudyInstanceUID
    assert (ds.SOPInstanceUID, ds.SeriesInstanceUID) == (
        made.SOPInstanceUID,
        made.SeriesInstanceUID,
    )
    assert (ds.PatientID, str(ds.PatientName)) == ("SH-0042", CHINESE)
    assert ds.AccessionNumber == "A20260001"
    referenced = {str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert referenced and referenced <= {str(o.SOPInstanceUID) for o in originals}
    if "FrameOfReferenceUID" in ds:
        assert ds.FrameOfReferenceUID == originals[0].FrameOfReferenceUID
    remaining = {str(e.value) for e in ds.iterall() if e.VR == "UI"} & vendor_uids
    issued = PseudonymStore(world.engine).lookup(remaining)
    assert issued == {}  # no pseudonym left in it
    assert "PatientIdentityRemoved" not in ds
    assert _dciodvfy_errors(path) - before == set()


def test_an_operator_looks_up_a_pseudonym_and_it_is_audited(world: World) -> None:
    """``radbridge pseudonyms show`` says what a pseudonymous Study Instance UID stands for,
    ``pseudonyms study`` what a study was sent as, a value radbridge never issued exits 1;
    each look-up is an audit row naming the operator."""
    assert world.send("ct", "cloudai").state is JobState.AWAITING_RESULT
    original = dcmread(world.studies["ct"][1][0], stop_before_pixels=True)
    sent = dcmread(world.copy_of("cloudai", world.studies["ct"][1][0]), stop_before_pixels=True)
    config = world.folder / "cli.yaml"
    url = str(world.engine.url)
    config.write_text(f"storage: {{spool: {world.spool.root}, database: '{url}'}}\n")
    shown = cli_fork.run(
        ["pseudonyms", "show", str(sent.StudyInstanceUID), "--json", "-c", str(config)]
    )
    assert shown.returncode == 0, shown.stderr
    [entry] = json.loads(shown.stdout)
    assert (entry["kind"], entry["original"]) == ("study", str(original.StudyInstanceUID))
    listed = cli_fork.run(
        ["pseudonyms", "study", str(original.StudyInstanceUID), "--json", "-c", str(config)]
    )
    issued = {(p["kind"], p["pseudonym"]) for p in json.loads(listed.stdout)}
    assert ("patient", str(sent.PatientID)) in issued
    assert ("accession", str(sent.AccessionNumber)) in issued
    unknown = cli_fork.run(["pseudonyms", "show", "2.25.1234", "-c", str(config)])
    assert unknown.returncode == 1
    rows = AuditLog(world.engine).export(
        datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    )
    lookups = [r for r in rows if r.action == "pseudonym.lookup"]
    assert len(lookups) == 3 and all(r.actor.startswith("cli:") for r in lookups)
