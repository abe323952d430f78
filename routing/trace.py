"""Why a route does not match: its first failing condition, with wanted and actual values.

The slow path of routing, used for explanations and for the reason of an
unrouted study; it walks the parsed conditions and reuses the compiled leaf
predicates, so it agrees with the fast path by construction. Conditions are
visited in the order routes are evaluated: study-level conditions first, then
the series conditions (reported for the series that came closest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from routing.compile import CompiledRoute, Conjunct, compile_leaf
from routing.facts import Facts, SeriesFacts, Values
from routing.fields import FieldSpec, Kind
from routing.schema import All, AnyOf, Condition, Leaf, Not, Op

_MAX_SHOWN = 6


@dataclass(frozen=True, slots=True)
class Failure:
    """A condition that does not hold: ``modality: wanted CT, got MR``."""

    condition: str
    wanted: str
    got: str

    def __str__(self) -> str:
        return f"{self.condition}: wanted {self.wanted}, got {self.got}"


def show_value(spec: FieldSpec, value: object) -> str:
    """One value as a person reads it (whole numbers of count fields without ``.0``)."""
    if isinstance(value, float) and spec.integer and value.is_integer():
        return str(int(value))
    return str(value)


def show_values(spec: FieldSpec, values: Sequence[object]) -> str:
    """Candidate values, de-duplicated; ``nothing`` when there are none."""
    shown = list(dict.fromkeys(show_value(spec, v) for v in values))
    if not shown:
        return "nothing"
    sep = "\\" if spec.kind is Kind.TEXT_LIST else ", "
    more = " …" if len(shown) > _MAX_SHOWN else ""
    return sep.join(shown[:_MAX_SHOWN]) + more


def _values(leaf: Leaf, facts: Facts, series: SeriesFacts | None) -> Values:
    if leaf.field.series:
        return series.raw[leaf.field.key] if series is not None else ()
    return facts.raw[leaf.field.key]


def describe(node: Condition) -> tuple[str, str]:
    """(condition, wanted) of a node, for messages."""
    if isinstance(node, Leaf):
        return node.label, node.shown
    if isinstance(node, Not):
        condition, wanted = describe(node.inner)
        return condition, f"not {wanted}"
    parts = [describe(item) for item in node.items]
    joined = [f"{c} {w}" for c, w in parts]
    if isinstance(node, AnyOf):
        return "any", " or ".join(joined)
    return "all", " and ".join(joined)


def trace(node: Condition, facts: Facts, series: SeriesFacts | None) -> Failure | None:
    """None when ``node`` holds, else why it does not."""
    if isinstance(node, Leaf):
        if compile_leaf(node)(facts, series):
            return None
        values = _values(node, facts, series)
        return Failure(node.label, node.shown, show_values(node.field, values))
    if isinstance(node, Not):
        if trace(node.inner, facts, series) is not None:
            return None
        condition, wanted = describe(node)
        if isinstance(node.inner, Leaf):
            got = show_values(node.inner.field, _values(node.inner, facts, series))
        else:
            got = "it holds"
        return Failure(condition, wanted, got)
    if isinstance(node, All):
        for item in node.items:
            failure = trace(item, facts, series)
            if failure is not None:
                return failure
        return None
    failures = []
    for item in node.items:
        failure = trace(item, facts, series)
        if failure is None:
            return None
        failures.append(failure)
    condition, wanted = describe(node)
    return Failure(condition, wanted, "; ".join(f"{f.condition}: {f.got}" for f in failures))


def _series_name(series: SeriesFacts) -> str:
    s = series.series
    return f"series {s.series_number}" if s.series_number is not None else s.series_uid


def _series_failure(
    node: Condition, facts: Facts, failing: list[tuple[SeriesFacts, Failure]]
) -> Failure:
    """One failure for a series condition no series satisfied, from the closest series."""
    count = len(failing)
    if isinstance(node, Leaf):
        values = [v for s, _ in failing for v in _values(node, facts, s)]
        if node.op in (Op.LT, Op.LTE, Op.GT, Op.GTE) and values:
            low = node.op in (Op.LT, Op.LTE)
            best = min(values) if low else max(values)
            if node.field.name == "series.slice_thickness":
                note = " (thinnest series)" if low else " (thickest series)"
            else:
                note = f" ({'lowest' if low else 'highest'} of {count} series)" * (count > 1)
            return Failure(node.label, node.shown, show_value(node.field, best) + note)
        note = f" ({count} series)" if count > 1 else ""
        return Failure(node.label, node.shown, show_values(node.field, values) + note)
    series, failure = failing[0]
    return Failure(failure.condition, failure.wanted, f"{failure.got} ({_series_name(series)})")


def first_failure(
    route: CompiledRoute, facts: Facts, *, images_only: bool = False
) -> Failure | None:
    """The first condition of ``route`` that fails for ``facts``, or None if it matches."""
    study: Sequence[Conjunct] = route.images_study if images_only else route.study
    for conjunct in study:
        failure = trace(conjunct.node, facts, None)
        if failure is not None:
            return failure
    series: Sequence[Conjunct] = route.images_series if images_only else route.series
    if not series:
        return None
    if not facts.series:
        return Failure("series", "at least one series", "a study without series")
    results: list[tuple[int, SeriesFacts, Failure]] = []
    for s in facts.series:
        for k, conjunct in enumerate(series):
            failure = trace(conjunct.node, facts, s)
            if failure is not None:
                results.append((k, s, failure))
                break
        else:
            return None
    furthest = max(k for k, _, _ in results)
    failing = [(s, f) for k, s, f in results if k == furthest]
    return _series_failure(series[furthest].node, facts, failing)
