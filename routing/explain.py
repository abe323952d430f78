"""Explain a decision: every route, matched or not and why, as text or JSON.

``explain(...)`` returns the decision and one :class:`RouteExplanation` per
route, in configuration order: its status, the first failing condition with
wanted and actual values (``modality: wanted CT, got MR``), what it sends,
and notes on deduplication, exclusive and fallback routes, and orders.
:func:`report` adds what the study's routing input says besides (the order
used, the jobs the study already has, what stops routing) as an
:class:`Explained` that prints itself as text or JSON.

A job the study already has is not "delivered" unless it reached the vendor:
explain says which it is (``ExistingJob.delivered``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from broker.model.domain import Order, Study
from broker.model.mode import Mode
from routing.compile import CompiledRoute, RuleSet
from routing.evaluate import (
    Decision,
    Dispatch,
    Outcome,
    RouteResult,
    RouteStatus,
    Skip,
    SkipReason,
    decide_facts,
)
from routing.facts import Facts
from routing.fields import result_name
from routing.schema import SelectorName, show_duration
from routing.trace import Failure, first_failure

_LABEL = {
    RouteStatus.FIRED: "fired",
    RouteStatus.MATCHED: "matched",
    RouteStatus.NOT_MATCHED: "not matched",
    RouteStatus.WAITING_FOR_ORDER: "waiting",
    RouteStatus.NO_ORDER: "no order",
    RouteStatus.FALLBACK_NOT_NEEDED: "not needed",
    RouteStatus.WAITING_FOR_RESULT: "waiting",
}


@dataclass(frozen=True, slots=True)
class ExistingJob:
    """A job the study already has: routing does not create it again."""

    id: int
    route: str
    vendor: str
    state: str
    delivered: bool
    """The study reached the vendor (the job was sent at least once)."""
    priors: str | None = None
    """What the job's fetch of priors found, as recorded (None: its route asks for none,
    or it was not sent yet)."""

    def __str__(self) -> str:
        reached = "delivered" if self.delivered else "not delivered to the vendor"
        text = f"job {self.id} {self.vendor} (route '{self.route}'): {self.state}, {reached}"
        return f"{text}; {self.priors}" if self.priors else text


@dataclass(frozen=True, slots=True)
class RouteExplanation:
    """What one route did with one study, and why."""

    route: str
    status: RouteStatus
    failure: Failure | None
    dispatches: tuple[Dispatch, ...]
    notes: tuple[str, ...]
    selector: SelectorName = SelectorName.ALL
    closest: bool = False

    @property
    def matched(self) -> bool:
        """True when the route's conditions hold (even if it sent nothing)."""
        return self.status is not RouteStatus.NOT_MATCHED


def explain(
    rules: RuleSet,
    study: Study,
    order: Order | None,
    now: datetime,
    *,
    tags: Mapping[str, str] | None = None,
    delivered: Collection[tuple[str, str]] = (),
    jobs: Sequence[ExistingJob] = (),
    used: Mapping[str, int] | None = None,
    earlier: Mapping[str, Mapping[str, bool]] | None = None,
) -> tuple[Decision, list[RouteExplanation]]:
    """The decision for ``study`` and an explanation of every route.

    ``delivered`` and ``jobs`` are the (route, vendor) pairs the study already has
    jobs for, as routing sees them; ``jobs`` also says which reached the vendor;
    ``earlier`` the findings of its complete results (cascades).
    """
    facts = Facts(
        study,
        order,
        tags or {},
        now,
        rules.timezone,
        tag_kinds=rules.tag_kinds,
        earlier=earlier,
        result_keys=rules.result_keys,
    )
    had = {*delivered, *((j.route, j.vendor) for j in jobs)}
    decision = decide_facts(rules, facts, now, had, used)
    closest = decision.unrouted.closest_route if decision.unrouted else None
    by_name = {r.name: r for r in rules.routes}
    matched_regular = [
        r.route
        for r in decision.routes
        if not by_name[r.route].spec.fallback and r.status is not RouteStatus.NO_ORDER
    ]
    out = []
    for route in rules.routes:
        result = decision.status_of(route.name)
        failure = None
        if result.status is RouteStatus.NOT_MATCHED:
            failure = first_failure(route, facts)
        elif result.status is RouteStatus.NO_ORDER and route.name == closest:
            failure = decision.unrouted.failure if decision.unrouted else None
        out.append(
            RouteExplanation(
                route=route.name,
                status=result.status,
                failure=failure,
                dispatches=tuple(d for d in decision.dispatches if d.route == route.name),
                notes=tuple(
                    _notes(route, result, decision, matched_regular, rules.timezone, jobs=jobs)
                ),
                selector=route.spec.series.name,
                closest=route.name == closest,
            )
        )
    return decision, out


def _notes(
    route: CompiledRoute,
    result: RouteResult,
    decision: Decision,
    matched_regular: list[str],
    timezone: tzinfo,
    *,
    jobs: Sequence[ExistingJob],
) -> list[str]:
    spec = route.spec
    notes = [_skip_text(s, jobs) for s in decision.skipped if s.route == spec.name]
    wait = spec.require_order
    if result.on_images and wait is not None:
        left_out = ", ".join(route.skipped_for_images)
        notes.append(
            f"no order within {show_duration(wait.wait_seconds)}: routed on the images"
            + (f" ({left_out} left out)" if left_out else "")
        )
    if result.status is RouteStatus.WAITING_FOR_ORDER and wait is not None and result.until:
        notes.append(
            f"waiting for an order until "
            f"{result.until.astimezone(timezone).isoformat(timespec='seconds')} "
            f"(require_order: wait {show_duration(wait.wait_seconds)}, then {wait.then})"
        )
    if result.status is RouteStatus.WAITING_FOR_RESULT:
        notes.append(
            f"waiting for the result of {', '.join(result.waiting_for)} "
            "(routed again when it completes)"
        )
    elif route.results and result.status is RouteStatus.NOT_MATCHED:
        read = sorted({result_name(k) for k in route.results})
        notes.append(f"cascade: reads the result of {', '.join(read)}")
    if result.status is RouteStatus.NO_ORDER and wait is not None:
        notes.append(
            f"matches the images, but no order came within "
            f"{show_duration(wait.wait_seconds)} and require_order says skip"
        )
    if spec.fallback:
        if result.status is RouteStatus.FALLBACK_NOT_NEEDED:
            notes.append(f"fallback not needed: {', '.join(matched_regular)} matched")
        elif result.status in (RouteStatus.FIRED, RouteStatus.MATCHED):
            notes.append("fallback: no other route matched")
    if spec.priors is not None and result.status in (
        RouteStatus.FIRED,
        RouteStatus.MATCHED,
        RouteStatus.WAITING_FOR_ORDER,
    ):
        notes.append(f"priors: {spec.priors.describe()}")
    if spec.exclusive and result.status in (
        RouteStatus.FIRED,
        RouteStatus.MATCHED,
        RouteStatus.WAITING_FOR_ORDER,
    ):
        notes.append(
            "exclusive: later routes do not send to products of kind "
            + ", ".join(sorted(route.kinds))
        )
    return notes


def _skip_text(skip: Skip, jobs: Sequence[ExistingJob]) -> str:
    """A skipped delivery; for an existing job, whether it reached the vendor."""
    if skip.reason is not SkipReason.ALREADY_DELIVERED:
        return str(skip)
    same = [j for j in jobs if j.vendor == skip.vendor]
    job = max(same, key=lambda j: (j.route == skip.by_route, j.delivered, j.id), default=None)
    why = "resend_updates is false"
    if job is None:
        return f"{skip.vendor}: has a job for this study already (route '{skip.by_route}'); {why}"
    if job.delivered:
        return (
            f"{skip.vendor}: already delivered (job {job.id}, route '{job.route}', "
            f"{job.state}); {why}"
        )
    return (
        f"{skip.vendor}: a job exists (job {job.id}, route '{job.route}', {job.state}), "
        f"not delivered to the vendor; it is not created again ({why})"
    )


def _dispatch_json(d: Dispatch) -> dict[str, Any]:
    terms = d.terms
    return {
        "vendor": d.vendor,
        "series_uids": list(d.series_uids),
        "priority": d.priority.value,
        "deadline_seconds": d.deadline_seconds,
        "stable_seconds": d.stable_seconds,
        "write_back": list(d.write_back),
        "mode": terms.mode.value,
        "shadow": terms.shadow.value if terms.shadow is not None else None,
        "contract": terms.contract,
        "contract_state": terms.state,
        "charge": terms.charge.value if terms.charge is not None else None,
        "alert": terms.alert,
        "instead_of": d.instead_of,
    }


@dataclass(frozen=True, slots=True)
class Explained:
    """A decision explained, with what the routing input says besides the routes."""

    study: Study
    decision: Decision
    routes: tuple[RouteExplanation, ...]
    order: Order | None = None
    """The order routing used."""
    jobs: tuple[ExistingJob, ...] = ()
    notes: tuple[str, ...] = ()
    """About the input: why an order is not used, …"""
    blocked: str | None = None
    """Why the service does not route the study at all (its order is cancelled …)."""
    order_known: bool = field(default=True)
    """False when nothing was asked about an order (files without one)."""

    @property
    def outcome(self) -> str:
        """The decision's outcome, or ``not_routed`` when something stops routing."""
        return "not_routed" if self.blocked else self.decision.outcome.value

    @property
    def routed(self) -> bool:
        """Whether the study goes (or went) somewhere: a delivery to make, an order to wait
        for, or every matching vendor has its job already."""
        if self.blocked:
            return False
        outcome = self.decision.outcome
        if outcome in (Outcome.ROUTED, Outcome.WAITING):
            return True
        return outcome is Outcome.NOTHING_NEW and _all_had(self.decision)

    def text(self) -> str:
        """The report for people (``radbridge routes explain``)."""
        return to_text(
            self.study,
            list(self.routes),
            self.decision,
            order=self.order,
            jobs=self.jobs,
            notes=self.notes,
            blocked=self.blocked,
            order_known=self.order_known,
        )

    def rows(self) -> list[dict[str, Any]]:
        """One JSON object per route (``--json``, the REST API)."""
        return to_json(
            self.study.study_uid,
            list(self.routes),
            self.decision,
            order=self.order,
            jobs=self.jobs,
            notes=self.notes,
            blocked=self.blocked,
        )


def report(
    rules: RuleSet,
    study: Study,
    order: Order | None,
    now: datetime,
    *,
    tags: Mapping[str, str] | None = None,
    jobs: Sequence[ExistingJob] = (),
    notes: Sequence[str] = (),
    blocked: str | None = None,
    order_known: bool = True,
    used: Mapping[str, int] | None = None,
    earlier: Mapping[str, Mapping[str, bool]] | None = None,
) -> Explained:
    """:func:`explain`, with the order, the jobs, notes and what stops routing."""
    decision, routes = explain(
        rules, study, order, now, tags=tags, jobs=jobs, used=used, earlier=earlier
    )
    return Explained(
        study=study,
        decision=decision,
        routes=tuple(routes),
        order=order,
        jobs=tuple(jobs),
        notes=tuple(notes),
        blocked=blocked,
        order_known=order_known,
    )


def _all_had(decision: Decision) -> bool:
    """Every skipped delivery was skipped because the study has that job already."""
    return bool(decision.skipped) and all(
        s.reason is SkipReason.ALREADY_DELIVERED for s in decision.skipped
    )


def _order_json(order: Order | None) -> dict[str, Any] | None:
    if order is None:
        return None
    return {
        "accession_number": order.accession_number,
        "source": order.source.value,
        "status": order.status.value,
        "priority": order.priority.value,
        "procedure_code": order.procedure_code,
        "modality": order.modality,
        "department": order.department,
    }


def _job_json(job: ExistingJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "vendor": job.vendor,
        "state": job.state,
        "delivered": job.delivered,
        "priors": job.priors,
    }


def to_json(
    study_uid: str,
    explanations: list[RouteExplanation],
    decision: Decision,
    *,
    order: Order | None = None,
    jobs: Sequence[ExistingJob] = (),
    notes: Sequence[str] = (),
    blocked: str | None = None,
) -> list[dict[str, Any]]:
    """One JSON object per route: status, reason, failed condition, dispatches, notes, the
    route's existing jobs; the order used, notes about the input and the outcome."""
    outcome = "not_routed" if blocked else decision.outcome.value
    return [
        {
            "study_uid": study_uid,
            "route": e.route,
            "status": e.status.value,
            "matched": e.matched,
            "fired": bool(e.dispatches) and not blocked,
            "reason": str(e.failure) if e.failure else None,
            "failed": (
                {"condition": e.failure.condition, "wanted": e.failure.wanted, "got": e.failure.got}
                if e.failure
                else None
            ),
            "closest": e.closest,
            "outcome": outcome,
            "blocked": blocked,
            "dispatches": [] if blocked else [_dispatch_json(d) for d in e.dispatches],
            "notes": list(e.notes),
            "jobs": [_job_json(j) for j in jobs if j.route == e.route],
            "order": _order_json(order),
            "study_notes": list(notes),
        }
        for e in explanations
    ]


def _study_line(study: Study) -> str:
    parts = [
        study.description or "(no description)",
        "/".join(study.modalities) or "no modality",
        "/".join(study.body_parts) or "no body part",
        f"{len(study.series)} series, {study.instance_count} instances",
    ]
    return f"Study {study.study_uid}: " + "; ".join(parts)


def _order_line(order: Order) -> str:
    parts = [
        f"accession {order.accession_number or '(none)'}",
        order.source.value,
        order.status.value,
        f"priority {order.priority.value}",
    ]
    if order.procedure_code:
        parts.append(f"procedure {order.procedure_code}")
    if order.department:
        parts.append(f"department {order.department}")
    return "Order: " + ", ".join(parts)


def _dispatch_text(d: Dispatch, selector: SelectorName) -> str:
    n = len(d.series_uids)
    extra = [f"priority {d.priority}"]
    if d.deadline_seconds is not None:
        extra.append(f"deadline {show_duration(d.deadline_seconds)}")
    if d.terms.mode is Mode.SHADOW:
        extra.append("shadow mode: nothing written back")
    elif d.write_back:
        extra.append("write back " + ", ".join(d.write_back))
    if d.terms.state:
        extra.append(d.terms.state)
    if d.terms.alert and d.terms.alert not in (d.terms.state or ""):
        extra.append(f"alert: {d.terms.alert}")
    return f"-> {d.vendor}: {n} series ({selector}), " + ", ".join(extra)


def to_text(
    study: Study,
    explanations: list[RouteExplanation],
    decision: Decision,
    *,
    order: Order | None = None,
    jobs: Sequence[ExistingJob] = (),
    notes: Sequence[str] = (),
    blocked: str | None = None,
    order_known: bool = False,
) -> str:
    """A report for people: the study, its order and jobs, each route with its status and
    why, the outcome."""
    lines = [_study_line(study)]
    if order is not None:
        lines.append(_order_line(order))
    elif order_known:
        lines.append("Order: none")
    lines.extend(f"  note: {note}" for note in notes)
    if jobs:
        lines.append("Jobs:")
        lines.extend(f"  {job}" for job in jobs)
    width = max((len(e.route) for e in explanations), default=0)
    for e in explanations:
        reason = f"  {e.failure}" if e.failure else ""
        lines.append(f"  {_LABEL[e.status]:<12} {e.route:<{width}}{reason}".rstrip())
        for d in e.dispatches:
            lines.append(f"  {'':<12}   {_dispatch_text(d, e.selector)}")
        lines.extend(f"  {'':<12}   note: {note}" for note in e.notes)
    lines.append("Outcome: " + _outcome_text(decision, jobs, blocked))
    return "\n".join(lines)


def _outcome_text(decision: Decision, jobs: Sequence[ExistingJob], blocked: str | None) -> str:
    if blocked:
        return f"not routed: {blocked}"
    if decision.dispatches:
        vendors = ", ".join(dict.fromkeys(d.vendor for d in decision.dispatches))
        count = len(decision.dispatches)
        return f"routed to {vendors} ({count} deliver{'y' if count == 1 else 'ies'})"
    if decision.unrouted is not None:
        return f"unrouted: {decision.unrouted}"
    if decision.wait_until is not None:
        return f"waiting for an order until {decision.wait_until.isoformat(timespec='seconds')}"
    pending = sorted({n for r in decision.routes for n in r.waiting_for})
    if pending:
        return f"waiting for the result of {', '.join(pending)}"
    if _all_had(decision):
        delivered = sum(1 for j in jobs if j.delivered)
        waiting = len(jobs) - delivered
        return (
            "nothing new to send: every matching vendor has its job already "
            f"({delivered} delivered, {waiting} not delivered to the vendor)"
        )
    return "nothing new to send (every matching delivery was skipped)"
