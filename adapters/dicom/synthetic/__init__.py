"""Synthetic DICOM studies and files with unusual encodings.

The harness's simulated modality, the integration tests and the benchmarks use
this module to make realistic studies without shipping patient data:

* :func:`generate_study` writes a whole study of one kind (``ct_chest``,
  ``ct_head``, ``ct_ccta``, ``ct_perfusion``, ``ct_stroke``, ``mr_brain``,
  ``dx_chest``, ``mg``) with the tags routing looks at (modality, body part, slice
  thickness, image type, descriptions, protocol, contrast, cardiac gating,
  temporal positions, laterality and view) and the ones a hospital's
  systems key on (accession, patient, referring physician, institution).
* :func:`generate_large_study` streams a study of a given total size (2 GB for
  the memory benchmark) to disk without holding it in memory.
* :func:`encoding_variants` writes one small file per encoding a receiver must
  store as it came: other transfer syntaxes (real compressed codestreams),
  multi-frame, private and undefined-length sequences, and patient names in
  several Specific Character Sets.

Pixel data is a cheap phantom (a few ellipses that change from slice to slice
plus a fixed noise texture), not real anatomy and never all zeros. UIDs below
the study are derived from the study UID, so the same call twice writes the
same objects (useful to test duplicate detection).

One module per modality (``ct``, ``mr``, ``dx``, ``mg``), what they share in
``common``, and ``large`` / ``encodings`` for the two special generators.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydicom.uid import generate_uid

from adapters.dicom.synthetic.common import (
    CT_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    IMPLEMENTATION_VERSION_NAME,
    MF_GRAYSCALE_WORD_SC_STORAGE,
    MG_PRESENTATION_STORAGE,
    MR_IMAGE_STORAGE,
    SC_IMAGE_STORAGE,
    StudyPatient,
    StudyPlan,
    study_dataset,
    write_series,
)
from adapters.dicom.synthetic.ct import PERFUSION_SLICES, plan_ct
from adapters.dicom.synthetic.dx import plan_dx
from adapters.dicom.synthetic.encodings import Variant, encoding_variants
from adapters.dicom.synthetic.large import generate_large_study
from adapters.dicom.synthetic.mg import plan_mg
from adapters.dicom.synthetic.mr import plan_mr
from broker.model.errors import DicomError

__all__ = [
    "CT_IMAGE_STORAGE",
    "DX_PRESENTATION_STORAGE",
    "IMPLEMENTATION_VERSION_NAME",
    "KINDS",
    "MF_GRAYSCALE_WORD_SC_STORAGE",
    "MG_PRESENTATION_STORAGE",
    "MR_IMAGE_STORAGE",
    "PERFUSION_SLICES",
    "SC_IMAGE_STORAGE",
    "StudyKind",
    "Variant",
    "encoding_variants",
    "generate_large_study",
    "generate_study",
    "plan_study",
]

StudyKind = Literal[
    "ct_chest", "ct_head", "ct_ccta", "ct_perfusion", "ct_stroke", "mr_brain", "dx_chest", "mg"
]
KINDS: tuple[StudyKind, ...] = (
    "ct_chest",
    "ct_head",
    "ct_ccta",
    "ct_perfusion",
    "ct_stroke",
    "mr_brain",
    "dx_chest",
    "mg",
)


def plan_study(
    kind: str, instances: int | None, rows: int | None, columns: int | None
) -> StudyPlan:
    """(study description, station name, series) of one study kind, nothing written yet."""
    if kind in ("ct_chest", "ct_head", "ct_ccta", "ct_perfusion", "ct_stroke"):
        return plan_ct(kind, instances, rows, columns)
    if kind == "mr_brain":
        return plan_mr(instances, rows, columns)
    if kind == "dx_chest":
        return plan_dx(instances, rows, columns)
    if kind == "mg":
        return plan_mg(instances, rows, columns)
    raise DicomError(f"no such study kind {kind!r}; valid kinds are {', '.join(KINDS)}")


def generate_study(
    kind: StudyKind,
    out_dir: Path | str,
    *,
    instances: int | None = None,
    rows: int | None = None,
    columns: int | None = None,
    patient_id: str = "PAT0001",
    patient_name: str = "DOE^JANE",
    accession: str = "ACC0001",
    study_uid: str | None = None,
    charset: str | None = None,
) -> list[Path]:
    """Write one synthetic study into ``out_dir/S<series>/I<instance>.dcm``.

    ``instances`` is the slice count of the CT series (default 200 for
    ``ct_chest``: 512x512, 1 mm, about 105 MB; 32 for ``ct_head``: 5 mm; 256
    for ``ct_ccta``: 0.625 mm, ECG-gated at 75 %, 200 mm field of view), the
    number of time points of ``ct_perfusion`` (default 30, every 1.5 s, each
    16 slices of 5 mm: 480 instances), the head CT's slices of ``ct_stroke``
    (three series: :func:`~adapters.dicom.synthetic.ct.plan_stroke`), the slice
    count of each of the four
    ``mr_brain`` series (T1, T2, FLAIR and a post-contrast T1 with
    ContrastBolusAgent; default 24 at 256x256), the number of ``dx_chest``
    views (PA, lateral, …; default 2 at 2048x2048) or of ``mg`` views (R CC,
    L CC, R MLO, L MLO; default 4 at 3328x2560).
    ``rows`` and ``columns`` override the matrix. Files are Explicit VR Little
    Endian Part 10 files. ``charset`` is the Specific Character Set the text is
    written in (``ISO_IR 100``, ``ISO_IR 192`` for UTF-8, ``GB18030``…); by
    default ISO_IR 100, or ISO_IR 192 for a name Latin-1 cannot hold. Returns
    the paths in series and instance order.
    """
    out = Path(out_dir)
    patient = StudyPatient(
        patient_id=patient_id,
        patient_name=patient_name,
        accession=accession,
        study_uid=study_uid or str(generate_uid()),
        when=datetime.now().replace(microsecond=0),
        charset=charset,
    )
    description, station, series_list = plan_study(kind, instances, rows, columns)
    base = study_dataset(patient, description, station)
    paths: list[Path] = []
    for series in series_list:
        paths.extend(write_series(out, patient, base, series))
    return paths
