"""The simulated modality against dcmtk storescp, and the study kinds it generates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from adapters.dicom.synthetic import PERFUSION_SLICES, generate_study
from adapters.harness.modality import send_files
from adapters.harness.vendor import SimulatedVendor
from tests import cli_fork
from tests.peers import LOOPBACK, StoreSCP, dataset_bytes


def test_modality_sends_byte_identical_files_over_several_associations(tmp_path: Path) -> None:
    """Every generated file arrives at storescp with the same dataset bytes, over 3 associations."""
    files = generate_study("ct_chest", tmp_path / "study", instances=9, rows=64, columns=64)
    with StoreSCP(tmp_path / "scp") as scp:
        report = send_files(
            files, host=LOOPBACK, port=scp.port, called_ae="STORESCP", associations=3
        )
        received = scp.files()
    assert report.ok and report.instances == 9 and report.associations == 3
    assert report.bytes == sum(p.stat().st_size for p in files)
    sent = sorted(dataset_bytes(p) for p in files)
    assert sorted(dataset_bytes(p) for p in received) == sent


def test_modality_send_command_prints_throughput_and_fails_on_refusal(
    tmp_path: Path, simulated_vendor: Callable[..., SimulatedVendor]
) -> None:
    """`harness modality send` reports instances, MB and MB/s; a refused association: exit 1."""
    with StoreSCP(tmp_path / "scp") as scp:
        done = cli_fork.run(
            ["harness", "modality", "send", "mg", "--port", str(scp.port),
             "--ae-title", "STORESCP", "--rows", "64", "--columns", "64",
             "--accession", "MG0042", "--associations", "2"],
            timeout=60, check=False,
        )  # fmt: skip
        files = scp.files()
    assert done.returncode == 0, done.stderr
    assert "sent 4 of 4 instances" in done.stdout and "MB/s" in done.stdout
    assert {str(dcmread(p).AccessionNumber) for p in files} == {"MG0042"}
    refusing = simulated_vendor(fault="refuse")
    refused = cli_fork.run(
        ["harness", "modality", "send", "--folder", str(tmp_path / "scp"),
         "--port", str(refusing.port)],
        timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "sent 0 of 4 instances" in refused.stdout
    assert "association rejected" in refused.stderr and not refusing.received


@pytest.mark.parametrize(
    ("kind", "modality", "body_part", "description"),
    [
        ("ct_ccta", "CT", "HEART", "CT CORONARY ANGIOGRAPHY"),
        ("ct_perfusion", "CT", "HEAD", "CT PERFUSION HEAD"),
        ("mg", "MG", "BREAST", "MG SCREENING BILATERAL"),
    ],
)
def test_new_study_kinds_carry_realistic_tags(
    tmp_path: Path, kind: str, modality: str, body_part: str, description: str
) -> None:
    """CCTA, CT perfusion and mammography carry modality, body part, description, protocol."""
    files = generate_study(
        kind,  # type: ignore[arg-type]
        tmp_path,
        instances=2,
        rows=32,
        columns=32,
        accession="A77",
        patient_id="P77",
    )
    ds = dcmread(files[-1])
    assert (ds.Modality, ds.BodyPartExamined, ds.StudyDescription) == (
        modality,
        body_part,
        description,
    )
    assert ds.AccessionNumber == "A77" and ds.PatientID == "P77"
    assert ds.ProtocolName and ds.InstitutionName and ds.ReferringPhysicianName
    if kind == "ct_ccta":
        assert float(ds.SliceThickness) == 0.625 and ds.NominalPercentageOfCardiacPhase == 75
        assert "CARDIAC GATING" in ds.ScanOptions and ds.ContrastBolusAgent
    if kind == "ct_perfusion":
        assert len(files) == 2 * PERFUSION_SLICES
        assert ds.TemporalPositionIdentifier == 2 and ds.NumberOfTemporalPositions == 2
        assert ds.ImagePositionPatient == dcmread(files[PERFUSION_SLICES - 1]).ImagePositionPatient
    if kind == "mg":
        views = [(dcmread(p).ImageLaterality, dcmread(p).ViewPosition) for p in files]
        assert views == [("R", "CC"), ("L", "CC")]
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
