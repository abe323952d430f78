"""FHIR ServiceRequest ↔ Order mapping, as plain functions: fields, codes, errors, round trip."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.fhir.mapping import (
    DCM,
    V2_0203,
    order_from_service_request,
    service_request_from_order,
)
from adapters.fhir.outcome import FhirError
from adapters.fhir.resources import validate
from broker.model.domain import (
    Order,
    OrderPriority,
    OrderSource,
    OrderStatus,
    Patient,
    StoredOrder,
)


def typed(code: str, value: str, **more: Any) -> dict[str, Any]:
    """An identifier of v2-0203 type ``code``."""
    return {"type": {"coding": [{"system": V2_0203, "code": code}]}, "value": value, **more}


def service_request(**changes: Any) -> dict[str, Any]:
    """A complete ServiceRequest with a contained Patient, changed by ``changes``."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "contained": [
            {
                "resourceType": "Patient",
                "id": "pat",
                "identifier": [
                    {"system": "urn:oid:2.16.1", "value": "ignored"},
                    typed("MR", "PID-7", assigner={"display": "HOSP"}),
                ],
                "name": [
                    {"use": "nickname", "given": ["Johnny"]},
                    {"use": "official", "family": "Doe", "given": ["John", "Quincy"]},
                ],
                "birthDate": "1961-07-04",
                "gender": "male",
            }
        ],
        "identifier": [
            typed("PLAC", "PL-1"),
            typed("FILL", "FI-1"),
            typed("ACSN", "ACC-1", system="urn:oid:1.2.3.4"),
            {"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.2.1125.1"},
        ],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": DCM, "code": "CT"}]}],
        "priority": "stat",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT"}]},
        "subject": {"reference": "#pat"},
        "locationCode": [{"text": "Emergency"}],
    }
    resource.update(changes)
    return {k: v for k, v in resource.items() if v is not None}


def test_every_field_of_the_order_docstring_is_mapped() -> None:
    """Identifiers, issuer, code, modality, priority, status, department, study UID, patient."""
    sr = service_request()
    validate(sr, "ServiceRequest")
    order = order_from_service_request(sr)
    assert order == Order(
        source=OrderSource.FHIR,
        placer_number="PL-1",
        filler_number="FI-1",
        accession_number="ACC-1",
        issuer="urn:oid:1.2.3.4",
        patient=Patient("PID-7", "HOSP", "Doe^John^Quincy", "19610704", "M"),
        procedure_code="24627-2",
        procedure_text="CT",
        modality="CT",
        priority=OrderPriority.STAT,
        department="Emergency",
        status=OrderStatus.SCHEDULED,
        study_uid="1.2.826.0.1.3680043.2.1125.1",
    )


@pytest.mark.parametrize(
    ("fhir", "priority"),
    [
        ("routine", OrderPriority.ROUTINE),
        ("urgent", OrderPriority.ASAP),
        ("asap", OrderPriority.ASAP),
        ("stat", OrderPriority.STAT),
        (None, OrderPriority.ROUTINE),
    ],
)
def test_priority_codes(fhir: str | None, priority: OrderPriority) -> None:
    """routine → ROUTINE, urgent and asap → ASAP, stat → STAT; none given is ROUTINE."""
    assert order_from_service_request(service_request(priority=fhir)).priority is priority


@pytest.mark.parametrize(
    ("fhir", "status"),
    [
        ("draft", OrderStatus.ON_HOLD),
        ("active", OrderStatus.SCHEDULED),
        ("on-hold", OrderStatus.ON_HOLD),
        ("revoked", OrderStatus.CANCELLED),
        ("completed", OrderStatus.COMPLETED),
        ("entered-in-error", OrderStatus.CANCELLED),
    ],
)
def test_status_codes(fhir: str, status: OrderStatus) -> None:
    """Each request-status maps; revoked and entered-in-error cancel the order."""
    assert order_from_service_request(service_request(status=fhir)).status is status


@pytest.mark.parametrize(
    ("changes", "status", "element"),
    [
        ({"priority": "STAT"}, 400, "ServiceRequest.priority"),
        ({"status": "unknown"}, 400, "ServiceRequest.status"),
        ({"intent": "wish"}, 400, "ServiceRequest.intent"),
        ({"identifier": [typed("PLAC", "PL-1")]}, 422, "ServiceRequest.identifier"),
        (
            {"identifier": [{"system": "urn:dicom:uid", "value": "1.2.3"}]},
            400,
            "ServiceRequest.identifier[0].value",
        ),
        ({"identifier": [typed("ACSN", "A" * 65)]}, 400, "ServiceRequest.identifier[0].value"),
        ({"subject": {"reference": "#nobody"}}, 400, "ServiceRequest.subject.reference"),
        ({"subject": {"reference": "Group/5"}}, 422, "ServiceRequest.subject"),
    ],
)
def test_unusable_requests_name_the_element(
    changes: dict[str, Any], status: int, element: str
) -> None:
    """A bad code is 400, an order that cannot be correlated 422; each names its element."""
    with pytest.raises(FhirError) as caught:
        order_from_service_request(service_request(**changes))
    assert caught.value.status == status
    [issue] = caught.value.outcome()["issue"]
    assert issue["expression"] == [element]


def test_a_study_uid_alone_is_enough_and_a_patient_may_come_from_a_bundle() -> None:
    """Without ACSN a study UID identifier correlates; the subject resolves to a Bundle entry."""
    sr = service_request(
        identifier=[{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
        subject={"reference": "urn:uuid:abc"},
        contained=None,
    )
    bundle_patient = {
        "resourceType": "Patient",
        "identifier": [{"value": "P9"}],
        "gender": "other",
    }
    order = order_from_service_request(sr, {"urn:uuid:abc": bundle_patient})
    assert order.study_uid == "1.2.3" and order.accession_number is None
    assert order.patient == Patient("P9", None, None, None, "O")


def test_a_logical_subject_gives_the_patient_id() -> None:
    """``subject.identifier`` of a Patient radbridge does not hold gives its ID and issuer."""
    sr = service_request(
        subject={"reference": "Patient/123", "identifier": {"system": "HIS", "value": "P5"}},
        contained=None,
    )
    assert order_from_service_request(sr).patient == Patient("P5", "HIS")


def test_urgent_orders_keep_urgency_and_an_order_renders_as_a_valid_service_request() -> None:
    """Order → ServiceRequest validates with fhir.resources and maps back to the same order."""
    order = order_from_service_request(service_request(priority="urgent", status="on-hold"))
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    stored = StoredOrder(7, "abc", 3, order, now, now)
    resource = service_request_from_order(stored)
    validate(resource, "ServiceRequest")
    assert resource["meta"] == {"versionId": "3", "lastUpdated": "2025-01-02T03:04:05.000Z"}
    assert resource["id"] == "abc" and resource["priority"] == "asap"
    assert order_from_service_request(resource) == order


def test_an_hl7_order_without_patient_renders() -> None:
    """An order with little known still renders a valid ServiceRequest (subject by display)."""
    order = Order(source=OrderSource.HL7, accession_number="A1", status=OrderStatus.CANCELLED)
    now = datetime(2025, 1, 2, tzinfo=UTC)
    resource = service_request_from_order(StoredOrder(1, "r1", 1, order, now, now))
    validate(resource, "ServiceRequest")
    assert resource["status"] == "revoked" and "contained" not in resource
    assert order_from_service_request(resource) == Order(
        source=OrderSource.FHIR, accession_number="A1", status=OrderStatus.CANCELLED
    )


def test_a_partial_birth_date_is_left_out() -> None:
    """A Patient.birthDate of only a year (valid FHIR) gives no birth date, not an error."""
    sr = service_request()
    sr["contained"][0]["birthDate"] = "1961"
    validate(sr, "ServiceRequest")
    patient = order_from_service_request(sr).patient
    assert patient.birth_date is None and patient.patient_id == "PID-7"
