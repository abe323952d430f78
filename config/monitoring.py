"""Settings of knowing how AI products perform: comparing findings with final reports."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from broker.model.reports import DEFAULT_NEGATIONS, DEFAULT_POST_NEGATIONS, ReportMatcher
from config.base import Strict

_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,16}:[^\s:]{1,64}$")
Term = Annotated[str, Field(min_length=1, max_length=200)]


class FinalReports(Strict):
    """How the RIS's final reports (ORU^R01, MDM^T02 on the HL7 listener) are compared with
    AI findings: keyword lists per finding code (``SYSTEM:VALUE``, as the findings' codes:
    ``SCT:1386000``), and negation cues before (``未见``, ``no evidence of``) and after
    (``not seen``) a term in the same clause. A code without a list is looked for by its
    meaning."""

    keywords: dict[str, list[Term]] = Field(default_factory=dict)
    negations: list[Term] = Field(default_factory=lambda: list(DEFAULT_NEGATIONS))
    post_negations: list[Term] = Field(default_factory=lambda: list(DEFAULT_POST_NEGATIONS))

    @field_validator("keywords")
    @classmethod
    def _codes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for code, terms in value.items():
            if not _CODE.fullmatch(code):
                raise ValueError(
                    f"{code!r} is not a finding code; valid: SYSTEM:VALUE as in the findings, "
                    "e.g. SCT:1386000"
                )
            if not terms:
                raise ValueError(f"{code}: no terms; valid: a list like [出血, hemorrhage]")
        return value

    def matcher(self) -> ReportMatcher:
        return ReportMatcher(
            keywords=self.keywords,
            negations=tuple(self.negations),
            post_negations=tuple(self.post_negations),
        )
