"""Final reports as ground truth: the RIS's signed report of a study, and how each AI finding
compares with it. Pure: no I/O.

A report decides a finding by its **coded observations** when it has one for the finding's
code (an OBX whose observation is the code, valued present or absent; or a coded value
that is the code, meaning present), else by **keywords**: the configured terms of the
finding's code (Chinese and English; the code's meaning when none are configured) looked
for clause by clause, a negation cue before the term in the same clause (``未见``, ``无``,
``no evidence of``…) or after it (``not seen``, ``absent``…) making that mention negative.
A positive mention wins over a negative one elsewhere ("no bleed on the left; a small bleed
on the right" is a bleed).

The outcome per finding: ``confirmed`` (the report agrees: it says present for a present
finding, or absent for an absent one), ``contradicted`` (it says the opposite), or
``not_mentioned``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from broker.model.domain import CodedValue, Finding
from broker.model.verdicts import code_key

#: Negation cues before a term, in the same clause (zh, en); lower case.
DEFAULT_NEGATIONS: tuple[str, ...] = (
    "未见明显",
    "未见",
    "未发现",
    "未显示",
    "无明显",
    "无",
    "没有",
    "排除",
    "不伴",
    "否认",
    "no evidence of",
    "no signs of",
    "no sign of",
    "negative for",
    "free of",
    "absence of",
    "without",
    "not",
    "no",
)
#: Negation cues after a term, in the same clause.
DEFAULT_POST_NEGATIONS: tuple[str, ...] = (
    "未见",
    "阴性",
    "（-）",
    "(-)",
    "is not seen",
    "not seen",
    "not identified",
    "not present",
    "is absent",
    "absent",
    "ruled out",
    "excluded",
)
#: Where one clause ends: a negation does not reach past these (a Chinese comma ends one, an
#: English comma does not: "no hemorrhage, mass or midline shift" negates all three).
_CLAUSE = re.compile(r"[。；;.!?！？\n\r，]+|,?\s+(?:but|however|although)\s+", re.IGNORECASE)


class ReportOutcome(CodedValue):
    """How an AI finding compares with the final report of its study."""

    CONFIRMED = "confirmed"
    CONTRADICTED = "contradicted"
    NOT_MENTIONED = "not_mentioned"


class MatchBasis(CodedValue):
    """What decided the outcome."""

    CODED = "coded"
    KEYWORDS = "keywords"
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class CodedObservation:
    """A coded statement of the report: finding ``code`` (``SYSTEM:VALUE``) present or not."""

    code: str
    present: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalReport:
    """What radbridge reads from a signed report (the message itself is kept verbatim)."""

    kind: str
    """``ORU^R01``, ``MDM^T02``."""
    accession_number: str | None
    patient_id: str | None = None
    """PID-3: checked against the study's before the report is compared with its findings."""
    study_uid: str | None = None
    status: str | None = None
    """OBR-25 (``F`` final, ``C`` corrected, ``P`` preliminary) or TXA-17."""
    text: str = ""
    observations: tuple[CodedObservation, ...] = ()


@dataclass(frozen=True, slots=True)
class Comparison:
    outcome: ReportOutcome
    basis: MatchBasis
    evidence: str | None
    """The clause or observation that decided (for people checking the match)."""


def _cue(cue: str) -> re.Pattern[str]:
    """A cue as a pattern: whole words for Latin text, as it is for Chinese."""
    escaped = re.escape(cue.lower())
    return re.compile(rf"\b{escaped}\b" if cue[:1].isascii() and cue[:1].isalnum() else escaped)


@dataclass(frozen=True, slots=True)
class ReportMatcher:
    """Compares findings with reports: keyword lists per finding code and negation cues."""

    keywords: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Terms per finding code (``SCT:1386000``: ``[颅内出血, 出血, hemorrhage, bleed]``)."""
    negations: Sequence[str] = DEFAULT_NEGATIONS
    post_negations: Sequence[str] = DEFAULT_POST_NEGATIONS

    def terms(self, finding: Finding) -> list[str]:
        """The terms of the finding's code; its meaning when none are configured."""
        found = self.keywords.get(code_key(finding.code))
        return [t for t in (found or [finding.code.meaning]) if t.strip()]

    def mentions(self, text: str, terms: Sequence[str]) -> tuple[bool | None, str | None]:
        """Whether the text says the terms' finding is present (True), absent (False) or
        says nothing (None), with the deciding clause."""
        before = [_cue(c) for c in sorted(self.negations, key=len, reverse=True)]
        after = [_cue(c) for c in sorted(self.post_negations, key=len, reverse=True)]
        patterns = [_cue(t) for t in sorted(terms, key=len, reverse=True)]
        negative: str | None = None
        for clause in _CLAUSE.split(text):
            lower = clause.lower()
            for pattern in patterns:
                for hit in pattern.finditer(lower):
                    head, tail = lower[: hit.start()], lower[hit.end() :]
                    if any(c.search(head) for c in before) or any(c.search(tail) for c in after):
                        negative = negative or clause.strip()
                    else:
                        return True, clause.strip()
        return (False, negative) if negative is not None else (None, None)

    def compare(self, finding: Finding, report: FinalReport) -> Comparison:
        """The finding against the report: coded observations first, then keywords."""
        key = code_key(finding.code)
        coded = [o for o in report.observations if o.code == key]
        said: bool | None
        evidence: str | None
        if coded:
            said = any(o.present for o in coded)
            basis, evidence = MatchBasis.CODED, f"{key} {'present' if said else 'absent'}"
        else:
            said, evidence = self.mentions(report.text, self.terms(finding))
            basis = MatchBasis.KEYWORDS if said is not None else MatchBasis.NOTHING
        if said is None:
            return Comparison(ReportOutcome.NOT_MENTIONED, basis, None)
        agrees = said == finding.present
        outcome = ReportOutcome.CONFIRMED if agrees else ReportOutcome.CONTRADICTED
        return Comparison(outcome, basis, evidence[:500] if evidence else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportMatch:
    """How one finding of one result compares with one final report (stored)."""

    report_id: int
    result_id: int
    finding_index: int
    vendor: str | None
    code: str
    outcome: ReportOutcome
    basis: MatchBasis
    evidence: str | None
