"""FHIR resources for tests: orders with fresh accession numbers, Bundles of Patient + orders."""

from __future__ import annotations

import uuid
from typing import Any

from adapters.fhir.mapping import DCM, V2_0203

FHIR_JSON = "application/fhir+json"


def typed(code: str, value: str, **more: Any) -> dict[str, Any]:
    """An identifier of v2-0203 type ``code`` (``ACSN``, ``PLAC``, ``MR``…)."""
    return {"type": {"coding": [{"system": V2_0203, "code": code}]}, "value": value, **more}


def service_request(accession: str | None = None, **changes: Any) -> dict[str, Any]:
    """A CT order with a contained patient and a fresh accession number."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "contained": [
            {
                "resourceType": "Patient",
                "id": "p",
                "identifier": [typed("MR", "PID-1", system="urn:oid:1.2.36.146")],
                "name": [{"family": "Chen", "given": ["Li"]}],
                "birthDate": "1980-02-29",
                "gender": "female",
            }
        ],
        "identifier": [
            typed("PLAC", f"PL-{uuid.uuid4().hex[:8]}"),
            typed("ACSN", accession or f"ACC-{uuid.uuid4().hex[:10]}"),
        ],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": DCM, "code": "CT"}]}],
        "priority": "stat",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "30799-1", "display": "CT Head"}]
        },
        "subject": {"reference": "#p"},
    }
    resource.update(changes)
    return resource


def accession_of(resource: dict[str, Any]) -> str:
    """The ACSN identifier's value of a ServiceRequest."""
    return next(
        i["value"] for i in resource["identifier"] if i["type"]["coding"][0]["code"] == "ACSN"
    )


def transaction(kind: str, *service_requests: dict[str, Any]) -> dict[str, Any]:
    """A Bundle of one Patient and ``service_requests`` whose subject is that Patient."""
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": {
                "resourceType": "Patient",
                "identifier": [typed("MR", "PID-77", system="urn:oid:1.2.36.146")],
                "name": [{"family": "Wang", "given": ["Fang"]}],
                "birthDate": "1990-05-06",
                "gender": "male",
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for sr in service_requests:
        alone = {k: v for k, v in sr.items() if k != "contained"}
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {**alone, "subject": {"reference": patient_url}},
                "request": {"method": "POST", "url": "ServiceRequest"},
            }
        )
    return {"resourceType": "Bundle", "type": kind, "entry": entries}
