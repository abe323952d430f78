"""What routing decides on, gathered one way for ``serve`` and for every explain.

A :class:`RoutingInput` is a study, its routing tags
(:func:`routing.facts.study_tags` over the tags the index kept for each
series), the order routing may use, the study's link to an order, and the
jobs the study already has. :func:`stored_input` gathers it for a stored
study exactly as :class:`~broker.runtime.routing_stage.RoutingStage` routes
it: the order is correlated (and the link recorded) the same way, an order
flagged for a patient mismatch is not used, a cancelled order stops routing,
and every existing job counts as already sent to its vendor. :func:`files_input`
makes one for a study read from files, with an order given by the operator
linked by the service's rules. The CLI, the REST API and the console explain
a :class:`RoutingInput` with :meth:`RoutingInput.explain`, the service decides
on it with :meth:`RoutingInput.decide`: what explain says is what ``serve`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from broker.model.domain import LinkState, Order, OrderLink, ResultState, Study
from broker.model.errors import AdapterError, NotFoundError
from broker.model.jobs import Job, JobState
from broker.model.plugins import registered
from broker.store import StudyStore
from broker.store.jobs import JobStore
from broker.store.order_links import patient_conflict
from broker.store.orders import CANCELLED_STATES, OrderStore
from broker.store.priors import PriorStore
from broker.store.results import ResultStore
from routing import Decision, RuleSet, decide
from routing.completion import Expectation, expectations
from routing.explain import ExistingJob, Explained, report
from routing.facts import Facts, study_tags

#: States a job is in only after it sent the study to its vendor.
_AFTER_SENT = frozenset(
    {
        JobState.SENT,
        JobState.AWAITING_RESULT,
        JobState.RESULT_RECEIVED,
        JobState.WRITING_BACK,
        JobState.DONE,
    }
)

#: How many bytes of an order file are read (an HL7 message or a FHIR resource is far smaller).
MAX_ORDER_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RoutingInput:
    """Everything one routing decision reads, besides the rules and the time."""

    study: Study
    tags: Mapping[str, str]
    order: Order | None = None
    """The order routing uses: linked to the study and not flagged."""
    link: OrderLink | None = None
    """The study's link: to its order, or to an order flagged for a patient mismatch."""
    jobs: tuple[Job, ...] = ()
    reached: frozenset[int] = frozenset()
    """Ids of the jobs that sent the study to their vendor at least once."""
    priors: Mapping[int, str] = field(default_factory=dict)
    """Job id → what its fetch of priors found, as recorded (jobs whose route asks)."""
    notes: tuple[str, ...] = ()
    """What a person should know about this input (why an order is not used …)."""
    order_known: bool = True
    """False for files explained without an order given."""
    used: Mapping[str, int] = field(default_factory=dict)
    """Uses each contract counted in its current period, by contract name (the store's)."""
    earlier: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)
    """The findings of the study's complete results (not shadow ones), by vendor and by
    route name: finding code (folded) → present; what cascade routes read."""

    @property
    def cancelled(self) -> bool:
        """The study's order is cancelled or discontinued: the service does not route it."""
        return self.order is not None and self.order.status in CANCELLED_STATES

    @property
    def delivered(self) -> frozenset[tuple[str, str]]:
        """(route, vendor) of every job the study has: routing does not send those again
        unless the route resends updates."""
        return frozenset((job.route, job.vendor) for job in self.jobs)

    def decide(self, rules: RuleSet, now: datetime) -> Decision:
        """The decision ``serve`` makes (check :attr:`cancelled` first, as it does)."""
        return decide(
            rules,
            self.study,
            self.order,
            now,
            tags=self.tags,
            delivered=self.delivered,
            used=self.used,
            earlier=self.earlier,
        )

    def expectations(self, rules: RuleSet, now: datetime) -> tuple[Expectation, ...]:
        """The expected series of every route that expects this study, and those missing."""
        facts = Facts(
            self.study, self.order, self.tags, now, rules.timezone, tag_kinds=rules.tag_kinds
        )
        return expectations(rules, facts, self.study.first_received_at)

    def _expectation_notes(self, rules: RuleSet, now: datetime) -> tuple[str, ...]:
        """What each route's expected series say of this study (complete or waiting)."""
        notes = []
        for e in self.expectations(rules, now):
            if not e.missing:
                notes.append(f"expected series: {e.describe()}")
                continue
            when = "passed" if now >= e.deadline else "is"
            notes.append(
                f"expected series: {e.describe()}; the deadline {when} "
                f"{e.deadline.isoformat(timespec='seconds')}, then {e.on_timeout.value}"
            )
        return tuple(notes)

    def explain(self, rules: RuleSet, now: datetime) -> Explained:
        """Every route and why, with the order, the jobs and what stops routing."""
        blocked = None
        if self.cancelled and self.order is not None:
            blocked = f"its order is {self.order.status.value}"
        existing = tuple(
            ExistingJob(
                id=job.id,
                route=job.route,
                vendor=job.vendor,
                state=job.state.value,
                delivered=job.id in self.reached,
                priors=self.priors.get(job.id),
            )
            for job in self.jobs
        )
        return report(
            rules,
            self.study,
            self.order,
            now,
            tags=self.tags,
            jobs=existing,
            notes=self.notes + self._expectation_notes(rules, now),
            blocked=blocked,
            order_known=self.order_known,
            used=self.used,
            earlier=self.earlier,
        )


def _link_notes(link: OrderLink | None) -> tuple[str, ...]:
    if link is None or link.state is not LinkState.PATIENT_MISMATCH:
        return ()
    return (
        f"order {link.order_id} matches on {link.matched_on} but "
        f"{link.detail or 'the patient differs'}: flagged for an operator, not used for routing",
    )


def stored_input(
    studies: StudyStore,
    orders: OrderStore,
    jobs: JobStore,
    study_uid: str,
    *,
    used: Mapping[str, int] | None = None,
    results: ResultStore | None = None,
) -> RoutingInput:
    """The routing input of a stored study, as the service routes it; ``NotFoundError``
    when the store has no such study. Correlates the study with its order (recording
    the link) as the service does. ``used``: the contracts' use
    (:func:`broker.runtime.contracts.contract_use`); with ``results``, the findings of
    the study's complete results (cascades)."""
    study = studies.get_study(study_uid)
    stored, link = orders.order_for_study(study)
    existing = tuple(jobs.list(study_uid=study_uid))
    return RoutingInput(
        study=study,
        tags=study_tags(study, studies.series_tags(study_uid)),
        order=stored.order if stored is not None else None,
        link=link,
        jobs=existing,
        reached=frozenset(job.id for job in existing if _reached(jobs, job)),
        priors={
            job_id: fetch.describe()
            for job_id, fetch in PriorStore(jobs.engine).of_jobs(j.id for j in existing).items()
        },
        notes=_link_notes(link),
        used=dict(used or {}),
        earlier=earlier_findings(results, study_uid, existing) if results is not None else {},
    )


def earlier_findings(
    results: ResultStore, study_uid: str, jobs: Sequence[Job]
) -> dict[str, dict[str, bool]]:
    """The findings of the study's complete results (shadow jobs left out: a trial
    product's findings never decide where a study goes), under each job's vendor and
    route: code (folded) → present (any result saying present wins)."""
    live = {job.id: job for job in jobs if job.shadow is None}
    out: dict[str, dict[str, bool]] = {}
    for result in results.list(study_uid=study_uid, state=ResultState.COMPLETE):
        job = live.get(result.job_id) if result.job_id is not None else None
        if job is None:
            continue
        found = result.findings.findings if result.findings is not None else ()
        for name in (job.vendor, job.route):
            codes = out.setdefault(name, {})
            for f in found:
                key = f.code.value.casefold()
                codes[key] = codes.get(key, False) or f.present
    return out


def _reached(store: JobStore, job: Job) -> bool:
    """Whether the job sent the study to its vendor: its state says so, or its history."""
    if job.state in _AFTER_SENT:
        return True
    return any(event.to_state is JobState.SENT for event in store.history(job.id))


def files_input(
    study: Study,
    tags: Mapping[str, str],
    orders: Sequence[Order] = (),
    *,
    calling_ae: str | None = None,
    called_ae: str | None = None,
    site: str | None = None,
) -> RoutingInput:
    """The routing input of a study read from files, as if it came from ``calling_ae`` (of
    ``site``) to ``called_ae``, with the one of ``orders`` the service would link to it: the
    same accession number (else the same Study Instance UID), and the same patient."""
    if site is not None:
        study = replace(study, site=site)
        orders = [o for o in orders if o.site in (None, site)]
    if calling_ae is not None or called_ae is not None:
        study = replace(
            study,
            calling_ae=study.calling_ae if calling_ae is None else calling_ae,
            called_ae=study.called_ae if called_ae is None else called_ae,
        )
    if not orders:
        return RoutingInput(study=study, tags=tags, order_known=False)
    order, matched_on = _matching(orders, study)
    if order is None:
        given = ", ".join(o.accession_number or "none" for o in orders)
        note = (
            f"the order given (accession {given}) would not be linked: the study's "
            f"accession is {study.accession_number or 'empty'} and the order names another "
            "Study Instance UID or none; explained without an order"
        )
        return RoutingInput(study=study, tags=tags, notes=(note,))
    conflict = patient_conflict(order.patient, study.patient)
    if conflict is not None:
        note = (
            f"the order given matches on {matched_on} but {conflict}: the service would "
            "flag it for an operator and not use it; explained without an order"
        )
        return RoutingInput(study=study, tags=tags, notes=(note,))
    return RoutingInput(study=study, tags=tags, order=order)


def _matching(orders: Sequence[Order], study: Study) -> tuple[Order | None, str]:
    """The order the service would find for the study: by accession number, else by UID."""
    if study.accession_number:
        for order in orders:
            if order.accession_number == study.accession_number:
                return order, "accession_number"
    for order in orders:
        if order.study_uid and order.study_uid == study.study_uid:
            return order, "study_uid"
    return None, ""


def stored_order(orders: OrderStore, key: str) -> Order:
    """An order in the store by accession number (or id, or FHIR resource id)."""
    try:
        return orders.get(key).order
    except NotFoundError as exc:
        raise NotFoundError(
            f"{exc}; valid: the accession number of an order radbridge holds, or a file "
            "with an HL7 v2 ORM^O01/OMI^O23 message or a FHIR ServiceRequest"
        ) from exc


def orders_from_file(path: Path, default_charset: str = "utf-8") -> tuple[Order, ...]:
    """The orders in an HL7 v2 ORM^O01 / OMI^O23 message file (one per OBR) or a FHIR
    ServiceRequest (or Bundle) JSON file, read by the adapters registered for them."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_ORDER_FILE_BYTES + 1)
    except OSError as exc:
        raise AdapterError(f"{path}: cannot read the order file: {exc}") from exc
    if len(raw) > MAX_ORDER_FILE_BYTES:
        raise AdapterError(f"{path}: larger than {MAX_ORDER_FILE_BYTES} bytes; not an order")
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n\x0b")
    reader: Callable[[bytes, str], tuple[Order, ...]]
    if head.startswith(b"MSH"):
        reader = registered("hl7_order_file")
    elif head.startswith(b"{"):
        reader = registered("fhir_order_file")
    else:
        raise AdapterError(
            f"{path}: neither an HL7 v2 message nor FHIR JSON; valid: a file with an "
            "ORM^O01 or OMI^O23 message (beginning MSH) or a FHIR ServiceRequest or "
            "Bundle (JSON)"
        )
    try:
        found = reader(raw, default_charset)
    except AdapterError as exc:
        raise AdapterError(f"{path}: {exc}") from exc
    if not found:
        raise AdapterError(f"{path}: no order in the file; valid: at least one order")
    return found
