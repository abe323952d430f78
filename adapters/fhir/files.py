"""FHIR orders read from a file (``radbridge routes explain FILES --order FILE``).

The file holds a ServiceRequest, or a transaction or batch Bundle of
ServiceRequests and the Patients they refer to, as JSON. It is validated and
mapped by the same code as a resource posted to the FHIR interface.
"""

from __future__ import annotations

from typing import Any

from adapters.fhir.mapping import order_from_service_request
from adapters.fhir.outcome import FhirError
from adapters.fhir.resources import (
    check_type,
    read_json,
    validate,
    validate_entry,
    validate_envelope,
)
from broker.model.domain import Order
from broker.model.errors import AdapterError


def orders_from_file(raw: bytes, default_charset: str = "utf-8") -> tuple[Order, ...]:
    """The orders of the ServiceRequest or Bundle in ``raw``; ``AdapterError`` naming the
    element that is wrong. ``default_charset`` is unused: FHIR JSON is UTF-8."""
    try:
        data = read_json(raw, "ServiceRequest")
        kind = check_type(data, ("ServiceRequest", "Bundle"), "resource")
        if kind == "ServiceRequest":
            validate(data, "ServiceRequest")
            return (order_from_service_request(data),)
        return _bundle_orders(data)
    except FhirError as exc:
        problems = "; ".join(issue.diagnostics for issue in exc.issues)
        raise AdapterError(f"not a usable FHIR order: {problems}") from exc


def _bundle_orders(data: dict[str, Any]) -> tuple[Order, ...]:
    entries = validate_envelope(data, ("transaction", "batch"))
    resources = [validate_entry(entry, n) for n, entry in enumerate(entries)]
    patients: dict[str, dict[str, Any]] = {}
    for entry, resource in zip(entries, resources, strict=True):
        if resource["resourceType"] != "Patient":
            continue
        url = (entry.get("request") or {}).get("url")
        for ref in (entry.get("fullUrl"), f"Patient/{resource.get('id')}", url):
            if isinstance(ref, str):
                patients[ref] = resource
    return tuple(
        order_from_service_request(r, patients, path=f"Bundle.entry[{n}].resource")
        for n, r in enumerate(resources)
        if r["resourceType"] == "ServiceRequest"
    )
