"""A job's study de-identified into a folder: what a vendor with ``deidentify:`` is sent.

:func:`deidentify_study` is the ``deidentify_study`` entry point of
``radbridge.registries``: the job engine calls it before the transport sends,
records the pseudonyms it returns in the store, sends the copies, and removes
the folder. The spool's files are only read. Each copy keeps its transfer
syntax, except a masked image (Explicit VR Little Endian).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError as PydicomInvalid

from adapters.deid.dataset import METHOD_PREFIX, Deidentifier
from adapters.deid.pixels import apply_mask, mask_for
from broker.model.deid import Deidentify, Outbound, PixelMask, Pseudonyms
from broker.model.errors import DeidentificationError


def deidentify_study(
    files: Sequence[Path], profile: Deidentify, secret: str, folder: Path
) -> Outbound:
    """``files`` (one study) de-identified by ``profile`` into ``folder`` (which exists).

    Images that may carry burned-in text are masked or withheld (:mod:`.pixels`).
    Raises :class:`DeidentificationError` when a file cannot be read, masked or
    written."""
    deidentifier = Deidentifier(profile, Pseudonyms(secret))
    written: list[Path] = []
    withheld: list[str] = []
    masked = 0
    study_uid = ""
    for n, path in enumerate(files):
        try:
            ds = dcmread(path)
        except (PydicomInvalid, OSError, ValueError, EOFError) as exc:
            raise DeidentificationError(f"cannot read {path.name} from the spool: {exc}") from exc
        study_uid = study_uid or str(ds.get("StudyInstanceUID", ""))
        decision = mask_for(ds, profile)
        if isinstance(decision, str):
            withheld.append(f"image {n + 1} of {len(files)}: {decision}")
            continue
        if isinstance(decision, PixelMask):
            apply_mask(ds, decision)
            masked += 1
        try:
            deidentifier.apply(ds, masked=isinstance(decision, PixelMask))
            out = folder / f"{n:06d}.dcm"
            ds.save_as(out, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
            raise DeidentificationError(f"cannot de-identify {path.name}: {exc}") from exc
        except OSError as exc:
            raise DeidentificationError(f"cannot write the copy of {path.name}: {exc}") from exc
        written.append(out)
    keys = deidentifier.keys
    return Outbound(
        files=tuple(written),
        pseudonyms=tuple(deidentifier.issued.values()),
        profile=profile.describe(),
        study_pseudonym=keys.uid(study_uid) if study_uid else "",
        withheld=tuple(withheld),
        masked=masked,
        folder=folder,
    )


def deidentified_manifest(files: Sequence[Path]) -> dict[str, Any] | None:
    """The study part of an ``http`` vendor's manifest, read from radbridge's de-identified
    copies in ``files`` (pseudonymous study, series, accession and patient, and the
    profile); None when ``files`` are not such copies (sent as received). The current
    study's copies come first; those of other studies after them are its priors
    (``priors``: each one's pseudonymous study UID and series, without ``wado_rs``)."""
    if not files:
        return None
    try:
        first = dcmread(files[0], stop_before_pixels=True)
    except (PydicomInvalid, OSError, ValueError, EOFError):
        return None  # not a copy radbridge just wrote: the spool's file, sent as it is
    method = str(first.get("DeidentificationMethod", ""))
    if first.get("PatientIdentityRemoved") != "YES" or not method.startswith(METHOD_PREFIX):
        return None  # the spool's files: only the first is read
    try:
        headers = [first, *(dcmread(p, stop_before_pixels=True) for p in files[1:])]
    except (PydicomInvalid, OSError, ValueError, EOFError) as exc:
        raise DeidentificationError(f"cannot read a de-identified copy: {exc}") from exc
    studies: dict[str, dict[str, dict[str, Any]]] = {}
    for ds in headers:
        series = studies.setdefault(str(ds.get("StudyInstanceUID", "")), {})
        uid = str(ds.get("SeriesInstanceUID", ""))
        entry = series.setdefault(
            uid,
            {"series_instance_uid": uid, "modality": ds.get("Modality"), "instances": 0},
        )
        entry["instances"] += 1
    current = str(first.StudyInstanceUID)
    out: dict[str, Any] = {
        "study_instance_uid": current,
        "accession_number": str(first.get("AccessionNumber", "")) or None,
        "series": list(studies.pop(current).values()),
        "patient": {"id": str(first.get("PatientID", "")), "issuer": None},
        "deidentified": method.removeprefix(METHOD_PREFIX),
    }
    if studies:
        out["priors"] = [
            {
                "study_instance_uid": uid,
                "series": [
                    {"series_instance_uid": s["series_instance_uid"], "instances": s["instances"]}
                    for s in series.values()
                ],
            }
            for uid, series in studies.items()
        ]
    return out
