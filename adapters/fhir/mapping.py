"""FHIR R4 ServiceRequest (+ Patient) ↔ the domain :class:`~broker.model.domain.Order`.

Works on resources already validated by fhir.resources (R4B models, JSON
dicts here), so only codes and radbridge's own rules are checked: a bad code
is a 400, an order radbridge cannot use (no accession number and no study UID)
a 422, each naming the element.

ServiceRequest → Order:

- ``identifier`` typed ``PLAC`` / ``FILL`` / ``ACSN`` (v2-0203) → placer /
  filler / accession number; the accession's ``system``, else its
  ``assigner`` (display or identifier value), is the ``issuer``; an identifier
  with ``system`` ``urn:dicom:uid`` and value ``urn:oid:<UID>`` is the study
  instance UID.
- ``code.coding[0]`` → procedure code, its display (else ``code.text``) the text.
- modality: the first coding with system ``http://dicom.nema.org/resources/ontology/DCM``
  in ``category``, then ``orderDetail``, then ``code``.
- ``priority``: routine → ROUTINE, urgent → ASAP, asap → ASAP, stat → STAT
  (urgent is more than routine; radbridge's levels are STAT/ASAP/ROUTINE and
  rounding it down would lose the urgency).
- ``status``: draft and on-hold → ON_HOLD, active → SCHEDULED, completed →
  COMPLETED, revoked and entered-in-error → CANCELLED; ``unknown`` is refused.
- department: ``locationCode[0]`` (text, else the first coding's display or
  code), else ``requester.display``.
- ``subject`` → the patient: a contained Patient (``#id``), a Patient of the
  same Bundle (by ``fullUrl`` or ``Patient/<id>``), or a logical reference's
  ``identifier``. Patient: the identifier typed ``MR`` (else the first) → ID
  with its ``system`` or assigner as issuer, the official (else first) name →
  ``Family^Given^Middle^Prefix^Suffix``, ``birthDate`` → ``YYYYMMDD`` (a
  partial date is left out),
  ``gender`` → M / F / O / U.

Order → ServiceRequest (:func:`service_request_from_order`) writes the same
elements back, the patient as a contained Patient.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from adapters.dicom_uid import VALID_UID, uid_problem
from adapters.fhir.outcome import FhirError, Issue
from broker.model.domain import (
    Order,
    OrderPriority,
    OrderSource,
    OrderStatus,
    Patient,
    StoredOrder,
)

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"
#: What the store keeps of an identifier, a code and a modality.
MAX_ID = 64
MAX_ISSUER = 256
MAX_MODALITY = 16

PRIORITY_IN = {
    "routine": OrderPriority.ROUTINE,
    "urgent": OrderPriority.ASAP,
    "asap": OrderPriority.ASAP,
    "stat": OrderPriority.STAT,
}
PRIORITY_OUT = {
    OrderPriority.ROUTINE: "routine",
    OrderPriority.ASAP: "asap",
    OrderPriority.STAT: "stat",
}
STATUS_IN = {
    "draft": OrderStatus.ON_HOLD,
    "active": OrderStatus.SCHEDULED,
    "on-hold": OrderStatus.ON_HOLD,
    "revoked": OrderStatus.CANCELLED,
    "completed": OrderStatus.COMPLETED,
    "entered-in-error": OrderStatus.CANCELLED,
}
STATUS_OUT = {
    OrderStatus.SCHEDULED: "active",
    OrderStatus.IN_PROGRESS: "active",
    OrderStatus.ON_HOLD: "on-hold",
    OrderStatus.COMPLETED: "completed",
    OrderStatus.CANCELLED: "revoked",
    OrderStatus.DISCONTINUED: "revoked",
}
INTENTS = frozenset(
    {
        "proposal",
        "plan",
        "directive",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
GENDER_IN = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
GENDER_OUT = {v: k for k, v in GENDER_IN.items()}
IDENTIFIER_TYPES = {"PLAC": "placer_number", "FILL": "filler_number", "ACSN": "accession_number"}


def _dicts(data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key)
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _text(data: Mapping[str, Any] | None, key: str) -> str | None:
    if not data:
        return None
    value = data.get(key)
    return value.strip() or None if isinstance(value, str) else None


def _bad(diagnostics: str, expression: str, status: int = 400, code: str = "value") -> FhirError:
    return FhirError(status, [Issue(f"{expression}: {diagnostics}", expression, code)])


def _bounded(value: str | None, expression: str, limit: int = MAX_ID) -> str | None:
    if value is not None and len(value) > limit:
        raise _bad(f"{len(value)} characters; valid: at most {limit}", expression)
    return value


def _code(data: Mapping[str, Any], key: str, valid: Mapping[str, Any], path: str) -> Any:
    value = _text(data, key)
    if value is None:
        return None
    if value not in valid:
        raise _bad(f"{value!r} is not a valid code; valid: {', '.join(valid)}", f"{path}.{key}")
    return valid[value]


def identifier_type(identifier: Mapping[str, Any]) -> str | None:
    """The v2-0203 type code of an identifier (``PLAC``, ``ACSN``, ``MR``…), or None."""
    for coding in _dicts(identifier.get("type") or {}, "coding"):
        if coding.get("system") in (None, V2_0203) and isinstance(coding.get("code"), str):
            code: str = coding["code"]
            return code
    return None


def assigner_of(identifier: Mapping[str, Any]) -> str | None:
    """An identifier's issuer: its ``system``, else its assigner's display or identifier."""
    system = _text(identifier, "system")
    if system:
        return system
    assigner = identifier.get("assigner") or {}
    return _text(assigner, "display") or _text(assigner.get("identifier") or {}, "value")


def study_uid_of(identifier: Mapping[str, Any], path: str) -> str | None:
    """The study instance UID of a ``urn:dicom:uid`` identifier, or None for another system."""
    if identifier.get("system") != DICOM_UID:
        return None
    value = _text(identifier, "value") or ""
    uid = value.removeprefix("urn:oid:")
    if not value.startswith("urn:oid:") or uid_problem(uid) is not None:
        raise _bad(
            f"{value!r} is not a DICOM UID; valid: urn:oid: followed by a UID ({VALID_UID})",
            f"{path}.value",
        )
    return uid


def _coding_in(concepts: list[dict[str, Any]], system: str) -> str | None:
    for concept in concepts:
        for coding in _dicts(concept, "coding"):
            if coding.get("system") == system and _text(coding, "code"):
                return _text(coding, "code")
    return None


def person_name(names: list[dict[str, Any]]) -> str | None:
    """The official (else first) HumanName as a DICOM PN: ``Family^Given^Middle^Prefix^Suffix``."""
    if not names:
        return None
    name = next((n for n in names if n.get("use") == "official"), names[0])
    given = [g for g in name.get("given") or [] if isinstance(g, str)]
    parts = [
        _text(name, "family") or "",
        given[0] if given else "",
        " ".join(given[1:]),
        " ".join(p for p in name.get("prefix") or [] if isinstance(p, str)),
        " ".join(s for s in name.get("suffix") or [] if isinstance(s, str)),
    ]
    pn = "^".join(parts).rstrip("^")
    return pn or _text(name, "text")


def patient_from_fhir(resource: Mapping[str, Any], path: str = "Patient") -> Patient:
    """A FHIR Patient as the domain Patient (ID and issuer, name, birth date, sex)."""
    identifiers = _dicts(resource, "identifier")
    chosen = next((i for i in identifiers if identifier_type(i) == "MR"), None)
    if chosen is None:
        chosen = next((i for i in identifiers if _text(i, "value")), None)
    index = identifiers.index(chosen) if chosen is not None else 0
    birth = _text(resource, "birthDate")
    if birth is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", birth):
        birth = None  # a partial date (1961, 1961-07) has no DICOM DA form: left out
    return Patient(
        patient_id=_bounded(_text(chosen, "value"), f"{path}.identifier[{index}].value"),
        issuer=_bounded(
            assigner_of(chosen) if chosen else None,
            f"{path}.identifier[{index}].system",
            MAX_ISSUER,
        ),
        name=person_name(_dicts(resource, "name")),
        birth_date=birth.replace("-", "") if birth else None,
        sex=_code(resource, "gender", GENDER_IN, path),
    )


def _subject(
    sr: Mapping[str, Any], patients: Mapping[str, Mapping[str, Any]], path: str
) -> Patient:
    subject = sr.get("subject") or {}
    reference = _text(subject, "reference")
    where = f"{path}.subject"
    if reference is None:
        logical = subject.get("identifier")
        if isinstance(logical, dict) and _text(logical, "value"):
            return patient_from_fhir({"identifier": [logical]}, f"{where}.identifier")
        return Patient()
    if reference.startswith("#"):
        for n, contained in enumerate(_dicts(sr, "contained")):
            if contained.get("id") == reference[1:]:
                if contained.get("resourceType") != "Patient":
                    raise _bad("radbridge takes orders for patients; valid: a Patient", where, 422)
                return patient_from_fhir(contained, f"{path}.contained[{n}]")
        raise _bad(f"no contained resource {reference}", f"{where}.reference")
    if reference in patients:
        return patient_from_fhir(patients[reference], f"Patient {reference}")
    kind = reference.split("/")[-2] if "/" in reference else None
    if kind is not None and kind != "Patient":
        raise _bad(
            f"{reference!r} is not a Patient; radbridge takes orders for patients", where, 422
        )
    if reference.startswith(("urn:uuid:", "urn:oid:")):
        raise _bad(f"{reference!r} is not an entry of this Bundle", f"{where}.reference", 422)
    # A Patient radbridge does not hold (Patient/123 on the RIS): its identifier, if any.
    logical = subject.get("identifier")
    if isinstance(logical, dict) and _text(logical, "value"):
        return patient_from_fhir({"identifier": [logical]}, f"{where}.identifier")
    return Patient()


def order_from_service_request(
    sr: Mapping[str, Any],
    patients: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    path: str = "ServiceRequest",
) -> Order:
    """The domain Order of a validated ServiceRequest (JSON); ``FhirError`` if unusable.

    ``patients`` maps references (a Bundle entry's ``fullUrl`` and
    ``Patient/<id>``) to Patient resources of the same Bundle; ``path``
    prefixes the elements named in errors (``Bundle.entry[1].resource``).
    """
    numbers: dict[str, str] = {}
    issuer: str | None = None
    study_uid: str | None = None
    for n, identifier in enumerate(_dicts(sr, "identifier")):
        where = f"{path}.identifier[{n}]"
        uid = study_uid_of(identifier, where)
        if uid is not None:
            if study_uid is not None and uid != study_uid:
                raise _bad("a second, different study UID", where)
            study_uid = uid
            continue
        field = IDENTIFIER_TYPES.get(identifier_type(identifier) or "")
        value = _bounded(_text(identifier, "value"), f"{where}.value")
        if field is None or value is None:
            continue
        if field in numbers and numbers[field] != value:
            raise _bad(f"a second, different {identifier_type(identifier)} identifier", where)
        numbers[field] = value
        if field == "accession_number":
            issuer = _bounded(assigner_of(identifier), f"{where}.system", MAX_ISSUER)
    if "accession_number" not in numbers and study_uid is None:
        raise FhirError(
            422,
            [
                Issue(
                    f"{path}.identifier: radbridge cannot correlate this order with a study; "
                    f"valid: an identifier of type ACSN ({V2_0203}) with the accession number, "
                    f"or one with system {DICOM_UID} and value urn:oid:<Study Instance UID>",
                    f"{path}.identifier",
                    "required",
                )
            ],
        )
    _code(sr, "intent", {i: i for i in INTENTS}, path)
    if sr.get("status") == "unknown":
        raise _bad(f"'unknown' cannot be acted on; valid: {', '.join(STATUS_IN)}", f"{path}.status")
    code = sr.get("code") or {}
    codings = _dicts(code, "coding")
    first = codings[0] if codings else {}
    modality = (
        _coding_in(_dicts(sr, "category"), DCM)
        or _coding_in(_dicts(sr, "orderDetail"), DCM)
        or _coding_in([code], DCM)
    )
    location = _dicts(sr, "locationCode")
    department = None
    if location:
        loc_codings = _dicts(location[0], "coding")
        department = _text(location[0], "text") or next(
            (_text(c, "display") or _text(c, "code") for c in loc_codings), None
        )
    department = department or _text(sr.get("requester") or {}, "display")
    return Order(
        source=OrderSource.FHIR,
        placer_number=numbers.get("placer_number"),
        filler_number=numbers.get("filler_number"),
        accession_number=numbers.get("accession_number"),
        issuer=issuer,
        patient=_subject(sr, patients or {}, path),
        procedure_code=_bounded(_text(first, "code"), f"{path}.code.coding[0].code"),
        procedure_text=_text(first, "display") or _text(code, "text"),
        modality=_bounded(modality, f"{path}.category", MAX_MODALITY),
        priority=_code(sr, "priority", PRIORITY_IN, path) or OrderPriority.ROUTINE,
        department=department,
        status=_code(sr, "status", STATUS_IN, path) or OrderStatus.SCHEDULED,
        study_uid=study_uid,
    )


def _typed(code: str, value: str, system: str | None = None) -> dict[str, Any]:
    identifier: dict[str, Any] = {"type": {"coding": [{"system": V2_0203, "code": code}]}}
    if system:
        identifier["system"] = system
    identifier["value"] = value
    return identifier


def patient_to_fhir(patient: Patient, resource_id: str = "patient") -> dict[str, Any] | None:
    """The domain Patient as a FHIR Patient, or None when nothing is known of it."""
    resource: dict[str, Any] = {"resourceType": "Patient", "id": resource_id}
    if patient.patient_id:
        resource["identifier"] = [_typed("MR", patient.patient_id, patient.issuer)]
    if patient.name:
        family, given, middle, prefix, suffix = (patient.name.split("^") + [""] * 5)[:5]
        name: dict[str, Any] = {}
        if family:
            name["family"] = family
        if given or middle:
            name["given"] = [g for g in [given, *middle.split()] if g]
        if prefix:
            name["prefix"] = prefix.split()
        if suffix:
            name["suffix"] = suffix.split()
        resource["name"] = [name or {"text": patient.name}]
    if patient.sex and patient.sex.upper() in GENDER_OUT:
        resource["gender"] = GENDER_OUT[patient.sex.upper()]
    birth = patient.birth_date
    if birth and re.fullmatch(r"\d{8}", birth):
        resource["birthDate"] = f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"
    return resource if len(resource) > 2 else None


def meta_of(stored: StoredOrder) -> dict[str, Any]:
    """``meta`` of the order's ServiceRequest: its version and last update."""
    return {
        "versionId": str(stored.version),
        "lastUpdated": stored.updated_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def service_request_from_order(stored: StoredOrder) -> dict[str, Any]:
    """The stored order as an R4 ServiceRequest (JSON), whatever interface it came on."""
    order = stored.order
    identifiers = []
    if order.placer_number:
        identifiers.append(_typed("PLAC", order.placer_number))
    if order.filler_number:
        identifiers.append(_typed("FILL", order.filler_number))
    if order.accession_number:
        identifiers.append(_typed("ACSN", order.accession_number, order.issuer))
    if order.study_uid:
        identifiers.append({"system": DICOM_UID, "value": f"urn:oid:{order.study_uid}"})
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": stored.resource_id,
        "meta": meta_of(stored),
    }
    patient = patient_to_fhir(order.patient)
    if patient is not None:
        resource["contained"] = [patient]
    if identifiers:
        resource["identifier"] = identifiers
    resource["status"] = STATUS_OUT[order.status]
    resource["intent"] = "order"
    if order.modality:
        resource["category"] = [{"coding": [{"system": DCM, "code": order.modality}]}]
    resource["priority"] = PRIORITY_OUT[order.priority]
    if order.procedure_code or order.procedure_text:
        coding = {"code": order.procedure_code, "display": order.procedure_text}
        resource["code"] = {
            "coding": [{k: v for k, v in coding.items() if v}],
            **({"text": order.procedure_text} if order.procedure_text else {}),
        }
    resource["subject"] = {"reference": "#patient"} if patient else {"display": "unknown patient"}
    if order.department:
        resource["locationCode"] = [{"text": order.department}]
    return resource
