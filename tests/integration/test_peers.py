"""The synthetic studies and encoding variants against real peers: storescp, Orthanc, dciodvfy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from adapters.dicom.synthetic import (
    KINDS,
    Variant,
    encoding_variants,
    generate_large_study,
    generate_study,
)
from tests.bench import ingest
from tests.peers import (
    Orthanc,
    StoreSCP,
    dataset_bytes,
    dcmtk_env,
    ensure_debian_packages,
    storescu,
)

pytestmark = pytest.mark.xdist_group("peers")

CT_INSTANCES = 12


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A small generated chest CT (12 slices of 512x512)."""
    return generate_study("ct_chest", tmp_path_factory.mktemp("ct"), instances=CT_INSTANCES)


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> list[Variant]:
    """Every encoding variant, written once for the module."""
    ensure_debian_packages("dcmcjpeg", "dcmcjpls")
    return encoding_variants(tmp_path_factory.mktemp("variants"))


def _by_sop_uid(files: list[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}


def test_generated_ct_reaches_storescp_bit_identical(ct_files: list[Path], tmp_path: Path) -> None:
    """Every generated CT instance arrives in storescp with the dataset bytes it was sent with."""
    with StoreSCP(tmp_path / "received") as scp:
        storescu(ct_files[0].parent, scp.port, called_ae="STORESCP")
        received = _by_sop_uid(scp.files())
    assert len(received) == CT_INSTANCES
    for path in ct_files:
        sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(received[sop_uid]) == dataset_bytes(path), path.name


def test_encoding_variants_reach_storescp_in_their_own_syntax(
    variants: list[Variant], tmp_path: Path
) -> None:
    """Each variant reaches storescp in its own transfer syntax, bit-identical.

    The exception is dcmtk's own: storescu re-encodes sequences with explicit
    lengths, so the undefined-length variant arrives equal when decoded.
    """
    with StoreSCP(tmp_path / "received") as scp:
        storescu([v.path for v in variants], scp.port, called_ae="STORESCP")
        received = _by_sop_uid(scp.files())
    assert sorted(received) == sorted(v.sop_instance_uid for v in variants)
    for v in variants:
        got = received[v.sop_instance_uid]
        assert str(pydicom.dcmread(got).file_meta.TransferSyntaxUID) == v.transfer_syntax_uid
        if v.name == "undefined_length_sequences":
            assert pydicom.dcmread(got) == pydicom.dcmread(v.path)
        else:
            assert dataset_bytes(got) == dataset_bytes(v.path), v.name


def test_undefined_length_variant_is_bit_identical_when_sent_raw(
    variants: list[Variant], tmp_path: Path
) -> None:
    """Sent from its file without re-encoding, the undefined-length variant arrives as is."""
    variant = next(v for v in variants if v.name == "undefined_length_sequences")
    ae = AE(ae_title="CT01")
    ae.add_requested_context(pydicom.dcmread(variant.path).SOPClassUID, ExplicitVRLittleEndian)
    with StoreSCP(tmp_path / "received") as scp:
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="STORESCP")
        assert assoc.is_established
        status = assoc.send_c_store(variant.path)
        assoc.release()
        files = scp.files()
    assert status.Status == 0x0000
    assert len(files) == 1
    assert dataset_bytes(files[0]) == dataset_bytes(variant.path)
    assert b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" in dataset_bytes(files[0])  # sequence delimiter


def test_ct_and_variants_reach_orthanc(
    ct_files: list[Path], variants: list[Variant], tmp_path: Path
) -> None:
    """Orthanc stores the CT and every variant, and decodes every patient name as intended."""
    with Orthanc(tmp_path / "orthanc") as orthanc:
        storescu(ct_files[0].parent, orthanc.dicom_port, called_ae="ORTHANC")
        storescu([v.path for v in variants], orthanc.dicom_port, called_ae="ORTHANC")
        assert len(orthanc.instances()) == CT_INSTANCES + len(variants)
        for v in variants:
            found = orthanc.request("POST", "/tools/lookup", v.sop_instance_uid.encode())
            assert len(found) == 1, v.name
            tags = orthanc.get(f"/instances/{found[0]['ID']}/simplified-tags")
            assert tags["PatientName"] == v.patient_name, v.name
            assert tags["StudyInstanceUID"] == v.study_uid, v.name


def test_dciodvfy_finds_no_errors_in_generated_ct(ct_files: list[Path]) -> None:
    """dciodvfy reports no errors (warnings allowed) on a generated CT instance."""
    ensure_debian_packages("dciodvfy")
    done = subprocess.run(
        ["dciodvfy", str(ct_files[CT_INSTANCES // 2])], capture_output=True, text=True, check=False
    )
    report = done.stdout + done.stderr
    assert "CTImage" in report
    assert [line for line in report.splitlines() if line.startswith("Error")] == []


@pytest.mark.parametrize(
    ("name", "decoder"),
    [
        ("jpeg_lossless_sv1", "dcmdjpeg"),
        ("jpeg_ls_lossless", "dcmdjpls"),
        ("rle_lossless", "dcmdrle"),
        ("jpeg2000_lossless", None),
    ],
)
def test_lossless_variants_hold_real_codestreams(
    variants: list[Variant], tmp_path: Path, name: str, decoder: str | None
) -> None:
    """Each lossless variant decodes (dcmtk, or openjpeg for J2K) to the uncompressed pixels."""
    reference = pydicom.dcmread(next(v.path for v in variants if v.name == "implicit_vr_le"))
    variant = next(v for v in variants if v.name == name)
    path = variant.path
    if decoder is not None:
        path = tmp_path / "decoded.dcm"
        subprocess.run([decoder, str(variant.path), str(path)], check=True, env=dcmtk_env())
    decoded = pydicom.dcmread(path)
    assert decoded.file_meta.TransferSyntaxUID != variant.transfer_syntax_uid or decoder is None
    assert np.array_equal(decoded.pixel_array, reference.pixel_array)


def test_every_study_kind_carries_the_tags_routing_reads(tmp_path: Path) -> None:
    """Each kind writes its modality, body part, slice thickness (per series: the stroke
    protocol's head CT, CTA and perfusion) and Part 10 meta."""
    expected = {
        "ct_chest": ("CT", "CHEST", {"1"}, 3),
        "ct_head": ("CT", "HEAD", {"5"}, 3),
        "mr_brain": ("MR", "HEAD", {"5"}, 12),
        "dx_chest": ("DX", "CHEST", {None}, 2),
        "ct_ccta": ("CT", "HEART", {"0.625"}, 3),
        "ct_perfusion": ("CT", "HEAD", {"5"}, 16),
        "mg": ("MG", "BREAST", {None}, 2),
        "ct_stroke": ("CT", "HEAD", {"5", "0.625"}, 41),
    }
    for kind in KINDS:
        instances = {"dx_chest": 2, "mg": 2, "ct_perfusion": 1}.get(kind, 3)
        size = 256 if kind in ("dx_chest", "mg", "ct_perfusion") else None
        files = generate_study(
            kind, tmp_path / kind, instances=instances, rows=size, columns=size, accession=kind
        )
        modality, body_part, thicknesses, count = expected[kind]
        assert len(files) == count, kind
        datasets = [pydicom.dcmread(f) for f in files]
        assert len({ds.StudyInstanceUID for ds in datasets}) == 1
        assert len({ds.SOPInstanceUID for ds in datasets}) == count
        for ds in datasets:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert (ds.Modality, ds.BodyPartExamined, ds.AccessionNumber) == (
                modality,
                body_part,
                kind,
            )
            assert ds.pixel_array.any()
        assert {ds.get("SliceThickness") for ds in datasets} == {
            None if t is None else float(t) for t in thicknesses
        }, kind
    contrast = [
        pydicom.dcmread(f).get("ContrastBolusAgent") for f in (tmp_path / "mr_brain").rglob("*.dcm")
    ]
    assert any(contrast) and not all(contrast)


def test_large_study_is_written_in_multi_frame_instances(tmp_path: Path) -> None:
    """generate_large_study reaches the requested size in instances of about instance_bytes."""
    mib = 1024 * 1024
    files = generate_large_study(tmp_path, 20 * mib, instance_bytes=4 * mib)
    assert len(files) == 5
    assert sum(f.stat().st_size for f in files) >= 20 * mib
    ds = pydicom.dcmread(files[-1])
    assert ds.NumberOfFrames == 8
    assert ds.pixel_array.shape == (8, 512, 512)
    assert ds.pixel_array.any()


def test_ingest_benchmark_measures_orthanc_and_storescp(tmp_path: Path) -> None:
    """The ingest benchmark's quick mode reports a median and JSON for each peer it ran, for
    the CT (MB/s) and the small instances (instances/s)."""
    out = tmp_path / "bench.json"
    quick = ["--quick", "--repeats", "1", "--instances", "8", "--peers", "orthanc,storescp"]
    code = ingest.main([*quick, "--small", "6", "--json", str(out), "--workdir", str(tmp_path)])
    assert code == 0
    measured = json.loads(out.read_text())
    for medians in (measured["median"], measured["small_median"]):
        assert set(medians) == {"orthanc", "storescp"}
        assert all(value > 0 for peer in medians.values() for value in peer.values())
