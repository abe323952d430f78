"""Routing rules: pure functions from a study (and its order) to a decision.

    rules = compile_routes(specs, timezone="Asia/Shanghai", vendor_kinds={...})
    decision = decide(rules, study, order, now, tags=tags)
    decision, explanations = explain(rules, study, order, now, tags=tags)

Modules: :mod:`~routing.fields` (what a condition can test),
:mod:`~routing.schema` (the route language), :mod:`~routing.parse` (its parser),
:mod:`~routing.compile` (conditions to closures), :mod:`~routing.facts`
(a study's values), :mod:`~routing.selectors` (series selection),
:mod:`~routing.evaluate` (the decision), :mod:`~routing.trace` and
:mod:`~routing.explain` (why). No I/O, no database, no pydicom.
"""

from broker.model.domain import Priority
from routing.compile import CompiledRoute, RuleSet, compile_routes
from routing.evaluate import (
    Decision,
    Dispatch,
    Outcome,
    RouteResult,
    RouteStatus,
    Skip,
    SkipReason,
    Unrouted,
    decide,
)
from routing.explain import RouteExplanation, explain, to_json, to_text
from routing.parse import RuleError, parse_series, parse_when
from routing.schema import (
    Conditions,
    OnNoOrder,
    RequireOrder,
    RouteSpec,
    SeriesSelector,
)
from routing.trace import Failure

__all__ = [
    "CompiledRoute",
    "Conditions",
    "Decision",
    "Dispatch",
    "Failure",
    "OnNoOrder",
    "Outcome",
    "Priority",
    "RequireOrder",
    "RouteExplanation",
    "RouteResult",
    "RouteSpec",
    "RouteStatus",
    "RuleError",
    "RuleSet",
    "SeriesSelector",
    "Skip",
    "SkipReason",
    "Unrouted",
    "compile_routes",
    "decide",
    "explain",
    "parse_series",
    "parse_when",
    "to_json",
    "to_text",
]
