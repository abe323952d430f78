"""Final reports from the RIS: ORU^R01 and MDM^T02 read into a
:class:`~broker.model.reports.FinalReport` (the message itself is stored verbatim).

=====================  ====================================================
accession number       OBR-18, else OBR-3 (filler order number); MDM without OBR: TXA-14,
                       else ORC-2
Study Instance UID     ZDS-1, or an OBX whose observation is DCM 110180
status                 OBR-25 (``F`` final, ``C`` corrected, ``P`` preliminary); MDM: TXA-17
text                   OBX-5 of every TX, FT, ST and ED-less text OBX, lines joined
coded observations     an OBX whose OBX-3 is a finding code (``SCT^1386000``) valued
                       present/absent in OBX-5 (Y/N, POS/NEG, 阳性/阴性, SCT 52101004
                       Present / 2667000 Absent), or a CE/CWE OBX whose OBX-5 is a
                       finding code (present unless OBX-8 is ``N``)
=====================  ====================================================
"""

from __future__ import annotations

from adapters.hl7.ack import ErrorCode, Problem
from adapters.hl7.mapping import UnusableMessageError
from adapters.hl7.parse import Hl7Message, Segment
from broker.model.reports import CodedObservation, FinalReport

REPORT_EVENTS = ("ORU^R01", "MDM^T02")
_TEXT_TYPES = {"TX", "FT", "ST"}
_CODED_TYPES = {"CE", "CWE", "CNE"}
#: Coding systems as HL7 senders spell them → the DICOM designators findings use.
_SYSTEMS = {
    "SNM": "SCT",
    "SNM3": "SCT",
    "SNOMED": "SCT",
    "SNOMEDCT": "SCT",
    "SNOMED-CT": "SCT",
    "SCT": "SCT",
    "HTTP://SNOMED.INFO/SCT": "SCT",
    "LN": "LN",
    "LOINC": "LN",
    "HTTP://LOINC.ORG": "LN",
    "RADLEX": "RADLEX",
    "RID": "RADLEX",
}
_PRESENT = {"Y", "YES", "POS", "POSITIVE", "P", "PRESENT", "DETECTED", "1", "阳性", "有"}
_PRESENT |= {"SCT:52101004", "SCT:10828004"}
_ABSENT = {"N", "NO", "NEG", "NEGATIVE", "ABSENT", "NOT DETECTED", "0", "阴性", "无"}
_ABSENT |= {"SCT:2667000", "SCT:260385009"}
_STUDY_UID = "DCM:110180"


def _code(segment: Segment, field: int, rep: int = 1) -> str | None:
    """``SYSTEM:VALUE`` of a CE/CWE field (the first triplet), or None."""
    raw = segment.raw(field)
    value = segment.component_of(raw, 1, rep=rep).strip()
    system = segment.component_of(raw, 3, rep=rep).strip().upper()
    if not value or not system:
        return None
    return f"{_SYSTEMS.get(system, system)}:{value}"


def _presence(segment: Segment) -> bool | None:
    raw = segment.raw(5)
    as_code = _code(segment, 5)
    words = {segment.component_of(raw, 1).strip().upper(), segment.component_of(raw, 2).strip()}
    if as_code in _PRESENT or words & _PRESENT:
        return True
    if as_code in _ABSENT or words & _ABSENT:
        return False
    return None


def _first(*values: str) -> str | None:
    return next((v.strip() for v in values if v.strip() and v.strip() != '""'), None)


def report_from_message(message: Hl7Message) -> FinalReport:
    """The report an ORU^R01 or MDM^T02 carries; :class:`UnusableMessageError` (answered AE)
    without an accession number to match it by."""
    obr, txa, orc, zds, pid = (message.first(n) for n in ("OBR", "TXA", "ORC", "ZDS", "PID"))
    accession = _first(
        obr.value(18) if obr else "",
        obr.value(3) if obr else "",
        txa.value(14) if txa else "",
        orc.value(2) if orc else "",
    )
    if accession is None:
        where = "OBR-18 and OBR-3" if obr is not None else "TXA-14 and ORC-2"
        raise UnusableMessageError(
            Problem(
                ErrorCode.REQUIRED_FIELD_MISSING,
                f"report without an accession number ({where} are empty); valid: the "
                "accession number of the study in OBR-18",
                "OBR" if obr is not None else "TXA",
                1,
                18 if obr is not None else 14,
            )
        )
    status = _first(obr.value(25) if obr else "", txa.value(17) if txa else "")
    study_uid = _first(zds.value(1) if zds else "")
    lines: list[str] = []
    observations: list[CodedObservation] = []
    for obx in message.all("OBX"):
        kind = obx.value(2).strip().upper()
        observed = _code(obx, 3)
        if observed == _STUDY_UID:
            study_uid = study_uid or _first(obx.value(5))
            continue
        if kind in _TEXT_TYPES:
            lines.extend(
                obx.component_of(r, 1) for r in obx.repetitions(5) if obx.component_of(r, 1)
            )
            continue
        present = _presence(obx)
        if observed is not None and present is not None:
            observations.append(CodedObservation(observed, present))
        elif kind in _CODED_TYPES:
            valued = _code(obx, 5)
            if valued is not None and valued not in _PRESENT | _ABSENT:
                absent = obx.value(8).strip().upper() == "N"
                observations.append(CodedObservation(valued, not absent))
    return FinalReport(
        kind=message.header.kind,
        accession_number=accession[:64],
        patient_id=(_first(pid.value(3)) or None) if pid else None,
        study_uid=(study_uid or None) and study_uid[:64],
        status=(status or None) and status[:8],
        text="\n".join(lines),
        observations=tuple(observations),
    )
