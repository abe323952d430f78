"""The route language: conditions, series selectors and route specifications.

A ``when:`` mapping from the configuration becomes (by :mod:`routing.parse`)
a tree of :class:`Leaf`, :class:`Not`, :class:`All` and :class:`AnyOf` nodes.

Condition syntax (keys are fields; a value is a literal or an operator mapping)::

    modality: CT                          # literal: equals (case-insensitive)
    body_part: [CHEST, LUNG]              # list literal: in
    study_description: {regex: "lung|thorax"}
    series.slice_thickness: {gt: 0, lte: 2.5}   # several operators: all must hold
    tag.InstitutionName: {eq: "North Campus", case_sensitive: true}
    order.priority: {not: routine}
    not: {calling_ae: TESTCT}
    any: [{modality: CT}, {modality: MR}]

Operators: ``eq``, ``in``, ``regex`` (``re.search``, case-insensitive unless
``case_sensitive: true``), ``lt``/``lte``/``gt``/``gte`` (number fields only),
``exists`` (true/false), ``not`` (wraps a literal or an operator mapping).

Lists (``modalities``, ``series.image_type``): ``eq: X`` holds when X is in
the list, ``eq: [X, Y]`` (or the literal ``[X, Y]``) when both are, ``in:
[...]`` when every element of the (non-empty) list is among those given.

Series: every ``series.*`` condition of a route is tested against one series
at a time, together: the study matches when at least one series satisfies
all of them (including those inside ``any``/``all``/``not``) at once.
``not`` on a series condition therefore reads "a series for which … is not so".
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from broker.model.domain import Priority
from broker.model.mode import Mode
from routing.fields import FieldSpec, Source


class Op(enum.StrEnum):
    """A comparison operator."""

    EQ = "eq"
    IN = "in"
    REGEX = "regex"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    EXISTS = "exists"


COMPARISONS = frozenset({Op.LT, Op.LTE, Op.GT, Op.GTE})


class OnNoOrder(enum.StrEnum):
    """What a route with ``require_order`` does once the wait for an order is over."""

    ROUTE_ON_IMAGES = "route_on_images"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Leaf:
    """One field compared with one operator.

    ``wanted`` is folded (casefolded text) unless ``case_sensitive``; ``shown``
    is how a person reads what was wanted (``<= 2.5``, ``one of CHEST, LUNG``).
    """

    field: FieldSpec
    op: Op
    wanted: Any
    shown: str
    case_sensitive: bool = False
    pattern: re.Pattern[str] | None = None

    @property
    def label(self) -> str:
        """The field as the configuration wrote it."""
        return self.field.name


@dataclass(frozen=True, slots=True)
class Not:
    inner: Condition


@dataclass(frozen=True, slots=True)
class All:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]


Condition = Leaf | Not | All | AnyOf


@dataclass(frozen=True, slots=True)
class Conditions:
    """A parsed ``when``: its top-level conditions, all of which must hold."""

    items: tuple[Condition, ...] = ()


class SelectorName(enum.StrEnum):
    """How a route picks the series it sends."""

    ALL = "all"
    THINNEST_AXIAL = "thinnest_axial"
    LARGEST = "largest"
    FIRST = "first"
    MATCHING = "matching"
    CONDITIONS = "conditions"


NAMED_SELECTORS = tuple(s.value for s in SelectorName if s is not SelectorName.CONDITIONS)


@dataclass(frozen=True, slots=True)
class SeriesSelector:
    """A named selector, or series conditions (``name`` is ``conditions``)."""

    name: SelectorName = SelectorName.ALL
    conditions: Conditions = Conditions()


@dataclass(frozen=True, slots=True)
class RequireOrder:
    """Wait up to ``wait_seconds`` for an order before routing."""

    wait_seconds: float
    then: OnNoOrder = OnNoOrder.ROUTE_ON_IMAGES


class OnIncomplete(enum.StrEnum):
    """What a route with expected series does when they are not all in by its deadline."""

    SEND_INCOMPLETE = "send_incomplete"
    """The study is complete without them; the route sends what came."""
    WAIT = "wait"
    """The study keeps waiting for them (past the deadline; recorded)."""
    SKIP = "skip"
    """The study is complete without them; this route does not send it."""


@dataclass(frozen=True, slots=True)
class ExpectedSeries:
    """The series a complete study must hold for a route: each a name and series conditions
    (as a route's series selector), with a deadline from the study's first instance."""

    series: tuple[tuple[str, Conditions], ...]
    deadline_seconds: float
    on_timeout: OnIncomplete = OnIncomplete.SEND_INCOMPLETE


@dataclass(frozen=True, slots=True)
class PriorsAsked:
    """The prior studies a route sends along (``priors``), as explain says them; fetched by
    the job worker, not by routing."""

    source: str
    count: int = 1
    same_modality: bool = True
    body_part: bool = False
    max_age_seconds: float | None = None
    wait_seconds: float = 30.0

    def describe(self) -> str:
        """``up to 3 prior studies from pacs (same modality, at most 3650d old); …``."""
        also = ["same patient ID and issuer"]
        if self.same_modality:
            also.append("same modality")
        if self.body_part:
            also.append("same body part")
        if self.max_age_seconds:
            also.append(f"at most {show_duration(self.max_age_seconds)} old")
        noun = "study" if self.count == 1 else "studies"
        return (
            f"up to {self.count} prior {noun} from {self.source} ({', '.join(also)}); "
            f"the job waits at most {show_duration(self.wait_seconds)} for them"
        )


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route, validated: what routing needs, in the units it uses."""

    name: str
    when: Conditions
    send: tuple[str, ...]
    series: SeriesSelector = SeriesSelector()
    priority: Priority = Priority.ROUTINE
    stable_seconds: float | None = None
    deadline_seconds: float | None = None
    write_back: tuple[str, ...] = ()
    exclusive: bool = False
    fallback: bool = False
    resend_updates: bool = False
    require_order: RequireOrder | None = None
    expect: ExpectedSeries | None = None
    mode: Mode = Mode.LIVE
    """``shadow``: every delivery of the route runs in shadow mode (nothing written back)."""
    priors: PriorsAsked | None = None
    fallback_to: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Per vendor of ``send``: the vendors a contract's ``fallback`` tries, in this order
    (none named: the other vendors of its kind)."""

    def fallback_order(self, vendor: str) -> tuple[str, ...]:
        """The vendors a contract's fallback for ``vendor`` tries on this route, in order."""
        return next((order for sent, order in self.fallback_to if sent == vendor), ())


def leaves(node: Condition | Conditions) -> list[Leaf]:
    """Every leaf under ``node``."""
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, Not):
        return leaves(node.inner)
    return [leaf for item in node.items for leaf in leaves(item)]


def uses(node: Condition, source: Source) -> bool:
    """True when any leaf under ``node`` reads a field of ``source``."""
    return any(leaf.field.source is source for leaf in leaves(node))


def show_duration(seconds: float) -> str:
    """``900`` → ``15m``, ``5400`` → ``1h30m``, ``7.5`` → ``7.5s``: how durations are written."""
    if seconds <= 0 or not float(seconds).is_integer():
        return f"{seconds:g}s"
    whole = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)
