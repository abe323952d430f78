"""HL7 v2 messages a RIS sends, written from domain values: the harness's RIS, tests, benchmarks.

Each builder is the inverse of :mod:`adapters.hl7.mapping` for the fields it
maps, so ``event_from_message(parse(orm_o01(order)))`` gives ``order`` back.
Values are escaped with the default separators.
"""

from __future__ import annotations

import itertools

from broker.model.domain import Order, OrderPriority, OrderSource, OrderStatus, Patient

_IDS = itertools.count(1)
ESCAPE = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"})

STATUS_CODES = {
    OrderStatus.SCHEDULED: "SC",
    OrderStatus.IN_PROGRESS: "IP",
    OrderStatus.COMPLETED: "CM",
    OrderStatus.ON_HOLD: "HD",
    OrderStatus.CANCELLED: "CA",
    OrderStatus.DISCONTINUED: "DC",
}
PRIORITY_CODES = {OrderPriority.STAT: "S", OrderPriority.ASAP: "A", OrderPriority.ROUTINE: "R"}


def esc(value: str | None) -> str:
    """``value`` with the default separators escaped (``|`` → ``\\F\\``…)."""
    return (value or "").translate(ESCAPE)


def segment(name: str, fields: dict[int, str]) -> str:
    """``name|…`` with each field at its number (fields are written as given, not escaped)."""
    top = max(fields, default=0)
    return "|".join([name, *(fields.get(n, "") for n in range(1, top + 1))])


def msh(
    kind: str,
    version: str,
    *,
    control_id: str | None = None,
    charset: str = "",
    accept_ack: str = "",
    application_ack: str = "",
    facility: str = "HOSP",
) -> str:
    """An MSH from RIS^``facility`` (default HOSP; a site's ``hl7_facility``) to
    RADBRIDGE^HOSP (MSH-1 is the ``|`` after MSH)."""
    structures = {"ORM^O01": "ORM_O01", "OMI^O23": "OMI_O23", "ADT^A40": "ADT_A39"}
    structures |= {"ORU^R01": "ORU_R01", "MDM^T02": "MDM_T02"}
    structure = structures.get(kind, "ADT_A01")
    fields = {
        3: "RIS",
        4: facility,
        5: "RADBRIDGE",
        6: "HOSP",
        7: "20240301101500",
        9: f"{kind}^{structure}" if version >= "2.3.1" else kind,
        10: control_id or f"MSG{next(_IDS):08d}",
        11: "P",
        12: version,
        15: accept_ack,
        16: application_ack,
        18: charset,
    }
    top = max(n for n, v in fields.items() if v)
    return "MSH|^~\\&" + "".join("|" + fields.get(n, "") for n in range(3, top + 1))


def pid(patient: Patient) -> str:
    family, given = [*(patient.name or "").split("^"), ""][:2]
    return segment(
        "PID",
        {
            1: "1",
            3: f"{esc(patient.patient_id)}^^^{esc(patient.issuer)}^MR~OTHER-ID^^^ELSEWHERE^PI",
            5: f"{esc(family)}^{esc(given)}",
            7: patient.birth_date or "",
            8: patient.sex or "",
        },
    )


def _orc(order: Order, control: str, priority_field: bool) -> str:
    fields = {
        1: control,
        2: esc(order.placer_number),
        3: esc(order.filler_number),
        5: STATUS_CODES[order.status] if control in ("NW", "XO", "SC") else "",
        17: esc(order.department),
    }
    if priority_field:
        fields[7] = f"^^^^^{PRIORITY_CODES[order.priority]}"
    return segment("ORC", fields)


def orm_o01(order: Order, *, control: str = "NW", version: str = "2.3.1", **header: str) -> str:
    """ORM^O01 (IHE SWF): accession OBR-18, requested procedure OBR-19, study UID in ZDS-1."""
    obr = segment(
        "OBR",
        {
            1: "1",
            2: esc(order.placer_number),
            3: esc(order.filler_number),
            4: f"{esc(order.procedure_code)}^{esc(order.procedure_text)}^LOCAL",
            18: esc(order.accession_number),
            19: esc(order.requested_procedure_id),
            24: esc(order.modality),
            44: f"{esc(order.procedure_code)}^{esc(order.procedure_text)}^LOCAL",
        },
    )
    segments = [
        msh("ORM^O01", version, **header),
        pid(order.patient),
        "PV1|1|O|RAD-WARD^^^HOSP",
        _orc(order, control, True),
        obr,
    ]
    if order.study_uid:
        segments.append(f"ZDS|{order.study_uid}^RADBRIDGE^Application^DICOM")
    return "\r".join(segments) + "\r"


def omi_o23(order: Order, *, control: str = "NW", version: str = "2.5.1", **header: str) -> str:
    """OMI^O23 (IHE SWF): TQ1-9 priority, IPC-1..5 accession, procedure, study UID, modality."""
    issuer = esc(order.issuer)
    ipc = segment(
        "IPC",
        {
            1: f"{esc(order.accession_number)}^{issuer}",
            2: esc(order.requested_procedure_id),
            3: esc(order.study_uid),
            4: "SPS1",
            5: esc(order.modality),
        },
    )
    segments = [
        msh("OMI^O23", version, **header),
        pid(order.patient),
        "PV1|1|O|RAD-WARD^^^HOSP",
        _orc(order, control, False),
        segment("TQ1", {1: "1", 9: PRIORITY_CODES[order.priority]}),
        segment(
            "OBR",
            {
                1: "1",
                2: esc(order.placer_number),
                3: esc(order.filler_number),
                4: f"{esc(order.procedure_code)}^{esc(order.procedure_text)}^LOCAL",
            },
        ),
        ipc,
        segment("IPC", {1: f"{esc(order.accession_number)}^{issuer}", 4: "SPS2", 5: "OT"}),
    ]
    return "\r".join(segments) + "\r"


def adt(trigger: str, patient: Patient, *, version: str = "2.5.1", **header: str) -> str:
    """ADT^A01 / A04 / A08."""
    return (
        "\r".join(
            [
                msh(f"ADT^{trigger}", version, **header),
                "EVN||20240301101500",
                pid(patient),
                "PV1|1|O",
            ]
        )
        + "\r"
    )


def adt_a40(surviving: Patient, prior: Patient, *, version: str = "2.5.1", **header: str) -> str:
    """ADT^A40: ``prior`` merged into ``surviving``."""
    mrg = segment("MRG", {1: f"{esc(prior.patient_id)}^^^{esc(prior.issuer)}^MR"})
    return (
        "\r".join([msh("ADT^A40", version, **header), "EVN||20240301101500", pid(surviving), mrg])
        + "\r"
    )


def sample_order(n: int = 1, **changes: object) -> Order:
    """A scheduled CT order numbered ``n``."""
    values: dict[str, object] = {
        "placer_number": f"PL{n:06d}",
        "filler_number": f"FL{n:06d}",
        "accession_number": f"ACC{n:06d}",
        "issuer": None,
        "patient": Patient("PAT001", "HOSP", "DOE^JOHN", "19800101", "M"),
        "procedure_code": "CT-CHEST",
        "procedure_text": "CT chest without contrast",
        "modality": "CT",
        "priority": OrderPriority.ROUTINE,
        "department": "RADIOLOGY",
        "status": OrderStatus.SCHEDULED,
        "study_uid": f"1.2.826.0.1.3680043.8.498.{n}",
        "requested_procedure_id": f"RP{n:04d}",
    }
    values.update(changes)
    return Order(source=OrderSource.HL7, **values)  # type: ignore[arg-type]


def report_oru_r01(
    order: Order,
    text: str,
    *,
    observations: tuple[tuple[str, str, bool], ...] = (),
    status: str = "F",
    version: str = "2.5.1",
    **header: str,
) -> str:
    """A signed final report as a RIS sends it: ORU^R01 with the accession number in OBR-18,
    OBR-25 the result status, one TX OBX per line of ``text``, and a coded OBX per
    ``(system, code, present)`` observation (OBX-5 ``Y``/``N``)."""
    obr = segment(
        "OBR",
        {
            1: "1",
            2: esc(order.placer_number),
            3: esc(order.filler_number),
            4: f"{esc(order.procedure_code)}^{esc(order.procedure_text)}^LOCAL",
            18: esc(order.accession_number),
            22: "20240301120000",
            25: status,
            32: "RAD001&REPORTING^RADIOLOGIST",
        },
    )
    obx = [
        segment(
            "OBX",
            {
                1: str(n),
                2: "TX",
                3: "18782-3^Radiology Study observation^LN",
                5: esc(line),
                11: status,
            },
        )
        for n, line in enumerate(text.splitlines() or [""], 1)
    ]
    first = len(obx) + 1
    obx += [
        segment(
            "OBX",
            {
                1: str(first + i),
                2: "CWE",
                3: f"{esc(code)}^^{esc(system)}",
                5: "Y" if present else "N",
                11: status,
            },
        )
        for i, (system, code, present) in enumerate(observations)
    ]
    segments = [msh("ORU^R01", version, **header), pid(order.patient), _orc(order, "RE", False)]
    return "\r".join([*segments, obr, *obx]) + "\r"


def report_mdm_t02(
    order: Order, text: str, *, status: str = "LA", version: str = "2.5.1", **header: str
) -> str:
    """A signed final report as a document: MDM^T02 with TXA (TXA-14 the accession number as
    the placer order number, TXA-17 the completion status, ``LA`` legally authenticated) and
    the text in TX OBXs."""
    txa = segment(
        "TXA",
        {
            1: "1",
            2: "RAD^Radiology report",
            3: "TX",
            12: f"DOC{next(_IDS):08d}",
            14: esc(order.accession_number),
            17: status,
        },
    )
    obx = [
        segment(
            "OBX",
            {
                1: str(n),
                2: "TX",
                3: "18782-3^Radiology Study observation^LN",
                5: esc(line),
                11: "F",
            },
        )
        for n, line in enumerate(text.splitlines() or [""], 1)
    ]
    segments = [msh("MDM^T02", version, **header), "EVN|T02|20240301120000", pid(order.patient)]
    return "\r".join([*segments, "PV1|1|O", txa, *obx]) + "\r"
