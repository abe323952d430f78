"""``fhir`` target: a result as a FHIR R4 DiagnosticReport with one Observation per finding.

The resources go in one ``transaction`` Bundle POSTed to the server's base
``url``; they are built as R4 JSON and validated with fhir.resources' R4B
models before they leave (like :mod:`adapters.fhir.resources`: R4B changed
none of the elements used here).

- DiagnosticReport: ``status`` preliminary, category RAD, code LOINC
  18748-4 "Diagnostic imaging study", ``basedOn`` the order's ServiceRequest
  (``ServiceRequest/<id>`` for an order that came by FHIR, and its placer
  number as identifier, type PLAC; the accession number, type ACSN, when there
  is no placer number), ``subject`` the patient by identifier,
  ``imagingStudy`` the ImagingStudy by identifier
  ``urn:dicom:uid``/``urn:oid:<Study Instance UID>``, ``conclusion`` the
  summary, ``result`` the Observations.
- Observation per finding: ``status`` preliminary, category imaging, ``code``
  the finding's code, ``valueCodeableConcept`` present/absent (SNOMED CT),
  ``interpretation`` A / AA (urgent) / N, ``component`` the score and the
  measurements (UCUM), ``bodySite``, ``note``, ``derivedFrom`` the ImagingStudy.

- DocumentReference (a target's ``render: [pdf]``): the summary PDF
  (:mod:`adapters.writeback.rendering`) as an attachment (``application/pdf``,
  base64, its language), ``docStatus`` preliminary, ``type`` LOINC 18748-4,
  ``subject`` the patient, ``context.related`` the DiagnosticReport.

Idempotent retries: every resource has an identifier made from the
delivery's ``message_id``, and every entry is a conditional create
(``ifNoneExist: identifier=urn:radbridge:delivery|<id>``), so a retry after a
lost response creates nothing twice. The ``fullUrl`` UUIDs derive from the
same id.

Corrections (:mod:`broker.model.correction`): the same resources, rebuilt with the
original delivery's ``message_id`` and sent as conditional updates
(``PUT DiagnosticReport?identifier=urn:radbridge:delivery|<id>``) with status
``entered-in-error`` (withdrawn) or ``amended`` (the subject as radbridge holds it
after a merge or update).

Outcome (:mod:`adapters.http_status`): 2xx is done; 408, 425, 429, 5xx,
timeouts and connection errors are retried; any other answer is refused for
good (the delivery is dead).
Settings (``targets.NAME``): ``url``; optional ``timeout``, ``render: [pdf]`` and
``language``; the token only from ``RADBRIDGE_TARGETS__NAME__TOKEN``
(``Authorization: Bearer``).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import httpx
from fhir.resources.R4B.bundle import Bundle
from pydantic import SecretStr, ValidationError

from adapters.http_status import Verdict, answered, failure, url_endpoint, verdict
from adapters.results.render.settings import Rendering, RenderSettings
from adapters.writeback.base import TargetRejectedError, TargetUnavailableError
from adapters.writeback.rendering import summary_pdf_for
from broker.model.domain import Code, Finding, Order, Result, StoredOrder, Study
from broker.model.reconciliation import provenance_text
from broker.model.target import TargetSettings, WritebackTarget
from broker.model.writeback import WritebackItem
from config.base import HttpUrl, Timeout

IDENTIFIER_SYSTEM = "urn:radbridge:delivery"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


class FhirTargetSettings(RenderSettings, TargetSettings):
    """``targets.NAME`` for ``type: fhir`` (see the module docstring)."""

    type: Literal["fhir"] = "fhir"
    can_render: ClassVar[frozenset[Rendering]] = frozenset({Rendering.PDF})
    url: HttpUrl
    """The FHIR server's base URL; the transaction Bundle is POSTed there."""
    token: SecretStr | None = None
    timeout: Timeout = 30.0

    def build(self, name: str) -> FhirTarget:
        return FhirTarget(name, self)

    def endpoint(self) -> tuple[str, int] | None:
        return url_endpoint(self.url)


def _coding(code: Code) -> dict[str, Any]:
    coding: dict[str, Any] = {"code": code.value, "display": code.meaning}
    if code.system_uri:
        coding["system"] = code.system_uri
    return coding


def _concept(code: Code) -> dict[str, Any]:
    return {"coding": [_coding(code)], "text": code.meaning}


def _identifier_type(code: str) -> dict[str, Any]:
    return {"coding": [{"system": V2_0203, "code": code}]}


def _service_request(stored: StoredOrder | None, accession: str | None) -> dict[str, Any] | None:
    order = stored.order if stored is not None else None
    reference: dict[str, Any] = {"type": "ServiceRequest"}
    if order is not None and order.source.value == "fhir" and stored is not None:
        reference["reference"] = f"ServiceRequest/{stored.resource_id}"
    if order is not None and order.placer_number:
        reference["identifier"] = {"type": _identifier_type("PLAC"), "value": order.placer_number}
    elif accession:
        reference["identifier"] = {"type": _identifier_type("ACSN"), "value": accession}
    return reference if len(reference) > 1 else None


def _subject(order: Order | None, study: Study | None) -> dict[str, Any] | None:
    patient = order.patient if order is not None and order.patient.patient_id else None
    if patient is None and study is not None:
        patient = study.patient
    if patient is None or not patient.patient_id:
        return None
    identifier: dict[str, Any] = {"type": _identifier_type("MR"), "value": patient.patient_id}
    if patient.issuer:
        identifier["assigner"] = {"display": patient.issuer}
    return {"type": "Patient", "identifier": identifier}


def _interpretation(finding: Finding) -> str:
    if not finding.present:
        return "N"
    return "AA" if finding.urgent else "A"


def _observation(
    finding: Finding,
    *,
    identifier: str,
    based_on: list[dict[str, Any]],
    subject: dict[str, Any] | None,
    when: str,
    imaging_study: dict[str, Any],
    method: str,
) -> dict[str, Any]:
    present = ("52101004", "Present") if finding.present else ("272519000", "Absent")
    components: list[dict[str, Any]] = []
    if finding.score is not None:
        components.append(
            {
                "code": {"text": "AI probability score"},
                "valueQuantity": {"value": finding.score, "unit": "1", "system": UCUM, "code": "1"},
            }
        )
    for m in finding.measurements:
        components.append(
            {
                "code": _concept(m.name),
                "valueQuantity": {"value": m.value, "unit": m.unit, "system": UCUM, "code": m.unit},
            }
        )
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier}],
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "imaging",
                    }
                ]
            }
        ],
        "code": _concept(finding.code),
        "effectiveDateTime": when,
        "valueCodeableConcept": {
            "coding": [{"system": SNOMED, "code": present[0], "display": present[1]}],
            "text": present[1],
        },
        "interpretation": [
            {"coding": [{"system": INTERPRETATION, "code": _interpretation(finding)}]}
        ],
        "method": {"text": method},
        "derivedFrom": [imaging_study],
    }
    if based_on:
        obs["basedOn"] = based_on
    if subject is not None:
        obs["subject"] = subject
    if components:
        obs["component"] = components
    if finding.site is not None:
        obs["bodySite"] = _concept(finding.site)
    if finding.text:
        obs["note"] = [{"text": finding.text}]
    return obs


def _entry(resource: dict[str, Any], full_url: str) -> dict[str, Any]:
    identifier = resource["identifier"][0]["value"]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": f"identifier={IDENTIFIER_SYSTEM}|{identifier}",
        },
    }


def _document(
    pdf: bytes,
    *,
    message_id: str,
    title: str,
    language: str | None,
    subject: dict[str, Any] | None,
    when: str,
    report_url: str,
) -> dict[str, Any]:
    attachment: dict[str, Any] = {
        "contentType": "application/pdf",
        "data": base64.b64encode(pdf).decode("ascii"),
        "title": title,
        "creation": when,
    }
    if language:
        attachment["language"] = language.replace("_", "-")
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": f"{message_id}-pdf"}],
        "status": "current",
        "docStatus": "preliminary",
        "type": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "18748-4",
                    "display": "Diagnostic imaging study",
                }
            ],
            "text": title,
        },
        "date": when,
        "description": title,
        "content": [{"attachment": attachment}],
        "context": {"related": [{"reference": report_url}]},
    }
    if subject is not None:
        document["subject"] = subject
    return document


def build_bundle(
    *,
    message_id: str,
    result: Result,
    order: StoredOrder | None,
    study: Study | None,
    pdf: bytes | None = None,
    language: str | None = None,
    methods: Sequence[str] = (),
) -> dict[str, Any]:
    """The transaction Bundle of ``result`` (see the module docstring), validated.

    ``pdf``: the summary PDF (in ``language``), sent as a DocumentReference. ``methods``
    (one per finding) name each finding's own product in its Observation's ``method``: a
    route's combined answer of several products."""
    plain_order = order.order if order is not None else None
    accession = (plain_order.accession_number if plain_order else None) or (
        study.accession_number if study is not None else None
    )
    at = (result.completed_at or result.updated_at).isoformat()
    findings = result.findings
    product = findings.algorithm.product if findings else (result.vendor or "AI")
    method = (
        f"{findings.algorithm.vendor} {findings.algorithm.product} {findings.algorithm.version}"
        if findings
        else product
    )
    request = _service_request(order, accession)
    based_on = [request] if request is not None else []
    subject = _subject(plain_order, study)
    imaging_study = {
        "type": "ImagingStudy",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{result.study_uid}"},
    }
    entries: list[dict[str, Any]] = []
    refs: list[dict[str, str]] = []
    for i, finding in enumerate(findings.findings if findings else (), 1):
        full_url = (
            f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{IDENTIFIER_SYSTEM}:{message_id}:{i}')}"
        )
        obs = _observation(
            finding,
            identifier=f"{message_id}-{i}",
            based_on=based_on,
            subject=subject,
            when=at,
            imaging_study=imaging_study,
            method=methods[i - 1] if methods else method,
        )
        entries.append(_entry(obs, full_url))
        refs.append({"reference": full_url})
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": message_id}],
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "RAD",
                        "display": "Radiology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "18748-4",
                    "display": "Diagnostic imaging study",
                }
            ],
            "text": f"AI result: {product}",
        },
        "effectiveDateTime": at,
        "issued": at,
        "imagingStudy": [imaging_study],
    }
    if based_on:
        report["basedOn"] = based_on
    if subject is not None:
        report["subject"] = subject
    if refs:
        report["result"] = refs
    if findings is not None and findings.summary:
        report["conclusion"] = findings.summary
    report_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{IDENTIFIER_SYSTEM}:{message_id}')}"
    if pdf is not None:
        document = _document(
            pdf,
            message_id=message_id,
            title=f"AI result: {product}",
            language=language,
            subject=subject,
            when=at,
            report_url=report_url,
        )
        document_url = (
            f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{IDENTIFIER_SYSTEM}:{message_id}:pdf')}"
        )
        entries.append(_entry(document, document_url))
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": IDENTIFIER_SYSTEM, "value": message_id},
        "type": "transaction",
        "entry": [_entry(report, report_url), *entries],
    }
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise TargetRejectedError(f"the DiagnosticReport bundle is not valid FHIR: {exc}") from exc
    return bundle


def correction_bundle(bundle: dict[str, Any], *, message_id: str, withdraw: bool) -> dict[str, Any]:
    """The ``bundle`` a result delivery sent, as a correction: every resource replaced by
    a conditional update on its identifier (``PUT Type?identifier=…``), with status
    ``entered-in-error`` (withdrawn) or ``amended`` (corrected, e.g. the merged patient's
    subject); the Bundle's own identifier is the correction delivery's. Validated."""
    entries = []
    for entry in bundle["entry"]:
        resource = dict(entry["resource"])
        kind = resource["resourceType"]
        if kind == "DocumentReference":
            resource["status"] = "entered-in-error" if withdraw else "current"
            resource["docStatus"] = "entered-in-error" if withdraw else "amended"
        else:
            resource["status"] = "entered-in-error" if withdraw else "amended"
        identifier = resource["identifier"][0]["value"]
        entries.append(
            {
                "fullUrl": entry["fullUrl"],
                "resource": resource,
                "request": {
                    "method": "PUT",
                    "url": f"{kind}?identifier={IDENTIFIER_SYSTEM}|{identifier}",
                },
            }
        )
    corrected = {
        **bundle,
        "identifier": {"system": IDENTIFIER_SYSTEM, "value": message_id},
        "entry": entries,
    }
    try:
        Bundle.model_validate(corrected)
    except ValidationError as exc:
        raise TargetRejectedError(f"the correction bundle is not valid FHIR: {exc}") from exc
    return corrected


class FhirTarget(WritebackTarget):
    """POST a transaction Bundle to one FHIR server."""

    retryable: tuple[type[Exception], ...] = (TargetUnavailableError,)

    def __init__(self, name: str, settings: FhirTargetSettings) -> None:
        self.name = name
        self.settings = settings
        self.url = settings.url.rstrip("/")
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self.client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(settings.timeout), follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"FhirTarget({self.name!r}, {self.url})"

    def deliver(self, item: WritebackItem) -> str:
        if item.result is None:
            raise TargetRejectedError(f"delivery {item.delivery.id} has no result to report")
        bundle = build_bundle(
            message_id=item.delivery.message_id,
            result=item.result,
            order=item.order,
            study=item.study,
            pdf=summary_pdf_for(item, self.settings),
            language=self.settings.language,
            methods=[provenance_text(f) for f in item.findings.live()]
            if item.delivery.event == "combined" and item.findings is not None
            else (),
        )
        self._post(bundle)
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"][1:]]
        said = f"DiagnosticReport and {kinds.count('Observation')} Observation(s)"
        if "DocumentReference" in kinds:
            said += " and a DocumentReference (PDF)"
        return f"{said} to {self.url}"

    def correct(self, item: WritebackItem) -> str:
        """The resources the original delivery made, updated by identifier: status
        ``entered-in-error`` (a rejection, a cancelled order) or ``amended`` (a patient
        change: subject and ServiceRequest as radbridge holds them now)."""
        why, original = item.correction, item.original
        if item.result is None or why is None or original is None:
            raise TargetRejectedError(
                f"delivery {item.delivery.id} has no result, correction or original to correct"
            )
        bundle = build_bundle(
            message_id=original.message_id,
            result=item.result,
            order=item.order,
            study=item.study,
            pdf=summary_pdf_for(item, self.settings),
            language=self.settings.language,
        )
        corrected = correction_bundle(
            bundle, message_id=item.delivery.message_id, withdraw=why.cause.withdraws
        )
        self._post(corrected)
        status = "entered-in-error" if why.cause.withdraws else "amended"
        return (
            f"{len(corrected['entry'])} resource(s) of {original.message_id} {status} at {self.url}"
        )

    def _post(self, bundle: dict[str, Any]) -> None:
        what = f"FHIR POST to {self.url}"
        try:
            response = self.client.post(self.url, content=json.dumps(bundle).encode("utf-8"))
        except httpx.TransportError as exc:
            raise TargetUnavailableError(failure(what, exc, self.settings.timeout)) from exc
        found = verdict(response.status_code)
        if found is Verdict.RETRY:
            raise TargetUnavailableError(answered(what, response))
        if found is Verdict.REFUSED:
            raise TargetRejectedError(answered(what, response))

    def close(self) -> None:
        self.client.close()
