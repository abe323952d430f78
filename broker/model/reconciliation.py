"""One coherent answer when several AI products read one study. Pure: no I/O.

Each completed result's findings are read with their **provenance** (the
configured vendor and product, the version and maker the product reports,
the certificate where configured, the route, whether it ran in shadow). A
route may name an **owner** per finding code (``owners:``): the owner's
finding is the route's answer for that code, another product's finding of
the same code is marked ``owner: false``. Nothing is ever dropped.

Two live products **disagree** on a finding code when one says present and
the other absent, or when their probabilities fall on both sides of the
route's ``discordance.threshold``. A code only one product reports is no
disagreement (a product reports what it looks for). Shadow products
(:mod:`broker.model.mode`) are shown, but they never raise a flag and never
enter a combined answer: their place is the trials report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from broker.model.domain import Code, CodedValue, Finding, Findings

#: The probability a product's finding counts as present from, unless a route says otherwise.
DEFAULT_THRESHOLD = 0.5


class ReconcileMode(CodedValue):
    """How a route writes back the results of several products of one study."""

    SEPARATE = "separate"
    """Each product's own result objects go to the targets unchanged (default)."""
    COMBINED = "combined"
    """One combined SR and one ORU per target, every finding with its provenance."""


class StudyFlag(CodedValue):
    """A flag the reconciliation raises on a study."""

    DISCORDANT = "discordant"


def code_key(code: Code) -> str:
    """How a finding code is named in the configuration's ``owners:``: ``SYSTEM:VALUE``."""
    return f"{code.system}:{code.value}"


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    """A route's reconciliation settings.

    ``owners`` maps a finding code (``SCT:1386000``, or the code value alone) to the vendor
    that owns it on this route.
    """

    owners: Mapping[str, str] = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    mode: ReconcileMode = ReconcileMode.SEPARATE
    oru_note: bool = False

    def owner(self, code: Code) -> str | None:
        """The vendor that owns ``code`` on the route, if one is configured."""
        return self.owners.get(code_key(code)) or self.owners.get(code.value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Provenance:
    """Where a finding comes from."""

    vendor: str
    """The configured vendor name."""
    product: str
    """The configured product (what the hospital admitted)."""
    version: str | None
    """The algorithm version the product reports with its result."""
    maker: str | None
    """The manufacturer as the product names itself."""
    certificate: str | None = None
    result_id: int
    job_id: int | None
    route: str | None
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Read:
    """One product's completed findings of the study, with their provenance."""

    findings: Findings
    provenance: Provenance


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadFinding:
    """A finding with its provenance and what the reconciliation says of it."""

    finding: Finding
    provenance: Provenance
    owner: bool | None
    """True: its product owns the code on the route; False: another product does; None: the
    route names no owner for the code."""
    discordant: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Discordance:
    """Two live products disagreeing on one finding code."""

    code: Code
    vendors: tuple[str, str]
    result_ids: tuple[int, int]
    reason: str


@dataclass(frozen=True, slots=True)
class StudyFindings:
    """Every product's findings of a study, owners first, and the study's flags."""

    study_uid: str
    findings: tuple[ReadFinding, ...] = ()
    discordances: tuple[Discordance, ...] = ()

    @property
    def flags(self) -> tuple[StudyFlag, ...]:
        return (StudyFlag.DISCORDANT,) if self.discordances else ()

    @property
    def discordant(self) -> bool:
        return bool(self.discordances)

    def involving(self, result_id: int) -> tuple[Discordance, ...]:
        """The disagreements a result takes part in."""
        return tuple(d for d in self.discordances if result_id in d.result_ids)

    def live(self) -> tuple[ReadFinding, ...]:
        """The findings that count (no shadow product's), owners first."""
        return tuple(f for f in self.findings if not f.provenance.shadow)

    def provenances(self) -> tuple[Provenance, ...]:
        """Each live product once, in the order of its first finding."""
        seen: dict[int, Provenance] = {}
        for f in self.live():
            seen.setdefault(f.provenance.result_id, f.provenance)
        return tuple(seen.values())


def disagreement(a: Finding, b: Finding, threshold: float) -> str | None:
    """Why two findings of one code disagree, or None when they agree."""
    if a.present != b.present:
        return "present vs absent"
    if (
        a.score is not None
        and b.score is not None
        and (a.score >= threshold) != (b.score >= threshold)
    ):
        low, high = sorted((a.score, b.score))
        return f"probabilities {low:g} and {high:g} across the threshold {threshold:g}"
    return None


def reconcile(
    study_uid: str, reads: Iterable[Read], policies: Mapping[str, ReconcilePolicy]
) -> StudyFindings:
    """The study's findings with provenance, ownership and disagreements.

    ``reads`` are the latest complete findings of each job; ``policies`` the routes'
    settings by route name (a route not in it has no owners and the default threshold).
    """
    marked: list[ReadFinding] = []
    for read in reads:
        policy = policies.get(read.provenance.route or "", ReconcilePolicy())
        for finding in read.findings.findings:
            owner = policy.owner(finding.code)
            marked.append(
                ReadFinding(
                    finding=finding,
                    provenance=read.provenance,
                    owner=None if owner is None else owner == read.provenance.vendor,
                )
            )
    discordances = _discordances(marked, policies)
    flagged = {(d.code, rid) for d in discordances for rid in d.result_ids}
    ordered = sorted(
        (
            ReadFinding(
                finding=f.finding,
                provenance=f.provenance,
                owner=f.owner,
                discordant=(f.finding.code, f.provenance.result_id) in flagged,
            )
            for f in marked
        ),
        key=_order,
    )
    return StudyFindings(study_uid, tuple(ordered), tuple(discordances))


def _order(f: ReadFinding) -> tuple[int, int, str, str, int]:
    """Live before shadow, owners before the rest (no owner between), then code and product."""
    rank = {True: 0, None: 1, False: 2}[f.owner]
    return (
        int(f.provenance.shadow),
        rank,
        code_key(f.finding.code),
        f.provenance.vendor,
        f.provenance.result_id,
    )


def _discordances(
    marked: Sequence[ReadFinding], policies: Mapping[str, ReconcilePolicy]
) -> list[Discordance]:
    by_code: dict[str, list[ReadFinding]] = {}
    for f in marked:
        if not f.provenance.shadow:
            by_code.setdefault(code_key(f.finding.code), []).append(f)
    found: list[Discordance] = []
    for key in sorted(by_code):
        for a, b in combinations(by_code[key], 2):
            if a.provenance.result_id == b.provenance.result_id:
                continue  # one product naming a code twice (two sites) is its own affair
            threshold = min(
                policies.get(p.route or "", ReconcilePolicy()).threshold
                for p in (a.provenance, b.provenance)
            )
            why = disagreement(a.finding, b.finding, threshold)
            if why is not None:
                found.append(
                    Discordance(
                        code=a.finding.code,
                        vendors=(a.provenance.vendor, b.provenance.vendor),
                        result_ids=(a.provenance.result_id, b.provenance.result_id),
                        reason=why,
                    )
                )
    return found


def provenance_text(f: ReadFinding) -> str:
    """A finding's provenance as people read it (SR comments, ORU notes)."""
    p = f.provenance
    parts = [f"{p.product} ({p.vendor})"]
    if p.version:
        parts.append(f"version {p.version}")
    if p.maker:
        parts.append(f"by {p.maker}")
    if p.certificate:
        parts.append(f"certificate {p.certificate}")
    if f.owner is True:
        parts.append("owner of this finding")
    elif f.owner is False:
        parts.append("not the owner of this finding")
    if f.discordant:
        parts.append("DISCORDANT with another product")
    return "; ".join(parts)
