"""The CapabilityStatement of radbridge's FHIR interface: exactly what the routes implement."""

from __future__ import annotations

from datetime import date
from typing import Any

from adapters.fhir.mapping import DICOM_UID, V2_0203
from broker.model.domain import Role

#: The ServiceRequest interactions the routes implement (``/fhir/ServiceRequest…``).
SERVICE_REQUEST_INTERACTIONS = ("read", "update", "create", "search-type")
#: The system interactions (``POST /fhir`` with a Bundle).
SYSTEM_INTERACTIONS = ("transaction", "batch")
#: Who may do what (``Authorization: Bearer``; ``GET /fhir/metadata`` needs no token).
ROLES = {"read": Role.VIEWER, "search-type": Role.VIEWER, "create": Role.OPERATOR}
ROLES |= {"update": Role.OPERATOR, "transaction": Role.OPERATOR, "batch": Role.OPERATOR}


def capability_statement(base_url: str, software_version: str) -> dict[str, Any]:
    """The CapabilityStatement served at ``GET /fhir/metadata``."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date.today().isoformat(),
        "publisher": "radbridge",
        "kind": "instance",
        "software": {"name": "radbridge", "version": software_version},
        "implementation": {
            "description": "radbridge orders interface (imaging orders for AI routing)",
            "url": base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Only ServiceRequest (with its Patient) is served. Reading and search need "
                    "a bearer token of role viewer or higher; create, update, transaction "
                    "and batch need operator or higher; this statement needs none. "
                    "Tokens: radbridge tokens create --role viewer|operator|admin."
                ),
                "security": {
                    "cors": False,
                    "service": [{"text": "Bearer token (Authorization: Bearer <token>)"}],
                    "description": "Bearer tokens with roles viewer < operator < admin.",
                },
                "resource": [
                    {
                        "type": "ServiceRequest",
                        "profile": "http://hl7.org/fhir/StructureDefinition/ServiceRequest",
                        "documentation": (
                            "An order must carry an accession number (identifier of type "
                            f"ACSN, {V2_0203}) or a study instance UID (identifier with "
                            f"system {DICOM_UID}, value urn:oid:<UID>); otherwise 422. "
                            "A create whose identifiers (placer, filler, or accession number "
                            "and issuer) match an order radbridge holds updates that order "
                            "and answers 200. Patients come contained or as Bundle entries."
                        ),
                        "interaction": [
                            {"code": code, "documentation": f"needs {ROLES[code].value}"}
                            for code in SERVICE_REQUEST_INTERACTIONS
                        ],
                        "versioning": "versioned-update",
                        "readHistory": False,
                        "updateCreate": True,
                        "conditionalCreate": False,
                        "conditionalUpdate": False,
                        "conditionalDelete": "not-supported",
                        "searchParam": [
                            {
                                "name": "identifier",
                                "definition": "http://hl7.org/fhir/SearchParameter/"
                                "ServiceRequest-identifier",
                                "type": "token",
                                "documentation": (
                                    "VALUE (accession, placer or filler number), "
                                    "SYSTEM|VALUE (accession number with that issuer), or "
                                    f"identifier:of-type={V2_0203}|ACSN|VALUE (also PLAC, "
                                    "FILL); one value per parameter"
                                ),
                            }
                        ],
                    }
                ],
                "interaction": [
                    {"code": code, "documentation": f"needs {ROLES[code].value}"}
                    for code in SYSTEM_INTERACTIONS
                ],
            }
        ],
    }
