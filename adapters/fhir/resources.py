"""Reading FHIR JSON bodies and validating them with fhir.resources (R4B models, R4 JSON).

fhir.resources 8 defaults to R5; radbridge speaks R4, whose ServiceRequest,
Patient and Bundle the R4B models validate (R4B changed none of their elements
that radbridge reads). Errors are :class:`FhirError` with an OperationOutcome
naming the element.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from adapters.fhir.outcome import FhirError, Issue, issues_of

#: The resource types radbridge accepts, and their fhir.resources models.
MODELS: dict[str, Any] = {
    "ServiceRequest": ServiceRequest,
    "Patient": FhirPatient,
    "Bundle": Bundle,
}


def read_json(body: bytes, expected: str) -> dict[str, Any]:
    """The JSON object of ``body``; 400 naming ``expected`` when it is not one."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FhirError.one(
            400,
            f"the body is not JSON ({exc}); valid: a FHIR R4 {expected} as application/fhir+json",
            expected,
            code="structure",
        ) from exc
    except RecursionError as exc:
        raise FhirError.one(400, "the body is nested too deeply", expected) from exc
    if not isinstance(data, dict):
        raise FhirError.one(
            400,
            f"the body is a JSON {type(data).__name__}; valid: a {expected} resource (an object)",
            expected,
            code="structure",
        )
    return data


def check_type(data: Mapping[str, Any], expected: tuple[str, ...], path: str) -> str:
    """``data``'s resourceType when it is one of ``expected``; 400 naming it otherwise."""
    kind = data.get("resourceType")
    if kind not in expected:
        raise FhirError.one(
            400,
            f"{path}.resourceType is {kind!r}; valid: {' or '.join(expected)}",
            f"{path}.resourceType",
            code="structure",
        )
    return str(kind)


def validate(data: Mapping[str, Any], path: str) -> None:
    """Validate one resource (``data['resourceType']`` in :data:`MODELS`) with fhir.resources."""
    model = MODELS[str(data["resourceType"])]
    try:
        model.model_validate(dict(data))
    except ValidationError as exc:
        raise FhirError(400, issues_of(exc, path)) from exc
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        # fhir.resources raises KeyError for an unknown contained resourceType
        raise FhirError(400, [Issue(f"{path} is not valid: {exc!r}", path)]) from exc


def validate_envelope(data: Mapping[str, Any], types: tuple[str, ...]) -> list[dict[str, Any]]:
    """Validate a Bundle but its entries' resources; returns the entries. ``type`` in ``types``."""
    entries = data.get("entry", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FhirError.one(400, "Bundle.entry must be a list of objects", "Bundle.entry")
    envelope = dict(data)
    if entries:
        envelope["entry"] = [{k: v for k, v in e.items() if k != "resource"} for e in entries]
    validate(envelope, "Bundle")
    if data.get("type") not in types:
        raise FhirError.one(
            400,
            f"Bundle.type is {data.get('type')!r}; valid: {' or '.join(types)}",
            "Bundle.type",
            code="not-supported",
        )
    return list(entries)


def validate_entry(entry: Mapping[str, Any], n: int) -> dict[str, Any]:
    """Validate the resource of entry ``n`` (a Patient or a ServiceRequest); returns it."""
    path = f"Bundle.entry[{n}].resource"
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        raise FhirError.one(400, f"{path} is missing; valid: a Patient or a ServiceRequest", path)
    check_type(resource, ("Patient", "ServiceRequest"), path)
    validate(resource, path)
    return resource
