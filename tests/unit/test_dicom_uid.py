"""One UID rule at every intake: what a valid DICOM UID is, and the edges that apply it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from adapters.dicom_uid import checked_uid, uid_problem
from adapters.fhir.mapping import order_from_service_request
from adapters.fhir.outcome import FhirError
from adapters.hl7.ack import ErrorCode
from adapters.hl7.mapping import UnusableMessageError, event_from_message
from adapters.hl7.parse import parse, read_header
from broker.model.errors import InvalidDicomError
from tests.fhir_data import service_request
from tests.hl7_messages import omi_o23, orm_o01, sample_order

BAD = {
    "../../x": "not only digits and dots",
    "/etc/passwd": "not only digits and dots",
    "1.2.3a": "not only digits and dots",
    "1.2 .3": "not only digits and dots",
    "1.2..3": "empty component",
    ".1.2": "empty component",
    "1.2.": "empty component",
    "1.2.03": "leading zero in a component",
    "01.2": "leading zero in a component",
    "1." + "2" * 63: "65 characters",
    "": "empty",
}


@pytest.mark.parametrize(("value", "problem"), BAD.items(), ids=list(BAD))
def test_what_is_not_a_uid_and_why(value: str, problem: str) -> None:
    """Each kind of non-conformant UID gets its reason, which never quotes the value."""
    assert uid_problem(value) == problem
    with pytest.raises(InvalidDicomError, match=r"^SOPInstanceUID is not a valid UID: "):
        checked_uid("SOPInstanceUID", value)


@pytest.mark.parametrize("value", ["0", "1.2.0.3", "2.25." + "1" * 59, "1.2.840.10008.1.2.1"])
def test_valid_uids_pass(value: str) -> None:
    """Zero components, and 64 characters exactly, are valid."""
    assert uid_problem(value) is None
    assert checked_uid("StudyInstanceUID", value) == value


@pytest.mark.parametrize("write", [orm_o01, omi_o23], ids=["ORM^O01 ZDS-1", "OMI^O23 IPC-3"])
def test_an_hl7_order_with_a_non_conformant_study_uid_is_unusable(
    write: Callable[..., str],
) -> None:
    """The order's Study Instance UID (ZDS-1, IPC-3) must be a UID: ERR 102 at that field."""
    text = write(sample_order(study_uid="1.2.03"))
    raw = text.encode()
    with pytest.raises(UnusableMessageError) as caught:
        event_from_message(parse(raw, read_header(raw, "utf-8")))
    problem = caught.value.problem
    assert problem.code is ErrorCode.DATA_TYPE_ERROR
    assert (problem.segment, problem.field) in (("ZDS", 1), ("IPC", 3))
    assert "is not a Study Instance UID: leading zero in a component" in problem.text


def test_a_service_request_with_a_non_conformant_study_uid_gets_400() -> None:
    """A urn:dicom:uid identifier whose UID has a leading zero is refused at its value."""
    sr = service_request(identifier=[{"system": "urn:dicom:uid", "value": "urn:oid:1.2.03"}])
    with pytest.raises(FhirError) as caught:
        order_from_service_request(sr)
    assert caught.value.status == 400
    [issue] = caught.value.outcome()["issue"]
    assert issue["expression"] == ["ServiceRequest.identifier[0].value"]
