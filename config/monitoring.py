"""Settings of knowing how AI products perform: comparing findings with final reports, the
vendor watch (drift, missing results), and a vendor's canary (a periodic synthetic study)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from broker.model.errors import ConfigError, did_you_mean
from broker.model.plugins import registered
from broker.model.reports import DEFAULT_NEGATIONS, DEFAULT_POST_NEGATIONS, ReportMatcher
from config.base import Duration, Strict

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


class Drift(Strict):
    """The positive rate of each finding code in the last ``window`` against the ``baseline``
    before it: a two-proportion z-test, alert when p < ``alpha`` and both have at least
    ``min_findings`` findings of the code."""

    window: Duration = 7 * 86400.0
    baseline: Duration = 90 * 86400.0
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.01
    min_findings: Annotated[int, Field(ge=1)] = 30


class ResultsMissing(Strict):
    """A vendor that took at least ``min_studies`` studies in the last ``window`` (each sent
    at least ``after`` ago) and answered fewer than ``min_share`` of them."""

    window: Duration = 3600.0
    after: Duration = 900.0
    min_share: Annotated[float, Field(gt=0, le=1)] = 0.8
    min_studies: Annotated[int, Field(ge=1)] = 5


class Monitoring(Strict):
    """The vendor watch: drift, missing results (checked every ``check_every``) and product
    version changes (on each result)."""

    check_every: Duration = 60.0
    drift: Drift = Drift()
    results_missing: ResultsMissing = ResultsMissing()


class Canary(Strict):
    """A vendor's canary (``vendors.NAME.canary``): every ``every`` a synthetic study of the
    harness generator's kind ``template`` (``instances`` slices or views; the kind's own
    count when absent), marked as a test in a private tag, goes to this vendor only through
    the whole loop; no result within ``deadline`` raises ``canary_failed``. Never routed to
    another vendor, never written back, never billed, never counted in performance.

    ``attempts``: how often its send is tried (default once, not the vendor's ``retries``):
    a canary to a vendor that is down fails at once and leaves the vendor's lane to the
    clinical jobs waiting behind it."""

    every: Duration
    deadline: Duration = 1800.0
    attempts: Annotated[int, Field(ge=1, le=5)] = 1
    template: Annotated[str, Field(min_length=1, max_length=32)] = "ct_head"
    instances: Annotated[int, Field(ge=1, le=1000)] | None = None

    @field_validator("template")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        try:
            kinds: tuple[str, ...] = tuple(registered("study_kinds"))
        except ConfigError:  # the generator is not installed: checked when a canary is made
            return value
        if value not in kinds:
            raise ValueError(
                f"no such study kind {value!r}{did_you_mean(value, kinds, or_list=True)}"
            )
        return value
