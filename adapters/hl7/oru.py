"""Outbound HL7 v2.5.1 messages of write-back: the result (ORU^R01), an order-status update,
and the charge of a billable use to the HIS (DFT^P03, :func:`build_charge`).

Plain segment strings, every value escaped with the standard escape sequences
(:meth:`adapters.hl7.parse.Separators.escape_text`); hl7apy reads what is
built here back as a valid ORU_R01 / ORM_O01 structure (tested). Each message
depends only on its inputs: a retried delivery sends byte-for-byte the same
message with the same control ID (MSH-10).

ORU^R01 (:func:`build_oru`), one segment a line, fields by number:

- MSH: MSH-3/4 radbridge, MSH-5/6 the RIS, MSH-9 ``ORU^R01^ORU_R01``, MSH-10
  the delivery's control ID, MSH-12 ``2.5.1``, MSH-18 the character set;
- PID: PID-3 patient ID^^^issuer, PID-5 name, PID-7 birth date, PID-8 sex;
- ORC: ORC-1 ``RE``, ORC-2 placer, ORC-3 filler;
- OBR: OBR-2 placer, OBR-3 filler, OBR-4 and OBR-44 the procedure, OBR-7 and
  OBR-22 when the result completed, OBR-18 the accession number, OBR-24
  ``RAD``, OBR-25 ``P``; then an NTE naming the AI product and its regulatory
  data (NMPA class and certificate, FDA, CE, intended use) when the hospital
  configured them, and an NTE with the result's summary, if any;
- per finding an OBX (CWE, OBX-4 = the finding's number), an NTE with its
  text, and an NM OBX per measurement (same OBX-4, unit in UCUM);
- a combined answer of several products (a route's ``reconcile: combined``): OBX-17
  names each finding's own product and an NTE after it its provenance (product,
  version, certificate, owner or not, discordant); a disagreement between products
  can be an NTE after the OBR (``discordance.oru_note``).
- references: an ST OBX with the Study Instance UID (DCM 110180), one per
  series of the result's objects (DCM 112002), one per object;
- with a summary PDF (a target's ``render: [pdf]``), an ED OBX that embeds it:
  OBX-3 LOINC 18748-4 "Diagnostic imaging study", OBX-5
  ``^AP^PDF^Base64^<the PDF in base64>`` (HL7 tables 0191, 0291, 0299).

- OBX-3 is the finding's code with its DICOM coding scheme designator (``SCT``,
  ``LN``, ``RADLEX``…) as HL7 coding system; OBX-5 says present or absent
  (DCM 121053 / 121054); OBX-8 is ``AA`` for an urgent finding that is
  present, ``A`` for any other present finding, ``N`` when absent; OBX-9
  (probability) is the AI product's score; OBX-11 and OBR-25 are ``P``
  (preliminary: nobody has verified an AI result); OBX-17 names the product. A
  correction sends the same ORU again with ``C`` (corrected, e.g. under the merged
  patient) or the withdrawal code (``X`` or ``D``) there, and an NTE saying why.
- The SOP instances are referenced as DICOM PS3.20 does for image references:
  the code is the SOP Class UID (coding system ``DCMUID``), the value the SOP
  Instance UID.
- Without an order, PID and OBR-18 come from the study; OBR-2/3 stay empty.

The order-status update (:func:`build_order_status`) is an ORM^O01 with
ORC-1 ``SC`` (status changed), ORC-5 ``A`` (some results available) and
priority ``S`` (stat) in ORC-7.6 and OBR-27.6: RIS worklists sort on it. OMI
has no status-change control code, which is why ORM is used.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.uid import UID

from adapters.hl7.parse import DEFAULT_SEPARATORS, Separators
from broker.model.domain import Code, Finding, Order, Patient, Result, Study
from broker.model.writeback import ChargeLine

VERSION = "2.5.1"
PRESENT = Code("DCM", "121053", "Present")
ABSENT = Code("DCM", "121054", "Absent")
STUDY_UID = Code("DCM", "110180", "Study Instance UID")
SERIES_UID = Code("DCM", "112002", "Series Instance UID")
REPORT_DOCUMENT = Code("LN", "18748-4", "Diagnostic imaging study")
#: Charset names for MSH-18 -> Python codecs (what :class:`MllpClient` encodes with).
CHARSETS = {
    "UNICODE UTF-8": "utf-8",
    "8859/1": "latin-1",
    "GB 18030-2000": "gb18030",
    "ASCII": "ascii",
}


@dataclass(frozen=True, slots=True)
class Header:
    """Who sends and who receives (MSH-3 to MSH-6) and the character set (MSH-18)."""

    application: str = "RADBRIDGE"
    facility: str = "RADBRIDGE"
    receiving_application: str = ""
    receiving_facility: str = ""
    charset: str = "UNICODE UTF-8"


def _ts(at: datetime) -> str:
    """An HL7 DTM in UTC with its offset (``20240501081500+0000``)."""
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


class _Writer:
    """Builds segments from field lists, escaping every value."""

    def __init__(self, seps: Separators = DEFAULT_SEPARATORS) -> None:
        self.seps = seps
        self.segments: list[str] = []

    def esc(self, value: object) -> str:
        return "" if value is None else self.seps.escape_text(str(value))

    def components(self, *parts: object) -> str:
        """Components joined with ``^`` (each escaped); trailing empty ones dropped."""
        text = self.seps.component.join(self.esc(p) for p in parts)
        return text.rstrip(self.seps.component)

    def code(self, code: Code | None) -> str:
        return "" if code is None else self.components(code.value, code.meaning, code.system)

    def add(self, name: str, fields: dict[int, str]) -> None:
        """A segment with ``fields`` (already escaped) at their positions, 1-based."""
        last = max(fields, default=0)
        values = [fields.get(i, "") for i in range(1, last + 1)]
        self.segments.append(self.seps.field.join([name, *values]))

    def msh(self, header: Header, at: datetime, kind: str, control_id: str) -> None:
        s = self.seps
        fields = [
            "MSH",
            s.encoding_characters,
            self.esc(header.application),
            self.esc(header.facility),
            self.esc(header.receiving_application),
            self.esc(header.receiving_facility),
            _ts(at),
            "",
            kind,
            self.esc(control_id),
            "P",
            VERSION,
            "",
            "",
            "AL",
            "NE",
            "",
            self.esc(header.charset),
        ]
        self.segments.append(s.field.join(fields))

    def text(self) -> str:
        return "\r".join(self.segments) + "\r"


def _person_name(name: str | None, w: _Writer) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``, first group) as an HL7 XPN."""
    if not name:
        return ""
    alphabetic = name.split("=", 1)[0]
    return w.components(*alphabetic.split("^"))


def _patient(order: Order | None, study: Study | None) -> Patient:
    if order is not None and order.patient.patient_id:
        return order.patient
    if study is not None:
        return study.patient
    return order.patient if order is not None else Patient()


def _pid(w: _Writer, patient: Patient) -> None:
    identifier = (
        w.components(patient.patient_id, "", "", patient.issuer) if patient.patient_id else ""
    )
    w.add(
        "PID",
        {
            1: "1",
            3: identifier,
            5: _person_name(patient.name, w),
            7: w.esc(patient.birth_date),
            8: w.esc(patient.sex),
        },
    )


def _procedure(w: _Writer, order: Order | None, study: Study | None, result: Result) -> str:
    if order is not None and (order.procedure_code or order.procedure_text):
        return w.components(
            order.procedure_code, order.procedure_text, "L" if order.procedure_code else ""
        )
    if study is not None and study.description:
        return w.components("", study.description)
    product = result.findings.algorithm.product if result.findings else (result.vendor or "AI")
    return w.components("", f"AI result: {product}")


def _accession(order: Order | None, study: Study | None) -> str | None:
    if order is not None and order.accession_number:
        return order.accession_number
    return study.accession_number if study is not None else None


def _flag(finding: Finding) -> str:
    if not finding.present:
        return "N"
    return "AA" if finding.urgent else "A"


def build_oru(
    *,
    control_id: str,
    result: Result,
    order: Order | None,
    study: Study | None,
    header: Header = Header(),
    pdf: bytes | None = None,
    note: str | None = None,
    provenance: Sequence[tuple[str, str]] = (),
    regulatory: str | None = None,
    status: str = "P",
) -> str:
    """The ORU^R01 of ``result`` (see the module docstring); segments end with ``\\r``.

    ``status`` is OBR-25 and every OBX-11: ``P`` (preliminary) for a result; for a
    correction (:mod:`broker.model.correction`) ``C`` (corrected) or the withdrawal code the
    target's HL7 convention uses (``X`` cannot be obtained / order cancelled, ``D`` deleted).

    ``pdf``: the summary PDF, embedded in an ED OBX after the references. ``note`` is a
    further NTE after the OBR (a disagreement between products); ``provenance`` (one per
    finding: the product for OBX-17, a text for an NTE) makes a combined answer of several
    products name each finding's own product. ``regulatory``: the product and its
    regulatory data, in an NTE after the OBR.
    """
    w = _Writer()
    at = result.completed_at or result.updated_at
    when = _ts(at)
    w.msh(header, at, "ORU^R01^ORU_R01", control_id)
    _pid(w, _patient(order, study))
    placer = w.esc(order.placer_number) if order else ""
    filler = w.esc(order.filler_number) if order else ""
    w.add("ORC", {1: "RE", 2: placer, 3: filler, 9: when})
    procedure = _procedure(w, order, study, result)
    w.add(
        "OBR",
        {
            1: "1",
            2: placer,
            3: filler,
            4: procedure,
            7: when,
            18: w.esc(_accession(order, study)),
            22: when,
            24: "RAD",
            25: status,
            44: procedure if order is not None and order.procedure_code else "",
        },
    )
    findings = result.findings
    if regulatory:
        w.add("NTE", {1: "1", 2: "L", 3: w.esc(f"AI product: {regulatory}")})
    if findings is not None and findings.summary:
        w.add("NTE", {1: "1", 2: "L", 3: w.esc(findings.summary)})
    if note:
        w.add("NTE", {1: "1", 2: "L", 3: w.esc(note)})
    algorithm = ""
    if findings is not None:
        a = findings.algorithm
        algorithm = w.components("", f"{a.vendor} {a.product} {a.version}".strip())
    n = 0
    for index, finding in enumerate(findings.findings if findings else (), 1):
        n += 1
        w.add(
            "OBX",
            {
                1: str(n),
                2: "CWE",
                3: w.code(finding.code),
                4: str(index),
                5: w.code(PRESENT if finding.present else ABSENT),
                8: _flag(finding),
                9: "" if finding.score is None else f"{finding.score:g}",
                11: status,
                14: when,
                17: w.components("", provenance[index - 1][0]) if provenance else algorithm,
                20: w.code(finding.site),
            },
        )
        if finding.text:
            w.add("NTE", {1: "1", 2: "L", 3: w.esc(finding.text)})
        if provenance:
            w.add("NTE", {1: "1", 2: "L", 3: w.esc(provenance[index - 1][1])})
        for m in finding.measurements:
            n += 1
            w.add(
                "OBX",
                {
                    1: str(n),
                    2: "NM",
                    3: w.code(m.name),
                    4: str(index),
                    5: f"{m.value:g}",
                    6: w.components(m.unit, "", "UCUM"),
                    11: status,
                },
            )
    for code, value in _references(result):
        n += 1
        w.add("OBX", {1: str(n), 2: "ST", 3: w.code(code), 5: w.esc(value), 11: status})
    if pdf is not None:
        n += 1
        data = base64.b64encode(pdf).decode("ascii")
        document = w.components("", "AP", "PDF", "Base64", data)
        w.add("OBX", {1: str(n), 2: "ED", 3: w.code(REPORT_DOCUMENT), 5: document, 11: status})
    return w.text()


def _references(result: Result) -> Sequence[tuple[Code, str]]:
    """(code, UID): the study, each series of the result's objects, each object."""
    refs: list[tuple[Code, str]] = [(STUDY_UID, result.study_uid)]
    series = dict.fromkeys(o.series_uid for o in result.objects)
    refs += [(SERIES_UID, uid) for uid in series]
    for o in result.objects:
        name = UID(o.sop_class_uid).name
        refs.append((Code("DCMUID", o.sop_class_uid, name), o.sop_instance_uid))
    return refs


def build_order_status(
    *,
    control_id: str,
    at: datetime,
    order: Order | None,
    study: Study | None,
    note: str = "",
    header: Header = Header(),
    status: str = "A",
    priority: str = "S",
) -> str:
    """An ORM^O01 status change (ORC-1 SC): by default the order has an urgent AI result
    (ORC-5 A, priority S); a modality's procedure step gives ORC-5 IP, CM or DC (HL7 table
    0038) and no priority."""
    w = _Writer()
    when = _ts(at)
    w.msh(header, at, "ORM^O01^ORM_O01", control_id)
    _pid(w, _patient(order, study))
    placer = w.esc(order.placer_number) if order else ""
    filler = w.esc(order.filler_number) if order else ""
    stat = w.components("", "", "", "", "", priority) if priority else ""
    w.add("ORC", {1: "SC", 2: placer, 3: filler, 5: status, 7: stat, 9: when})
    procedure = ""
    if order is not None and (order.procedure_code or order.procedure_text):
        procedure = w.components(
            order.procedure_code, order.procedure_text, "L" if order.procedure_code else ""
        )
    elif study is not None and study.description:
        procedure = w.components("", study.description)
    w.add(
        "OBR",
        {1: "1", 2: placer, 3: filler, 4: procedure, 18: w.esc(_accession(order, study)), 27: stat},
    )
    if note:
        w.add("NTE", {1: "1", 2: "L", 3: w.esc(note)})
    return w.text()


def build_charge(
    *,
    control_id: str,
    at: datetime,
    charge: ChargeLine,
    order: Order | None,
    study: Study | None,
    header: Header = Header(),
) -> str:
    """A DFT^P03 charging one billable use of an AI product to the HIS (one FT1).

    FT1-2 is the transaction id (``RB`` and the job id: one charge per use, the same on
    every retry, as MSH-10 is), FT1-4 the site's day of the use, FT1-6 ``CG`` (charge),
    FT1-7 the price code (物价编码) with the product and ``CN-<province>`` as its coding
    system, FT1-8 the product, contract and payer, FT1-10 the quantity, FT1-11 and FT1-12
    the extended and unit amounts (``amount&currency``), FT1-13 the ordering department,
    FT1-23 the order's filler number.
    """
    w = _Writer()
    w.msh(header, at, "DFT^P03^DFT_P03", control_id)
    w.add("EVN", {1: "P03", 2: _ts(at)})
    _pid(w, _patient(order, study))
    w.add("PV1", {1: "1", 2: "O"})
    system = f"CN-{charge.province}" if charge.province else "L"
    description = f"AI {charge.product}"
    if charge.contract:
        description += f", contract {charge.contract}"
    if charge.payer:
        description += f", payer {charge.payer}"
    currency = charge.currency or ""
    amount = charge.price * charge.quantity
    sub = w.seps.subcomponent
    w.add(
        "FT1",
        {
            1: "1",
            2: w.esc(f"RB{charge.job_id}"),
            4: charge.day.replace("-", ""),
            6: "CG",
            7: w.components(charge.price_code or charge.vendor, charge.product, system),
            8: w.esc(description),
            10: str(charge.quantity),
            11: f"{w.esc(amount)}{sub}{w.esc(currency)}",
            12: f"{w.esc(charge.price)}{sub}{w.esc(currency)}",
            13: w.components(order.department) if order is not None and order.department else "",
            23: w.esc(order.filler_number) if order is not None else "",
        },
    )
    return w.text()
