"""Fuzz targets: one function per parser that reads bytes a peer sent.

Each target takes the fuzzer's bytes and runs them through the same code the
service runs on received input. Only radbridge's own exceptions
(:class:`~broker.model.errors.RadbridgeError`) may leave a target: that is the
parser refusing the input in words; anything else is a crash the fuzzer
reports. The seed corpus of each target is ``corpus/<target>/``; inputs that
once crashed a target are kept in ``crashes/<target>/`` and replayed by the
tests.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from adapters.dicom import mapping
from adapters.hl7.ack import AckCode, ErrorCode, Problem, build_ack
from adapters.hl7.framing import FrameReader, Oversized
from adapters.hl7.mapping import UnusableMessageError, event_from_message
from adapters.hl7.parse import Hl7ParseError, parse, read_header
from adapters.results.findings import parse_findings

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
_FIXED_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def hl7(data: bytes) -> None:
    """An HL7 v2 message as the listener handles it: header, segments, the order or
    patient event it maps to, and the ACK built for it (AA, or AR/AE naming the problem)."""
    header = None
    problem = None
    try:
        header = read_header(data, "utf-8")
        message = parse(data, header)
        event_from_message(message)
    except UnusableMessageError as exc:
        problem = exc.problem
    except Hl7ParseError as exc:
        problem = Problem(ErrorCode.SEGMENT_SEQUENCE_ERROR, str(exc), "MSH")
    code = AckCode.AA if problem is None else AckCode.AR
    ack = build_ack(header, code, problem, application="RB", facility="F", now=_FIXED_TIME)
    codec = (header.codec if header is not None else None) or "utf-8"
    ack.encode(codec, errors="replace")


def mllp(data: bytes) -> None:
    """A byte stream deframed by MLLP, fed in chunks whose sizes the first byte chooses;
    every frame returned must be bytes between the blocks, or an oversized head."""
    if not data:
        return
    step = data[0] % 17 + 1
    stream = data[1:]
    reader = FrameReader(max_bytes=64)
    frames: list[bytes | Oversized] = []
    for start in range(0, len(stream), step):
        frames += reader.feed(stream[start : start + step])
    for got in frames:
        payload = got.head if isinstance(got, Oversized) else got
        if b"\x0b" in payload or b"\x1c" in payload:
            raise AssertionError(f"a frame kept a block character: {payload!r}")
        if isinstance(got, Oversized) and got.size <= reader.max_bytes:
            raise AssertionError(f"a frame of {got.size} bytes reported oversized")
        if not isinstance(got, Oversized) and len(got) > reader.max_bytes:
            raise AssertionError(f"a frame of {len(got)} bytes passed the limit")
    if reader.pending < 0 or reader.junk_bytes < 0:
        raise AssertionError("negative counters")


SCRATCH = Path(tempfile.gettempdir()) / f"radbridge-fuzz-{os.getpid()}.dcm"
"""Where the DICOM targets write each input (the runner puts it in its work folder)."""
atexit.register(lambda: SCRATCH.unlink(missing_ok=True))
#: What the listener may have negotiated; the first byte of the input chooses.
_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
SOP_INSTANCE_UID = "1.2.826.0.1.3.4"
"""The C-STORE request's SOP Instance UID (the seeds' data sets carry the same)."""
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _file_meta(transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = SOP_INSTANCE_UID
    meta.TransferSyntaxUID = transfer_syntax
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


_FILE_METAS = [_file_meta(syntax) for syntax in _TRANSFER_SYNTAXES]


def dicom(data: bytes) -> None:
    """A C-STORE's data set as ingest indexes it: behind the file meta the listener writes
    (the first input byte picks the transfer syntax), the header read within limits
    (deflate bombs, deep nesting) and the instance record with its routing tags."""
    if not data:
        return
    syntax = data[0] % len(_TRANSFER_SYNTAXES)
    SCRATCH.write_bytes(_FILE_METAS[syntax] + data[1:])
    mapping.instance_record_from_file(
        SCRATCH,
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=SOP_INSTANCE_UID,
        transfer_syntax_uid=_TRANSFER_SYNTAXES[syntax],
        calling_ae="CT01",
        called_ae="RADBRIDGE",
        peer_address="127.0.0.1",
        received_at=_FIXED_TIME,
    )


def spooled(data: bytes) -> None:
    """A whole file in the spool as recovery after a crash indexes it again (its own file
    meta included)."""
    SCRATCH.write_bytes(data)
    mapping.instance_record_from_spooled_file(SCRATCH)


def findings(data: bytes) -> None:
    """A vendor's JSON findings document, validated into domain findings."""
    parse_findings(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "hl7": hl7,
    "mllp": mllp,
    "dicom": dicom,
    "spooled": spooled,
    "findings": findings,
}
