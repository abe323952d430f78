"""Explain a decision: every route, matched or not and why, as text or JSON.

``explain(...)`` returns the decision and one :class:`RouteExplanation` per
route, in configuration order: its status, the first failing condition with
wanted and actual values (``modality: wanted CT, got MR``), what it sends,
and notes on deduplication, exclusive and fallback routes, and orders.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from broker.model.domain import Order, Study
from routing.compile import CompiledRoute, RuleSet
from routing.evaluate import Decision, Dispatch, RouteResult, RouteStatus, decide_facts
from routing.facts import Facts
from routing.schema import SelectorName, show_duration
from routing.trace import Failure, first_failure

_LABEL = {
    RouteStatus.FIRED: "fired",
    RouteStatus.MATCHED: "matched",
    RouteStatus.NOT_MATCHED: "not matched",
    RouteStatus.WAITING_FOR_ORDER: "waiting",
    RouteStatus.NO_ORDER: "no order",
    RouteStatus.FALLBACK_NOT_NEEDED: "not needed",
}


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
) -> tuple[Decision, list[RouteExplanation]]:
    """The decision for ``study`` and an explanation of every route."""
    facts = Facts(study, order, tags or {}, now, rules.timezone, tag_kinds=rules.tag_kinds)
    decision = decide_facts(rules, facts, now, delivered)
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
                notes=tuple(_notes(route, result, decision, matched_regular, rules.timezone)),
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
) -> list[str]:
    spec = route.spec
    notes = [str(s) for s in decision.skipped if s.route == spec.name]
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


def _dispatch_json(d: Dispatch) -> dict[str, Any]:
    return {
        "vendor": d.vendor,
        "series_uids": list(d.series_uids),
        "priority": d.priority.value,
        "deadline_seconds": d.deadline_seconds,
        "stable_seconds": d.stable_seconds,
        "write_back": list(d.write_back),
    }


def to_json(
    study_uid: str, explanations: list[RouteExplanation], decision: Decision
) -> list[dict[str, Any]]:
    """One JSON object per route: status, reason, failed condition, dispatches, notes."""
    return [
        {
            "study_uid": study_uid,
            "route": e.route,
            "status": e.status.value,
            "matched": e.matched,
            "fired": bool(e.dispatches),
            "reason": str(e.failure) if e.failure else None,
            "failed": (
                {"condition": e.failure.condition, "wanted": e.failure.wanted, "got": e.failure.got}
                if e.failure
                else None
            ),
            "closest": e.closest,
            "outcome": decision.outcome.value,
            "dispatches": [_dispatch_json(d) for d in e.dispatches],
            "notes": list(e.notes),
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


def _dispatch_text(d: Dispatch, selector: SelectorName) -> str:
    n = len(d.series_uids)
    extra = [f"priority {d.priority}"]
    if d.deadline_seconds is not None:
        extra.append(f"deadline {show_duration(d.deadline_seconds)}")
    if d.write_back:
        extra.append("write back " + ", ".join(d.write_back))
    return f"-> {d.vendor}: {n} series ({selector}), " + ", ".join(extra)


def to_text(study: Study, explanations: list[RouteExplanation], decision: Decision) -> str:
    """A report for people: the study, each route with its status and why, the outcome."""
    lines = [_study_line(study)]
    width = max((len(e.route) for e in explanations), default=0)
    for e in explanations:
        reason = f"  {e.failure}" if e.failure else ""
        lines.append(f"  {_LABEL[e.status]:<12} {e.route:<{width}}{reason}".rstrip())
        for d in e.dispatches:
            lines.append(f"  {'':<12}   {_dispatch_text(d, e.selector)}")
        lines.extend(f"  {'':<12}   note: {note}" for note in e.notes)
    lines.append("Outcome: " + _outcome_text(decision))
    return "\n".join(lines)


def _outcome_text(decision: Decision) -> str:
    if decision.dispatches:
        vendors = ", ".join(dict.fromkeys(d.vendor for d in decision.dispatches))
        count = len(decision.dispatches)
        return f"routed to {vendors} ({count} deliver{'y' if count == 1 else 'ies'})"
    if decision.unrouted is not None:
        return f"unrouted: {decision.unrouted}"
    if decision.wait_until is not None:
        return f"waiting for an order until {decision.wait_until.isoformat(timespec='seconds')}"
    return "nothing new to send (every matching delivery was skipped)"
