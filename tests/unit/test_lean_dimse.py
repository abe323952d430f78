"""The lean DIMSE bytes (adapters.dicom.dimse, adapters.dicom.storing) are what pydicom and
pynetdicom make of the same values: command sets both ways, and a received file's meta."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode

from adapters.dicom import dimse
from adapters.dicom.mapping import sender_of
from adapters.dicom.storing import file_header, sender_meta, status_of

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    ("instance", "syntax"),
    [("1.2.3.4", "1.2.840.10008.1.2.1"), ("1.2.3.45", "1.2.840.10008.1.2.4.50")],
)
def test_file_meta_is_the_bytes_pydicom_writes(instance: str, syntax: str) -> None:
    """The preamble and file meta written ahead of a received data set equal pynetdicom's
    create_file_meta written by pydicom, for odd and even UID lengths."""
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=UID(CT), sop_instance_uid=UID(instance), transfer_syntax=UID(syntax)
    )
    write_file_meta_info(out, meta)
    assert file_header(CT, instance, syntax) == out.getvalue()


@pytest.mark.parametrize(
    ("calling", "called", "address"),
    [("CT01", "RADBRIDGE", "10.8.1.7"), ("ODD", "HUB_A", "fe80::1")],
)
def test_file_meta_names_the_sender_as_pydicom_writes_it(
    calling: str, called: str, address: str, tmp_path: Path
) -> None:
    """The sender's elements of a received file's meta (Sending and Receiving AE Title,
    Sending Presentation Address) are the bytes pydicom writes for the same values, and
    read back as the sender (:func:`adapters.dicom.mapping.sender_of`)."""
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=UID(CT), sop_instance_uid=UID("1.2.3"), transfer_syntax=UID(EXPLICIT)
    )
    meta.SendingApplicationEntityTitle = calling
    meta.ReceivingApplicationEntityTitle = called
    host = f"[{address}]" if ":" in address else address
    meta.SendingPresentationAddress = f"dicom://{host}"
    write_file_meta_info(out, meta)
    header = file_header(CT, "1.2.3", EXPLICIT, sender_meta(calling, called, address))
    assert header == out.getvalue()
    path = tmp_path / "x.dcm"
    path.write_bytes(header)
    assert sender_of(path) == (calling, called, address)


def test_store_response_decodes_as_pynetdicoms_c_store_rsp() -> None:
    """A lean C-STORE-RSP reads back (with pydicom) as the response to its request: command
    field, message ID answered, no data set, status, error comment, UIDs."""
    command = dimse.store_response(513, b"1.2.840.10008.5.1.4.1.1.2\0", b"1.2.3.45", 0xC000, "bad")
    ds = decode(BytesIO(command), True, True)
    assert ds.CommandGroupLength == len(command) - 12
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 513
    assert ds.CommandDataSetType == 0x0101
    assert ds.Status == 0xC000
    assert ds.ErrorComment == "bad"
    assert ds.AffectedSOPClassUID == CT
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"


def test_store_request_fields_read_back_as_pynetdicom_encodes_them() -> None:
    """command_fields reads pynetdicom's own C-STORE-RQ command set: the fields the lean
    receiver takes (command field, message ID, data set type, UIDs)."""
    request = C_STORE()
    request.MessageID = 9
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.3.45"
    request.Priority = 2
    request.DataSet = BytesIO(b"\0\0")
    message = dimse_message(request)
    fields = dimse.command_fields(message)
    assert dimse.us(fields, dimse.COMMAND_FIELD) == dimse.C_STORE_RQ
    assert dimse.us(fields, dimse.MESSAGE_ID) == 9
    assert dimse.us(fields, dimse.COMMAND_DATA_SET_TYPE) != dimse.NO_DATA_SET
    assert dimse.uid(fields, dimse.AFFECTED_SOP_CLASS_UID) == CT
    assert dimse.uid(fields, dimse.AFFECTED_SOP_INSTANCE_UID) == "1.2.3.45"


def dimse_message(request: C_STORE) -> bytes:
    """The command set bytes pynetdicom encodes for ``request``."""
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return encoded


def test_status_of_a_handler_answer() -> None:
    """An int status has no comment; a status Dataset gives its Status and Error Comment."""
    ds = Dataset()
    ds.Status = 0xA700
    ds.ErrorComment = "spool full"
    assert status_of(0) == (0, "")
    assert status_of(ds) == (0xA700, "spool full")
