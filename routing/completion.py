"""Is a study complete? Expected series, notices and the quiet timer, decided purely.

A route may list the series a complete study must hold (``expect``). While a
study is arriving, a route *expects* it when the route's study-level
conditions hold (its series conditions wait for the series themselves); the
study is complete as soon as every expecting route has all its series. Before
a route's deadline (from the study's first instance) a study it waits for is
held, even past its quiet time; at the deadline (quiet or not) the route's
``on_timeout`` decides: ``send_incomplete`` and ``skip`` complete the study (``skip`` keeps
that route from sending it), ``wait`` keeps it waiting.

The evidence of a notice (an MPPS or IAN: :func:`broker.model.completion.notice_evidence`)
completes a study at once, whatever the expected series say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from broker.model.completion import Completion
from routing.compile import RuleSet
from routing.facts import Facts
from routing.schema import OnIncomplete


@dataclass(frozen=True, slots=True)
class Expectation:
    """One route's expected series for one study: which are still missing, and until when
    the study waits for them."""

    route: str
    expected: tuple[str, ...]
    missing: tuple[str, ...]
    deadline: datetime
    on_timeout: OnIncomplete

    def describe(self) -> str:
        """``route stroke: perfusion missing of ncct, cta, perfusion``."""
        if not self.missing:
            return f"route {self.route}: all of {', '.join(self.expected)} in"
        return (
            f"route {self.route}: {', '.join(self.missing)} missing "
            f"(expects {', '.join(self.expected)})"
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the study is complete now, why, and what routing must leave out."""

    complete: bool
    reason: Completion | None = None
    detail: str = ""
    hold_until: datetime | None = None
    """Not complete: when to decide again (a deadline); None: when more instances come."""
    skip_routes: tuple[str, ...] = ()
    """Routes whose expected series are missing past a ``skip`` deadline: they do not send."""
    expectations: tuple[Expectation, ...] = field(default=())


def expectations(rules: RuleSet, facts: Facts, first_received: datetime) -> tuple[Expectation, ...]:
    """The expected series of every route that expects this study, with those missing."""
    out: list[Expectation] = []
    for route in rules.routes:
        spec = route.spec.expect
        if spec is None or not all(test(facts, None) for test in route.study_tests):
            continue
        missing = tuple(
            name
            for name, tests in route.expect_tests
            if not any(all(test(facts, s) for test in tests) for s in facts.series)
        )
        out.append(
            Expectation(
                route=route.name,
                expected=tuple(name for name, _ in route.expect_tests),
                missing=missing,
                deadline=first_received + timedelta(seconds=spec.deadline_seconds),
                on_timeout=spec.on_timeout,
            )
        )
    return tuple(out)


def verdict(
    expected: Sequence[Expectation],
    now: datetime,
    *,
    quiet: bool,
    notice: tuple[Completion, str] | None = None,
) -> Verdict:
    """Complete or not, now. ``quiet``: the study's quiet time has passed (the fallback
    may decide); ``notice``: what an MPPS or IAN proved (it decides alone)."""
    held = tuple(expected)
    if notice is not None:
        return Verdict(True, notice[0], notice[1], expectations=held)
    waiting = [e for e in expected if e.missing]
    if expected and not waiting:
        detail = "; ".join(e.describe() for e in expected)
        return Verdict(True, Completion.EXPECTED_SERIES, detail, expectations=held)
    if not waiting:
        if quiet:
            quiet_detail = "no new instance for its quiet time"
            return Verdict(True, Completion.QUIET, quiet_detail, expectations=held)
        return Verdict(False, expectations=held)
    early = [e for e in waiting if now < e.deadline]
    if early:
        until = min(e.deadline for e in early)
        shown = until.isoformat(timespec="seconds")
        detail = "; ".join(e.describe() for e in early) + f"; waiting until {shown}"
        return Verdict(False, detail=detail, hold_until=until, expectations=held)
    stay = [e for e in waiting if e.on_timeout is OnIncomplete.WAIT]
    if stay:
        still = "; ".join(e.describe() for e in stay)
        detail = f"deadline passed; {still}; on_timeout wait: still waiting"
        return Verdict(False, detail=detail, expectations=held)
    skipped = tuple(e.route for e in waiting if e.on_timeout is OnIncomplete.SKIP)
    parts = [
        e.describe() + (" — not sent (skip)" if e.route in skipped else " — sent incomplete")
        for e in waiting
    ]
    return Verdict(
        True,
        Completion.DEADLINE,
        "deadline passed; " + "; ".join(parts),
        skip_routes=skipped,
        expectations=held,
    )
