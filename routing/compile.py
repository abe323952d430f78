"""Compile parsed routes into closures, once, so a decision is a few lookups per rule.

A route's top-level conditions are split in two: study-level conditions are
tested once, and conditions that read a ``series.*`` field anywhere are
tested together against one series at a time (see :mod:`routing.schema`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker.model.contract import ProductTerms
from broker.model.errors import RoutingError
from routing.facts import Facts, SeriesFacts, Values
from routing.fields import Kind, Source, result_name
from routing.schema import (
    All,
    AnyOf,
    Condition,
    Leaf,
    Not,
    Op,
    RouteSpec,
    leaves,
    uses,
)

Predicate = Callable[[Facts, Any], bool]
"""``predicate(facts, series)``: ``series`` is a SeriesFacts, or None for study-level tests."""
Test = Callable[[Values], bool]


def _absent(values: Values) -> bool:
    return not values


def _test(leaf: Leaf) -> Test:
    """The comparison of one leaf, on a field's candidate values."""
    op, wanted = leaf.op, leaf.wanted
    if op is Op.EXISTS:
        return bool if wanted else _absent
    if op is Op.REGEX:
        assert leaf.pattern is not None
        search = leaf.pattern.search
        return lambda vs: any(search(v) for v in vs)
    if op is Op.LT:
        return lambda vs: any(v < wanted for v in vs)
    if op is Op.LTE:
        return lambda vs: any(v <= wanted for v in vs)
    if op is Op.GT:
        return lambda vs: any(v > wanted for v in vs)
    if op is Op.GTE:
        return lambda vs: any(v >= wanted for v in vs)
    is_list = leaf.field.kind is Kind.TEXT_LIST
    if op is Op.IN:
        if is_list:
            return lambda vs: bool(vs) and wanted.issuperset(vs)
        return lambda vs: not wanted.isdisjoint(vs)
    if isinstance(wanted, tuple):  # eq on a list field with several values: all present
        return lambda vs: all(w in vs for w in wanted)
    return lambda vs: wanted in vs


def reads_folded(leaf: Leaf) -> bool:
    """True when the leaf compares casefolded text (eq and in, unless case-sensitive)."""
    return leaf.op in (Op.EQ, Op.IN) and not leaf.case_sensitive


_COMPARE: dict[Op, Callable[[Any, Any], bool]] = {
    Op.LT: operator.lt,
    Op.LTE: operator.le,
    Op.GT: operator.gt,
    Op.GTE: operator.ge,
}


@functools.lru_cache(maxsize=8192)
def compile_leaf(leaf: Leaf) -> Predicate:
    """One leaf as ``predicate(facts, series) -> bool``.

    Study fields read ``facts``; series fields read ``series`` (never None for
    them: series conditions are only tested series by series). The common
    operators get a closure each, so a test is one call and one lookup.
    """
    key, op, wanted = leaf.field.key, leaf.op, leaf.wanted
    folded = reads_folded(leaf)
    on_series = leaf.field.series
    scalar = leaf.field.kind is not Kind.TEXT_LIST
    if op is Op.EQ and not isinstance(wanted, tuple):
        if on_series:
            if folded:
                return lambda f, s: wanted in s.folded[key]
            return lambda f, s: wanted in s.raw[key]
        if folded:
            return lambda f, s: wanted in f.folded[key]
        return lambda f, s: wanted in f.raw[key]
    if op is Op.IN and scalar:
        if on_series:
            if folded:
                return lambda f, s: not wanted.isdisjoint(s.folded[key])
            return lambda f, s: not wanted.isdisjoint(s.raw[key])
        if folded:
            return lambda f, s: not wanted.isdisjoint(f.folded[key])
        return lambda f, s: not wanted.isdisjoint(f.raw[key])
    if op in _COMPARE:
        compare = _COMPARE[op]

        def compared(f: Facts, s: Any) -> bool:
            for value in (s.raw if on_series else f.raw)[key]:  # noqa: SIM110 - faster than any()
                if compare(value, wanted):
                    return True
            return False

        return compared
    test = _test(leaf)
    if on_series:
        if folded:
            return lambda f, s: test(s.folded[key])
        return lambda f, s: test(s.raw[key])
    if folded:
        return lambda f, s: test(f.folded[key])
    return lambda f, s: test(f.raw[key])


def _negated_leaf(leaf: Leaf) -> Predicate | None:
    """``not`` of a scalar eq / in leaf as one closure (the common ``{not: X}``), else None."""
    key, wanted = leaf.field.key, leaf.wanted
    if leaf.field.kind is Kind.TEXT_LIST or leaf.op not in (Op.EQ, Op.IN):
        return None
    folded = reads_folded(leaf)
    if leaf.op is Op.EQ:
        if leaf.field.series:
            if folded:
                return lambda f, s: wanted not in s.folded[key]
            return lambda f, s: wanted not in s.raw[key]
        if folded:
            return lambda f, s: wanted not in f.folded[key]
        return lambda f, s: wanted not in f.raw[key]
    if leaf.field.series:
        if folded:
            return lambda f, s: wanted.isdisjoint(s.folded[key])
        return lambda f, s: wanted.isdisjoint(s.raw[key])
    if folded:
        return lambda f, s: wanted.isdisjoint(f.folded[key])
    return lambda f, s: wanted.isdisjoint(f.raw[key])


def compile_condition(node: Condition) -> Predicate:
    """A condition tree as one predicate."""
    if isinstance(node, Leaf):
        return compile_leaf(node)
    if isinstance(node, Not):
        if isinstance(node.inner, Leaf):
            negated = _negated_leaf(node.inner)
            if negated is not None:
                return negated
        inner = compile_condition(node.inner)
        return lambda f, s: not inner(f, s)
    items = tuple(compile_condition(item) for item in node.items)
    if isinstance(node, AnyOf):
        return lambda f, s: any(p(f, s) for p in items)
    assert isinstance(node, All)
    if len(items) == 1:
        return items[0]
    return lambda f, s: all(p(f, s) for p in items)


@dataclass(frozen=True, slots=True)
class Conjunct:
    """One top-level condition of a route and its compiled predicate."""

    node: Condition
    test: Predicate


def _conjuncts(nodes: Iterable[Condition]) -> tuple[Conjunct, ...]:
    return tuple(Conjunct(n, compile_condition(n)) for n in nodes)


def _only_order(node: Condition) -> bool:
    return all(leaf.field.source is Source.ORDER for leaf in leaves(node))


@dataclass(frozen=True, eq=False)
class CompiledRoute:
    """A route ready to evaluate. ``passed`` counts the conditions that hold, in order.

    ``images_*`` are the conditions without the top-level ``order.*`` ones, used
    when ``require_order`` has waited in vain and says ``route_on_images``.
    """

    spec: RouteSpec
    index: int
    study: tuple[Conjunct, ...]
    series: tuple[Conjunct, ...]
    images_study: tuple[Conjunct, ...]
    images_series: tuple[Conjunct, ...]
    kinds: frozenset[str]
    skipped_for_images: tuple[str, ...]
    selector_tests: tuple[Predicate, ...]
    expect_tests: tuple[tuple[str, tuple[Predicate, ...]], ...] = ()
    """Each expected series (``expect``) by name, with its compiled series conditions."""
    study_tests: tuple[Predicate, ...] = field(init=False, repr=False)
    series_tests: tuple[Predicate, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "study_tests", tuple(c.test for c in self.study))
        object.__setattr__(self, "series_tests", tuple(c.test for c in self.series))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def results(self) -> frozenset[str]:
        """The ``result.*`` fields the route's conditions read."""
        return frozenset(
            leaf.field.key for leaf in leaves(self.spec.when) if leaf.field.source is Source.RESULT
        )

    def waits_for(self, facts: Facts) -> tuple[str, ...]:
        """The products or routes whose results the route still waits for: those its
        conditions read that the study has no complete result of, while every condition
        that does not read them holds (else nothing: the route simply does not match)."""
        missing = {result_name(k) for k in self.results} - facts.results_done
        if not missing:
            return ()

        def waiting(node: Condition) -> bool:
            return any(
                leaf.field.source is Source.RESULT and result_name(leaf.field.key) in missing
                for leaf in leaves(node)
            )

        if not all(c.test(facts, None) for c in self.study if not waiting(c.node)):
            return ()
        tests = self.series_tests
        if tests and _best_series(tests, facts) != len(tests):
            return ()
        return tuple(sorted(missing))

    @property
    def total(self) -> int:
        """How many conditions ``passed`` counts: study conditions plus series ones."""
        return len(self.study) + len(self.series)

    def passed(self, facts: Facts) -> int:
        """Conditions that hold before the first that fails; ``total`` means it matches."""
        n = 0
        for test in self.study_tests:
            if not test(facts, None):
                return n
            n += 1
        if not self.series_tests:
            return n
        return n + _best_series(self.series_tests, facts)

    def matches_on_images(self, facts: Facts) -> bool:
        """True when the route holds with its top-level order conditions left out."""
        if not all(c.test(facts, None) for c in self.images_study):
            return False
        tests = tuple(c.test for c in self.images_series)
        return not tests or _best_series(tests, facts) == len(tests)

    def matching_series(self, facts: Facts) -> tuple[SeriesFacts, ...]:
        """The series that satisfy every series condition of the route together."""
        tests = self.series_tests
        return tuple(s for s in facts.series if all(t(facts, s) for t in tests))


def _best_series(tests: tuple[Predicate, ...], facts: Facts) -> int:
    """The most series conditions, in order, that any one series satisfies."""
    best = 0
    for s in facts.series:
        k = 0
        for test in tests:
            if not test(facts, s):
                break
            k += 1
        else:
            return k
        if k > best:  # noqa: PLR1730 - cheaper than max() in the hot loop
            best = k
    return best


def compile_route(spec: RouteSpec, index: int, vendor_kinds: Mapping[str, str]) -> CompiledRoute:
    """One route: split into study and series conditions, and compiled."""
    study = [n for n in spec.when.items if not uses(n, Source.SERIES)]
    series = [n for n in spec.when.items if uses(n, Source.SERIES)]
    dropped = [n for n in spec.when.items if _only_order(n) and leaves(n)]
    return CompiledRoute(
        spec=spec,
        index=index,
        study=_conjuncts(study),
        series=_conjuncts(series),
        images_study=_conjuncts(n for n in study if n not in dropped),
        images_series=_conjuncts(n for n in series if n not in dropped),
        kinds=frozenset(vendor_kinds.get(v, v) for v in spec.send),
        skipped_for_images=tuple(
            dict.fromkeys(leaf.field.name for n in dropped for leaf in leaves(n))
        ),
        selector_tests=tuple(compile_condition(n) for n in spec.series.conditions.items),
        expect_tests=tuple(
            (name, tuple(compile_condition(n) for n in conditions.items))
            for name, conditions in (spec.expect.series if spec.expect else ())
        ),
    )


@dataclass(frozen=True, eq=False)
class RuleSet:
    """Compiled routes in configuration order, with what evaluating them needs.

    Immutable: a reload builds a new one and swaps the reference.
    """

    routes: tuple[CompiledRoute, ...]
    timezone: tzinfo
    vendor_kinds: Mapping[str, str]
    tag_kinds: Mapping[str, Kind]
    products: Mapping[str, ProductTerms] = field(default_factory=dict)
    """Each vendor product's mode, contracts and regulatory data (``routing.contracts``)."""
    result_keys: frozenset[str] = frozenset()
    """The ``result.*.finding.*`` fields the routes read (cascades: routing on earlier
    results); empty when no route does, so a result need not route its study again."""

    def kind_of(self, vendor: str) -> str:
        """The product kind of a vendor (its own name when none is configured)."""
        return self.vendor_kinds.get(vendor, vendor)


def compile_routes(
    specs: Iterable[RouteSpec],
    *,
    timezone: str | tzinfo = "UTC",
    vendor_kinds: Mapping[str, str | None] | None = None,
    products: Mapping[str, ProductTerms] | None = None,
) -> RuleSet:
    """Compile routes once. ``vendor_kinds`` maps each known vendor to its product kind,
    ``products`` each vendor to its contracts and regulatory data.

    When ``vendor_kinds`` is given, a route sending to a vendor not in it is an
    error; a vendor without a kind is its own kind.
    """
    specs = list(specs)
    kinds = {v: (k or v) for v, k in (vendor_kinds or {}).items()}
    problems: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            problems.append(f"route '{spec.name}' is defined twice")
        seen.add(spec.name)
        unknown = [v for v in spec.send if vendor_kinds is not None and v not in kinds]
        if unknown:
            problems.append(
                f"route '{spec.name}' sends to unknown vendor(s) {', '.join(unknown)}; "
                f"known: {', '.join(kinds) or '(none)'}"
            )
    if isinstance(timezone, str):
        try:
            zone: tzinfo = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            problems.append(
                f"unknown timezone '{timezone}'; valid: an IANA name like Asia/Shanghai"
            )
            raise RoutingError("; ".join(problems)) from exc
    else:
        zone = timezone
    if problems:
        raise RoutingError("; ".join(problems))
    routes = tuple(compile_route(spec, i, kinds) for i, spec in enumerate(specs))
    result_keys = frozenset(
        leaf.field.key
        for route in routes
        for leaf in leaves(route.spec.when)
        if leaf.field.source is Source.RESULT
    )
    if vendor_kinds is not None:
        named = {*kinds, *seen}
        for route in routes:
            for key in sorted(route.results):
                if result_name(key) not in named:
                    problems.append(
                        f"route '{route.name}' reads the result of '{result_name(key)}', which is"
                        f" neither a vendor nor a route; valid: {', '.join(sorted(named))}"
                    )
    if problems:
        raise RoutingError("; ".join(problems))
    tag_kinds = {
        leaf.field.key: leaf.field.kind
        for route in routes
        for part in (route.spec.when, route.spec.series.conditions)
        for leaf in leaves(part)
        if leaf.field.source is Source.TAG
    }
    return RuleSet(routes, zone, kinds, tag_kinds, dict(products or {}), result_keys)
