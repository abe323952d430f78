"""What the harness's DICOM receivers share: the contexts they accept and filing what arrives.

A received instance is written as a Part 10 file whose dataset bytes are the
bytes that came over the wire (``event.request.DataSet``), never decoded and
re-encoded, under ``folder/STUDY_UID/SERIES_UID/SOP_UID.dcm``.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

#: Tags read back from a received file to file and summarise it.
HEADER_TAGS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "PatientID",
    "AccessionNumber",
    "StudyDescription",
    "SeriesDescription",
)


def storage_contexts() -> list[PresentationContext]:
    """Every storage SOP class pynetdicom knows, with every transfer syntax, and Verification."""
    contexts = [
        build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts
        if cx.abstract_syntax is not None
    ]
    return [*contexts, build_context(Verification)]


@dataclass(frozen=True)
class Received:
    """One instance a harness receiver filed."""

    path: Path
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    calling_ae: str
    called_ae: str = ""
    """The AE title it was sent to (one receiver can stand for many PACS, told apart by it)."""
    at: float = 0.0
    """When it was filed (``time.time()``)."""


def file_received(event: evt.Event, folder: Path) -> Received:
    """Write the C-STORE's dataset as received into ``folder``; what was filed."""
    request = event.request
    raw = request.DataSet if isinstance(request, C_STORE) else None
    streamed: Path | None = getattr(request, "_dataset_path", None)
    if not isinstance(raw, io.BytesIO) and streamed is None:
        raise TypeError("pynetdicom gave no encoded dataset")
    meta = event.file_meta
    sop = str(meta.MediaStorageSOPInstanceUID)
    incoming = folder / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    tmp = incoming / f"{sop}.{os.getpid()}.{threading.get_ident()}.part"
    if streamed is not None:
        # pynetdicom's STORE_RECV_CHUNKED_DATASET is a process-wide switch: when a listener
        # in this process turned it on, the dataset was streamed to a whole file (preamble,
        # meta and dataset) and the BytesIO is empty
        shutil.move(streamed, tmp)
    else:
        assert isinstance(raw, io.BytesIO)
        with tmp.open("wb") as fh:
            fh.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(DicomFileLike(fh), meta, enforce_standard=True)
            fh.write(raw.getvalue())
    header = dcmread(tmp, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    study = str(header.get("StudyInstanceUID", "unknown-study"))
    series = str(header.get("SeriesInstanceUID", "unknown-series"))
    path = folder / study / series / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
    return Received(
        path=path,
        study_uid=study,
        series_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=str(meta.MediaStorageSOPClassUID),
        calling_ae=str(event.assoc.requestor.ae_title),
        called_ae=_called_ae(event),
        at=time.time(),
    )


def _called_ae(event: evt.Event) -> str:
    """The called AE title of the association's request (the SCP's own if none is known)."""
    request = event.assoc.requestor.primitive
    called = getattr(request, "called_ae_title", None)
    return str(called).strip() if called else str(event.assoc.acceptor.ae_title).strip()


def stored_files(folder: Path) -> list[Path]:
    """Every file a harness receiver filed under ``folder``, sorted."""
    return sorted(p for p in folder.glob("*/*/*.dcm") if p.is_file())
