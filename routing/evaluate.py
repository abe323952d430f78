"""Decide which vendor products get a study: ``decide(rules, study, order, now)``.

Every matching route fires, in configuration order, with these rules:

- **Deduplication**: a vendor gets a study once per decision; when two routes
  send to the same vendor the first wins and the second is recorded as
  ``duplicate``.
- **exclusive: true**: once such a route matches (or waits for its order),
  routes *after* it no longer send to vendors of an overlapping product
  (same vendor, or a vendor with the same ``kind``); those deliveries are
  recorded as ``exclusive``. The lower routes' other vendors still get it.
- **fallback: true**: the route fires only when no non-fallback route matched
  (a route waiting for its order counts as matched).
- **Updates** (a re-opened study, revision > 1): ``delivered`` holds the
  (route, vendor) pairs already delivered for the study. A vendor that
  already has the study is not sent it again, unless the route that matches
  now says ``resend_updates: true``.
- **require_order**: without an order the route first waits (``waiting``, with
  the time to decide again); after the wait it is evaluated on the images
  alone (its top-level ``order.*`` conditions left out) or skipped.
- **Contracts**: a delivery is made only when the product's contract in
  force covers the study (dates, ordering department, quota with the
  ``used`` counts given), else by its action (:mod:`routing.contracts`):
  another vendor of the same kind, shadow mode, billed per use, or not at
  all (``contract``). Every dispatch carries its :class:`Terms`.
- **Unrouted**: when no route matches, the decision names the closest route
  (the most conditions met, in order) and its first failing condition.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from broker.model.domain import Order, Priority, Study
from broker.model.mode import Mode
from routing.compile import CompiledRoute, RuleSet
from routing.contracts import Terms, judge, route_shadow
from routing.facts import Facts
from routing.schema import OnNoOrder, show_duration
from routing.selectors import select_series
from routing.trace import Failure, first_failure


class RouteStatus(enum.StrEnum):
    """What became of one route for one study."""

    FIRED = "fired"
    """Matched and sends the study to at least one vendor."""
    MATCHED = "matched"
    """Matched, but every delivery was skipped (duplicate, exclusive, delivered, no series)."""
    NOT_MATCHED = "not_matched"
    WAITING_FOR_ORDER = "waiting_for_order"
    NO_ORDER = "no_order"
    """Matched on the images, but no order came in time and the route says ``then: skip``."""
    FALLBACK_NOT_NEEDED = "fallback_not_needed"
    WAITING_FOR_RESULT = "waiting_for_result"
    """Holds but for findings of earlier results that are not complete yet (a cascade): the
    study is routed again when each result completes."""


class SkipReason(enum.StrEnum):
    """Why a matching route did not send to one of its vendors."""

    DUPLICATE = "duplicate"
    EXCLUSIVE = "exclusive"
    ALREADY_DELIVERED = "already_delivered"
    NO_SERIES = "no_series"
    CONTRACT = "contract"
    """The product's contract does not cover the study and its action is ``stop`` (or a
    ``fallback`` found no vendor)."""


class Outcome(enum.StrEnum):
    """The decision as a whole."""

    ROUTED = "routed"
    UNROUTED = "unrouted"
    WAITING = "waiting"
    """Nothing to send yet: a route waits for an order (decide again at ``wait_until``)."""
    NOTHING_NEW = "nothing_new"
    """Routes match, but every delivery is skipped (e.g. all already delivered)."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One delivery to make: a study and a vendor product, from one route."""

    route: str
    vendor: str
    series_uids: tuple[str, ...]
    priority: Priority
    deadline_seconds: float | None
    stable_seconds: float | None
    write_back: tuple[str, ...]
    terms: Terms = field(default_factory=Terms)
    """The contract, what the use counts as, and the mode (live or shadow)."""
    instead_of: str | None = None
    """The vendor the route named, when its contract's fallback sends to this one."""


@dataclass(frozen=True, slots=True)
class Skip:
    """A delivery a matching route did not make, and why."""

    route: str
    vendor: str
    reason: SkipReason
    by_route: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.reason is SkipReason.CONTRACT:
            return self.detail
        return {
            SkipReason.DUPLICATE: f"{self.vendor}: deduplicated, route '{self.by_route}' "
            "already sends it this study",
            SkipReason.EXCLUSIVE: f"{self.vendor}: suppressed by exclusive route "
            f"'{self.by_route}' (overlapping product)",
            SkipReason.ALREADY_DELIVERED: f"{self.vendor}: already delivered (route "
            f"'{self.by_route}'); resend_updates is false",
            SkipReason.NO_SERIES: f"{self.vendor}: no series selected",
        }[self.reason]


@dataclass(frozen=True, slots=True)
class RouteResult:
    """A route that matched in some way (routes absent from a decision did not match)."""

    route: str
    status: RouteStatus
    on_images: bool = False
    """Matched without an order after ``require_order`` waited (order conditions left out)."""
    until: datetime | None = None
    """While waiting for an order: when the wait ends."""
    waiting_for: tuple[str, ...] = ()
    """While waiting for earlier results: the products or routes whose results it reads."""


@dataclass(frozen=True, slots=True)
class Unrouted:
    """Why nothing matched: the closest route and its first failing condition."""

    closest_route: str | None
    failure: Failure | None

    def __str__(self) -> str:
        if self.closest_route is None:
            return "no routes are configured"
        return f"closest route '{self.closest_route}': {self.failure}"


@dataclass(frozen=True, slots=True)
class Decision:
    """Which vendors get a study, and what happened to every route that matched."""

    study_uid: str
    revision: int
    outcome: Outcome
    dispatches: tuple[Dispatch, ...]
    skipped: tuple[Skip, ...]
    routes: tuple[RouteResult, ...]
    unrouted: Unrouted | None = None
    wait_until: datetime | None = None

    @property
    def routed(self) -> bool:
        """True when at least one delivery is to be made."""
        return bool(self.dispatches)

    def status_of(self, route: str) -> RouteResult:
        """The result of one route (``not_matched`` when it is not recorded)."""
        found = next((r for r in self.routes if r.route == route), None)
        return found or RouteResult(route, RouteStatus.NOT_MATCHED)


def decide(
    rules: RuleSet,
    study: Study,
    order: Order | None,
    now: datetime,
    *,
    tags: Mapping[str, str] | None = None,
    delivered: Collection[tuple[str, str]] = (),
    used: Mapping[str, int] | None = None,
    earlier: Mapping[str, Mapping[str, bool]] | None = None,
) -> Decision:
    """Decide where ``study`` goes. Pure: no I/O; ``now`` without a timezone is UTC.

    ``tags`` are the study's indexed DICOM tags by keyword; ``delivered`` the
    (route, vendor) pairs already delivered for an earlier revision; ``used`` the
    uses each contract counted in its current period, by contract name; ``earlier`` the
    findings of the study's complete results (:class:`~routing.facts.Facts`).
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
    return decide_facts(rules, facts, now, delivered, used)


def _order_reference(study: Study) -> datetime:
    ref = study.stable_at or study.last_received_at
    return ref if ref.tzinfo is not None else ref.replace(tzinfo=UTC)


def decide_facts(
    rules: RuleSet,
    facts: Facts,
    now: datetime,
    delivered: Collection[tuple[str, str]] = (),
    used: Mapping[str, int] | None = None,
) -> Decision:
    """:func:`decide` on facts already computed (what explanations reuse)."""
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    study, order = facts.study, facts.order
    results: dict[str, RouteResult] = {}
    candidates: list[CompiledRoute] = []
    regular_matched = False
    closest: CompiledRoute | None = None
    closest_score = -1.0
    for route in rules.routes:
        spec = route.spec
        passed = route.passed(facts)
        result: RouteResult | None = None
        if spec.require_order is not None and order is None:
            if passed == route.total or route.matches_on_images(facts):
                until = _order_reference(study) + timedelta(seconds=spec.require_order.wait_seconds)
                if now < until:
                    result = RouteResult(spec.name, RouteStatus.WAITING_FOR_ORDER, until=until)
                elif spec.require_order.then is OnNoOrder.SKIP:
                    result = RouteResult(spec.name, RouteStatus.NO_ORDER)
                else:
                    result = RouteResult(spec.name, RouteStatus.MATCHED, on_images=True)
        elif passed == route.total:
            result = RouteResult(spec.name, RouteStatus.MATCHED)
        elif route.results and (missing := route.waits_for(facts)):
            results[spec.name] = RouteResult(
                spec.name, RouteStatus.WAITING_FOR_RESULT, waiting_for=missing
            )
            continue
        if result is None:
            score = passed / route.total
            if score > closest_score:
                closest, closest_score = route, score
            continue
        results[spec.name] = result
        if result.status is not RouteStatus.NO_ORDER:
            candidates.append(route)
            regular_matched = regular_matched or not spec.fallback

    dispatches: list[Dispatch] = []
    skipped: list[Skip] = []
    sent_by: dict[str, str] = {}
    day = facts.local_time.date()
    department = order.department if order is not None else None
    earlier = {vendor: route for route, vendor in delivered}
    claims: list[tuple[frozenset[str], str]] = []
    for route in candidates:
        spec = route.spec
        result = results[spec.name]
        if spec.fallback and regular_matched:
            results[spec.name] = RouteResult(spec.name, RouteStatus.FALLBACK_NOT_NEEDED)
            continue
        if result.status is RouteStatus.MATCHED:
            fired = False
            series = None
            for vendor in spec.send:
                kind = rules.kind_of(vendor)
                claim = next((name for kinds, name in claims if kind in kinds), None)
                reason: SkipReason | None = None
                by: str | None = None
                if vendor in sent_by:
                    reason, by = SkipReason.DUPLICATE, sent_by[vendor]
                elif claim is not None:
                    reason, by = SkipReason.EXCLUSIVE, claim
                elif vendor in earlier and not spec.resend_updates:
                    reason, by = SkipReason.ALREADY_DELIVERED, earlier[vendor]
                else:
                    if series is None:
                        series = select_series(route, facts)
                    if not series:
                        reason = SkipReason.NO_SERIES
                if reason is not None:
                    skipped.append(Skip(spec.name, vendor, reason, by))
                    continue
                assert series is not None
                verdict = judge(
                    rules.products,
                    rules.vendor_kinds,
                    vendor,
                    day=day,
                    department=department,
                    used=used or {},
                    taken={*sent_by, *spec.send},
                    site=study.site,
                    order=spec.fallback_order(vendor),
                )
                if verdict.terms is None or verdict.instead_of is not None:
                    skipped.append(Skip(spec.name, vendor, SkipReason.CONTRACT, detail=verdict.why))
                if verdict.terms is None:
                    continue
                if verdict.vendor in earlier and not spec.resend_updates:
                    skipped.append(
                        Skip(
                            spec.name,
                            verdict.vendor,
                            SkipReason.ALREADY_DELIVERED,
                            earlier[verdict.vendor],
                        )
                    )
                    continue
                terms = verdict.terms
                if spec.mode is Mode.SHADOW and terms.shadow is None:
                    terms = route_shadow(terms)
                sent_by[verdict.vendor] = spec.name
                fired = True
                dispatches.append(
                    Dispatch(
                        route=spec.name,
                        vendor=verdict.vendor,
                        series_uids=tuple(s.series_uid for s in series),
                        priority=spec.priority,
                        deadline_seconds=spec.deadline_seconds,
                        stable_seconds=spec.stable_seconds,
                        write_back=spec.write_back,
                        terms=terms,
                        instead_of=verdict.instead_of,
                    )
                )
            if fired:
                results[spec.name] = RouteResult(
                    spec.name, RouteStatus.FIRED, on_images=result.on_images
                )
        if spec.exclusive:
            claims.append((route.kinds, spec.name))

    waiting = [r.until for r in results.values() if r.until is not None]
    for_results = any(r.status is RouteStatus.WAITING_FOR_RESULT for r in results.values())
    unrouted: Unrouted | None = None
    if dispatches:
        outcome = Outcome.ROUTED
    elif waiting or for_results:
        outcome = Outcome.WAITING
    elif any(r.status is not RouteStatus.NO_ORDER for r in results.values()):
        outcome = Outcome.NOTHING_NEW
    else:
        outcome = Outcome.UNROUTED
        unrouted = _unrouted(rules, facts, results, closest)
    return Decision(
        study_uid=study.study_uid,
        revision=study.revision,
        outcome=outcome,
        dispatches=tuple(dispatches),
        skipped=tuple(skipped),
        routes=tuple(results.values()),
        unrouted=unrouted,
        wait_until=min(waiting) if waiting else None,
    )


def _unrouted(
    rules: RuleSet,
    facts: Facts,
    results: Mapping[str, RouteResult],
    closest: CompiledRoute | None,
) -> Unrouted:
    for route in rules.routes:
        if route.spec.name in results and route.spec.require_order is not None:
            wait = show_duration(route.spec.require_order.wait_seconds)
            return Unrouted(
                route.spec.name,
                Failure("order", f"an order within {wait} (require_order)", "none"),
            )
    if closest is None:
        return Unrouted(None, None)
    return Unrouted(closest.spec.name, first_failure(closest, facts))
