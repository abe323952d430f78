"""Final reports as ground truth, as pure functions: the harness RIS's ORU^R01 and MDM^T02
read back (accession, status, text, coded observations, GB18030), and AI findings compared
with Chinese and English text with negations, and with coded observations."""

from __future__ import annotations

import pytest

from adapters.harness.hl7_messages import report_mdm_t02, report_oru_r01, sample_order
from adapters.hl7.mapping import UnusableMessageError
from adapters.hl7.parse import parse, read_header
from adapters.hl7.reports import report_from_message
from broker.model.domain import Code, Finding
from broker.model.reports import FinalReport, ReportMatcher, ReportOutcome
from config.monitoring import FinalReports

ICH = Code("SCT", "1386000", "Intracranial hemorrhage")
FRACTURE = Code("SCT", "71642004", "Fracture of skull")
MATCHER = FinalReports(
    keywords={
        "SCT:1386000": ["颅内出血", "出血", "intracranial hemorrhage", "hemorrhage", "bleed"],
        "SCT:71642004": ["颅骨骨折", "骨折", "skull fracture", "fracture"],
    }
).matcher()


def _read(text: str, charset: str = "") -> FinalReport:
    raw = text.encode("gb18030" if charset else "utf-8")
    return report_from_message(parse(raw, read_header(raw, "UTF-8")))


def test_an_oru_r01_reads_back_with_text_and_coded_observations() -> None:
    """Accession from OBR-18, status OBR-25, the TX lines as text, a coded OBX per
    observation; GB18030 text (MSH-18) decodes."""
    order = sample_order(4)
    text = "颅内未见出血。\n右侧顶骨线样骨折。"
    report = _read(
        report_oru_r01(order, text, observations=(("SNM", "1386000", False),), charset="GB 18030"),
        charset="gb18030",
    )
    assert report.accession_number == order.accession_number
    assert (report.kind, report.status, report.text) == ("ORU^R01", "F", text)
    assert report.patient_id == order.patient.patient_id
    assert [(o.code, o.present) for o in report.observations] == [("SCT:1386000", False)]


def test_an_mdm_t02_reads_back_and_a_report_without_accession_is_unusable() -> None:
    """MDM^T02: accession from TXA-14, status TXA-17; no accession anywhere is AE-worthy."""
    order = sample_order(5)
    report = _read(report_mdm_t02(order, "No acute intracranial hemorrhage."))
    assert (report.kind, report.accession_number, report.status) == (
        "MDM^T02",
        order.accession_number,
        "LA",
    )
    nothing = sample_order(6, accession_number=None, placer_number=None)
    with pytest.raises(UnusableMessageError, match="accession"):
        _read(report_mdm_t02(nothing, "text"))


@pytest.mark.parametrize(
    ("text", "present", "outcome"),
    [
        ("右侧颞叶见片状出血，约4ml。", True, ReportOutcome.CONFIRMED),
        ("颅内未见出血，脑室系统不大。", True, ReportOutcome.CONTRADICTED),
        ("无明显出血征象。", False, ReportOutcome.CONFIRMED),
        ("Acute subdural hemorrhage along the left convexity.", True, ReportOutcome.CONFIRMED),
        ("No evidence of intracranial hemorrhage.", True, ReportOutcome.CONTRADICTED),
        ("No hemorrhage, mass or midline shift.", False, ReportOutcome.CONFIRMED),
        ("No mass effect but there is a small bleed.", False, ReportOutcome.CONTRADICTED),
        ("Hemorrhage is not seen.", True, ReportOutcome.CONTRADICTED),
        ("脑实质密度均匀，中线结构居中。", True, ReportOutcome.NOT_MENTIONED),
    ],
)
def test_keywords_with_negations_decide_the_outcome(
    text: str, present: bool, outcome: ReportOutcome
) -> None:
    """Terms per finding code in Chinese and English; a negation cue in the same clause
    (before or after the term) makes a mention negative; nothing said is not_mentioned."""
    report = FinalReport(kind="ORU^R01", accession_number="A1", text=text)
    assert MATCHER.compare(Finding(code=ICH, present=present), report).outcome is outcome


def test_a_coded_observation_wins_over_the_text_and_the_meaning_is_the_fallback() -> None:
    """A coded OBX for the finding's code decides even against the text; a code without a
    keyword list is looked for by its meaning."""
    report = _read(
        report_oru_r01(sample_order(7), "Small bleed.", observations=(("SCT", "1386000", False),))
    )
    compared = MATCHER.compare(Finding(code=ICH, present=True), report)
    assert (compared.outcome, compared.basis.value) == (ReportOutcome.CONTRADICTED, "coded")
    plain = ReportMatcher()
    report = FinalReport(kind="ORU^R01", accession_number="A", text="Fracture of skull, left.")
    assert plain.compare(Finding(code=FRACTURE, present=True), report).outcome is (
        ReportOutcome.CONFIRMED
    )
