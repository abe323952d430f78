"""The REST API's resources (pydantic models, so ``/docs`` shows them) and their converters."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field

from broker.model.domain import (
    Code,
    Finding,
    Findings,
    OrderLink,
    Patient,
    Result,
    Series,
    StoredOrder,
    Study,
)
from broker.model.jobs import Job, JobEvent
from broker.model.writeback import Delivery, DeliveryEvent
from config.schema import Settings


class SeriesOut(BaseModel):
    series_uid: str
    modality: str | None
    body_part: str | None
    description: str | None
    series_number: int | None
    slice_thickness: float | None
    image_type: list[str]
    instances: int
    size: int


PHI_NOTE = "Null for viewer tokens: patient data is for operators and admins."


class PatientOut(BaseModel):
    """The patient; ``patient_id``, ``name`` and ``birth_date`` are null for viewer tokens."""

    patient_id: str | None = Field(description=PHI_NOTE)
    issuer: str | None
    name: str | None = Field(description=PHI_NOTE)
    birth_date: str | None = Field(description=PHI_NOTE)
    sex: str | None


class StudyOut(BaseModel):
    study_uid: str
    patient: PatientOut
    accession_number: str | None
    study_date: str | None
    description: str | None
    modalities: list[str]
    body_parts: list[str]
    state: str
    revision: int
    series_count: int
    instances: int
    size: int
    calling_ae: str
    called_ae: str
    peer_address: str
    first_received_at: datetime
    last_received_at: datetime
    stable_at: datetime | None
    site: str | None = None
    """The id of the site that sent it (``sites:``); null: the hub's own."""


class JobOut(BaseModel):
    id: int
    study_uid: str
    vendor: str
    route: str
    priority: str
    state: str
    attempts: int
    max_attempts: int
    series_uids: list[str]
    deadline_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    study_revision: int
    shadow: str | None = None
    """Why the job runs as a silent trial (``configuration``, ``contract``…); null: live."""


class WorkEventOut(BaseModel):
    """One transition of a job or a write-back delivery."""

    at: datetime
    from_state: str | None
    to_state: str
    attempt: int
    error: str | None
    worker: str | None = None
    """The job-engine worker that took the step (a claim, an attempt's outcome)."""
    snapshot: str | None = None
    """The configuration snapshot the step was taken under."""


class JobEventOut(WorkEventOut):
    pass


class JobDetail(JobOut):
    history: list[JobEventOut]


class OrderLinkOut(BaseModel):
    study_uid: str
    order_id: int
    state: str
    matched_on: str
    detail: str | None


class OrderOut(BaseModel):
    id: int
    resource_id: str
    version: int
    source: str
    site: str | None = None
    """The id of the site whose RIS sent it (MSH-4); null: the hub's own."""
    placer_number: str | None
    filler_number: str | None
    accession_number: str | None
    patient: PatientOut
    procedure_code: str | None
    procedure_text: str | None
    modality: str | None
    priority: str
    department: str | None
    status: str
    study_uid: str | None
    created_at: datetime
    updated_at: datetime


class StudyDetail(StudyOut):
    series: list[SeriesOut]
    order_link: OrderLinkOut | None
    order: OrderOut | None
    jobs: list[JobOut]


class OrderDetail(OrderOut):
    studies: list[OrderLinkOut]


def series_out(s: Series) -> SeriesOut:
    return SeriesOut(
        series_uid=s.series_uid,
        modality=s.modality,
        body_part=s.body_part,
        description=s.description,
        series_number=s.series_number,
        slice_thickness=s.slice_thickness,
        image_type=list(s.image_type),
        instances=s.instance_count,
        size=s.size,
    )


def _patient(p: Patient, *, phi: bool) -> PatientOut:
    """``p`` as the caller may see it: without name, ID and birth date unless ``phi``
    (:attr:`broker.model.domain.Role.sees_phi`)."""
    return PatientOut(
        patient_id=p.patient_id if phi else None,
        issuer=p.issuer,
        name=p.name if phi else None,
        birth_date=p.birth_date if phi else None,
        sex=p.sex,
    )


def study_fields(s: Study, *, phi: bool) -> dict[str, Any]:
    return {
        "study_uid": s.study_uid,
        "patient": _patient(s.patient, phi=phi),
        "accession_number": s.accession_number,
        "study_date": s.study_date,
        "description": s.description,
        "modalities": list(s.modalities),
        "body_parts": list(s.body_parts),
        "state": s.state.value,
        "revision": s.revision,
        "series_count": len(s.series),
        "instances": s.instance_count,
        "size": s.size,
        "calling_ae": s.calling_ae,
        "called_ae": s.called_ae,
        "peer_address": s.peer_address,
        "first_received_at": s.first_received_at,
        "last_received_at": s.last_received_at,
        "stable_at": s.stable_at,
        "site": s.site,
    }


def study_out(s: Study, *, phi: bool) -> StudyOut:
    return StudyOut(**study_fields(s, phi=phi))


def job_fields(j: Job) -> dict[str, Any]:
    return {
        "id": j.id,
        "study_uid": j.study_uid,
        "vendor": j.vendor,
        "route": j.route,
        "priority": j.priority.value,
        "state": j.state.value,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "series_uids": list(j.series_uids),
        "deadline_at": j.deadline_at,
        "next_attempt_at": j.next_attempt_at,
        "last_error": j.last_error,
        "created_at": j.created_at,
        "updated_at": j.updated_at,
        "study_revision": j.study_revision,
        "shadow": j.shadow.value if j.shadow is not None else None,
    }


def job_out(j: Job) -> JobOut:
    return JobOut(**job_fields(j))


def _event_fields(e: JobEvent | DeliveryEvent) -> dict[str, Any]:
    return {
        "at": e.at,
        "from_state": e.from_state.value if e.from_state else None,
        "to_state": e.to_state.value,
        "attempt": e.attempt,
        "error": e.error,
        "worker": e.worker,
        "snapshot": e.snapshot,
    }


def event_out(e: JobEvent) -> JobEventOut:
    return JobEventOut(**_event_fields(e))


def link_out(link: OrderLink) -> OrderLinkOut:
    return OrderLinkOut(
        study_uid=link.study_uid,
        order_id=link.order_id,
        state=link.state.value,
        matched_on=link.matched_on,
        detail=link.detail,
    )


def order_fields(stored: StoredOrder, *, phi: bool) -> dict[str, Any]:
    o = stored.order
    return {
        "id": stored.id,
        "resource_id": stored.resource_id,
        "version": stored.version,
        "source": o.source.value,
        "site": o.site,
        "placer_number": o.placer_number,
        "filler_number": o.filler_number,
        "accession_number": o.accession_number,
        "patient": _patient(o.patient, phi=phi),
        "procedure_code": o.procedure_code,
        "procedure_text": o.procedure_text,
        "modality": o.modality,
        "priority": o.priority.value,
        "department": o.department,
        "status": o.status.value,
        "study_uid": o.study_uid,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
    }


def order_out(stored: StoredOrder, *, phi: bool) -> OrderOut:
    return OrderOut(**order_fields(stored, phi=phi))


# ------------------------------------------------------------ results and deliveries


class RegulatoryOut(BaseModel):
    nmpa_class: str | None
    certificate: str | None
    valid_from: str | None
    valid_until: str | None
    fda: str | None
    ce: str | None
    intended_use: str | None
    version: str | None
    certificate_valid: bool
    """The NMPA certificate covers today (a product without one runs in shadow mode unless
    the configuration says otherwise)."""
    problem: str | None


class ProductOut(BaseModel):
    """The vendor product a result came from, as the hospital configured it."""

    vendor: str
    product: str
    kind: str | None
    mode: str
    regulatory: RegulatoryOut | None
    label: str | None
    """The product and its regulatory data in one line (as named in the SR and ORU)."""


def product_out(settings: Settings, vendor: str | None, today: date) -> ProductOut | None:
    """The configured product ``vendor`` names (None: no such vendor configured)."""
    found = settings.vendors.get(vendor) if vendor is not None else None
    if found is None or vendor is None:
        return None
    regulatory = found.regulatory.regulatory() if found.regulatory is not None else None
    return ProductOut(
        vendor=vendor,
        product=found.product,
        kind=found.kind,
        mode=found.mode.value,
        regulatory=RegulatoryOut.model_validate(regulatory.as_json(today)) if regulatory else None,
        label=settings.regulatory_label(vendor),
    )


class ResultOut(BaseModel):
    id: int
    job_id: int | None
    orphan: bool
    study_uid: str
    vendor: str | None
    state: str
    urgent: bool
    objects: int
    findings: int | None
    """How many findings the result has (null: no findings, only DICOM objects)."""
    expected_objects: int | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    product: ProductOut | None = None
    """The configured product with its regulatory data (null: the vendor is not configured)."""


class ResultObjectOut(BaseModel):
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    size: int
    origin: str
    receive_count: int


class CodeOut(BaseModel):
    system: str
    value: str
    meaning: str


class MeasurementOut(BaseModel):
    name: CodeOut
    value: float
    unit: str


class FindingOut(BaseModel):
    code: CodeOut
    present: bool
    score: float | None
    urgent: bool
    text: str | None
    site: CodeOut | None
    measurements: list[MeasurementOut]


class AlgorithmOut(BaseModel):
    vendor: str
    product: str
    version: str


class FindingsOut(BaseModel):
    algorithm: AlgorithmOut
    complete: bool
    summary: str | None
    present: int
    urgent: bool
    findings: list[FindingOut]


class DeliveryOut(BaseModel):
    id: int
    result_id: int | None
    job_id: int | None
    study_uid: str
    target: str
    target_type: str
    kind: str
    event: str
    urgent: bool
    state: str
    attempts: int
    max_attempts: int
    message_id: str
    next_attempt_at: datetime | None
    last_error: str | None
    detail: str | None
    created_at: datetime
    updated_at: datetime


class DeliveryEventOut(WorkEventOut):
    pass


class DeliveryDetail(DeliveryOut):
    history: list[DeliveryEventOut]


class ResultDetail(ResultOut):
    calling_ae: str | None
    complete_reason: str | None
    error: str | None
    due_at: datetime | None
    object_list: list[ResultObjectOut]
    findings_summary: FindingsOut | None
    deliveries: list[DeliveryOut]


def result_fields(r: Result) -> dict[str, Any]:
    return {
        "id": r.id,
        "job_id": r.job_id,
        "orphan": r.job_id is None,
        "study_uid": r.study_uid,
        "vendor": r.vendor,
        "state": r.state.value,
        "urgent": r.urgent,
        "objects": len(r.objects),
        "findings": len(r.findings.findings) if r.findings is not None else None,
        "expected_objects": r.expected_objects,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "completed_at": r.completed_at,
    }


def result_out(r: Result, product: ProductOut | None = None) -> ResultOut:
    return ResultOut(**result_fields(r), product=product)


def code_out(c: Code) -> CodeOut:
    return CodeOut(system=c.system, value=c.value, meaning=c.meaning)


def finding_out(f: Finding) -> FindingOut:
    return FindingOut(
        code=code_out(f.code),
        present=f.present,
        score=f.score,
        urgent=f.urgent,
        text=f.text,
        site=code_out(f.site) if f.site is not None else None,
        measurements=[
            MeasurementOut(name=code_out(m.name), value=m.value, unit=m.unit)
            for m in f.measurements
        ],
    )


def findings_out(f: Findings) -> FindingsOut:
    a = f.algorithm
    return FindingsOut(
        algorithm=AlgorithmOut(vendor=a.vendor, product=a.product, version=a.version),
        complete=f.complete,
        summary=f.summary,
        present=sum(1 for x in f.findings if x.present),
        urgent=f.urgent,
        findings=[finding_out(x) for x in f.findings],
    )


def delivery_fields(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "result_id": d.result_id,
        "job_id": d.job_id,
        "study_uid": d.study_uid,
        "target": d.target,
        "target_type": d.target_type,
        "kind": d.kind.value,
        "event": d.event,
        "urgent": d.urgent,
        "state": d.state.value,
        "attempts": d.attempts,
        "max_attempts": d.max_attempts,
        "message_id": d.message_id,
        "next_attempt_at": d.next_attempt_at,
        "last_error": d.last_error,
        "detail": d.detail,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }


def delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(**delivery_fields(d))


def delivery_event_out(e: DeliveryEvent) -> DeliveryEventOut:
    return DeliveryEventOut(**_event_fields(e))
