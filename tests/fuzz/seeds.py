"""Write the seed corpus of every fuzz target: ``python -m tests.fuzz.seeds``.

Small, valid (or nearly valid) inputs, so that the fuzzer starts from what
peers really send: an ORM, an OMI, ADTs and a merge; MLLP streams with
several frames; DICOM headers (explicit, implicit, deflated, with sequences);
and a findings document. The files are kept in the repository; run this
again only to change them.
"""

from __future__ import annotations

import io
import json
import zlib

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from adapters.harness import hl7_messages as hl7
from adapters.hl7.framing import frame
from broker.model.domain import Patient
from tests.fuzz.targets import _TRANSFER_SYNTAXES, CORPUS

_UIDS = ("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3.4")


def _hl7_seeds() -> dict[str, bytes]:
    order = hl7.sample_order(7)
    patient = Patient("FUZZ01", "HOSP", "ROE^ANN", "19700202", "F")
    messages = {
        "orm_o01": hl7.orm_o01(order),
        "orm_cancel": hl7.orm_o01(order, control="CA"),
        "omi_o23": hl7.omi_o23(order),
        "adt_a08": hl7.adt("A08", patient),
        "adt_a40": hl7.adt_a40(patient, order.patient),
    }
    out = {name: text.encode() for name, text in messages.items()}
    out["escapes"] = (
        b"MSH|^~\\&|RIS|H|RB|H|20260101||ORM^O01|1|P|2.5|||||CHN|UNICODE UTF-8\r"
        b"PID|||X\\F\\1^^^H||A\\S\\B^C\\X41\\\\.br\\\r"
    )
    return out


def _mllp_seeds(messages: dict[str, bytes]) -> dict[str, bytes]:
    one = messages["orm_o01"][:60]
    return {
        "two_frames": b"\x04" + frame(one) + frame(b"MSH|^~\\&|A"),
        "junk_and_abandoned": b"\x01junk\x0bhalf" + frame(one) + b"\x1c\r",
        "oversized": b"\x10" + frame(one + one),
    }


def _dataset(transfer_syntax: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = _UIDS[2]
    ds.StudyInstanceUID = _UIDS[0]
    ds.SeriesInstanceUID = _UIDS[1]
    ds.Modality = "CT"
    ds.PatientID = "FUZZ01"
    ds.PatientName = "ROE^ANN"
    ds.AccessionNumber = "ACC7"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.25"
    ds.SeriesNumber = "3"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SpecificCharacterSet = "ISO_IR 192"
    item = Dataset()
    item.CodeValue = "T-D3000"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = Sequence([item])
    ds.add_new(0x00091010, "LO", "private")
    ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 16
    ds.PixelData = b"\x00" * 8
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    return ds


def _dicom_seeds() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Data sets as a C-STORE carries them (the first byte picks the transfer syntax, see
    :func:`tests.fuzz.targets.dicom`), and whole files as the spool keeps them."""
    datasets, files = {}, {}
    for index, syntax in enumerate(_TRANSFER_SYNTAXES):
        buffer = io.BytesIO()
        ds = _dataset(syntax)
        ds.save_as(buffer, enforce_file_format=True)
        files[str(syntax.name).lower().replace(" ", "_")] = buffer.getvalue()
        body = DicomBytesIO()
        body.is_little_endian = syntax != ExplicitVRBigEndian
        body.is_implicit_VR = syntax == ImplicitVRLittleEndian
        write_dataset(body, ds)
        encoded = body.getvalue()
        if syntax == DeflatedExplicitVRLittleEndian:
            deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            encoded = deflater.compress(encoded) + deflater.flush()
        datasets[str(syntax.name).lower().replace(" ", "_")] = bytes([index]) + encoded
    return datasets, files


def _findings_seeds() -> dict[str, bytes]:
    code = {"system": "SCT", "value": "1386000", "meaning": "Intracranial hemorrhage"}
    document = {
        "study_instance_uid": _UIDS[0],
        "algorithm": {"vendor": "V", "product": "P", "version": "1.0"},
        "complete": True,
        "expected_objects": 1,
        "summary": "one finding",
        "findings": [
            {
                "code": code,
                "present": True,
                "text": "bleed",
                "score": 0.97,
                "urgent": True,
                "site": {"system": "http://snomed.info/sct", "value": "12738006", "meaning": "B"},
                "measurements": [{"code": code, "value": 8.2, "unit": "mm"}],
                "references": [{"series_instance_uid": _UIDS[1], "sop_instance_uid": _UIDS[2]}],
            },
            {"code": code, "present": False},
        ],
    }
    empty = {**document, "findings": [], "complete": False}
    return {
        "full": json.dumps(document).encode(),
        "empty": json.dumps(empty).encode(),
        "bad_present": json.dumps(
            {**document, "findings": [{"code": code, "present": "x"}]}
        ).encode(),
    }


def main() -> None:
    messages = _hl7_seeds()
    datasets, files = _dicom_seeds()
    seeds = {
        "hl7": messages,
        "mllp": _mllp_seeds(messages),
        "dicom": datasets,
        "spooled": files,
        "findings": _findings_seeds(),
    }
    for target, files in seeds.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    main()
