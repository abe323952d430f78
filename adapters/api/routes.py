"""``/api/v1/routes``: the routing configuration in force, and what it does with a stored
study (the snapshot in force and its reload: :mod:`adapters.api.configuration`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel

from adapters.api.deps import State, Viewer, parse_time
from adapters.api.responses import NOT_FOUND
from broker.model.errors import NotFoundError
from broker.runtime.contracts import contract_use
from broker.runtime.routing_input import stored_input
from broker.store.contracts import ContractStore
from config.vendors import Route
from routing import RuleSet
from routing.schema import show_duration
from routing.trace import describe

router = APIRouter(tags=["routes"])


class RouteOut(BaseModel):
    name: str
    when: list[str]
    """Every condition as ``field: wanted`` (all must hold)."""
    send: list[str]
    series: str
    priority: str
    stable_seconds: float | None
    deadline: str | None
    write_back: list[str]
    exclusive: bool
    fallback: bool
    resend_updates: bool
    require_order: dict[str, Any] | None


class RoutesOut(BaseModel):
    site: str
    timezone: str
    config_path: str | None
    vendors: list[str]
    routes: list[RouteOut]


class Explanation(BaseModel):
    study_uid: str
    outcome: str
    text: str
    routes: list[dict[str, Any]]


def _route_out(route: Route) -> RouteOut:
    when = []
    for item in route.when.items:
        condition, wanted = describe(item)
        when.append(f"{condition}: {wanted}")
    require = None
    if route.require_order is not None:
        require = {
            "wait": show_duration(route.require_order.wait),
            "then": route.require_order.then.value,
        }
    return RouteOut(
        name=route.name,
        when=when,
        send=list(route.send),
        series=route.series.name.value,
        priority=route.priority.value,
        stable_seconds=route.stable_seconds,
        deadline=show_duration(route.deadline) if route.deadline else None,
        write_back=list(route.write_back),
        exclusive=route.exclusive,
        fallback=route.fallback,
        resend_updates=route.resend_updates,
        require_order=require,
    )


@router.get("/routes", response_model=RoutesOut, summary="The routes in force")
def list_routes(api: State, _who: Viewer) -> RoutesOut:
    settings = api.settings
    path = api.config_path
    return RoutesOut(
        site=settings.site.name,
        timezone=settings.site.timezone,
        config_path=str(path) if path else None,
        vendors=sorted(settings.vendors),
        routes=[_route_out(r) for r in settings.routes],
    )


def _rules(api: State) -> RuleSet:
    return api.rule_set()


@router.get(
    "/routes/explain/{study_uid}",
    response_model=Explanation,
    summary="What the routes in force do with a stored study, and why",
    responses=NOT_FOUND,
)
def explain_study(
    study_uid: Annotated[str, Path(max_length=64, pattern=r"^[0-9.]+$")],
    api: State,
    _who: Viewer,
    at: str | None = None,
) -> Explanation:
    """Every route: fired, matched, not matched (the first failing condition, wanted and
    got), waiting for the order; with the study's order and the jobs it already has."""
    now = parse_time(at, api.settings.site.timezone, name="at") or datetime.now(UTC)
    rules = _rules(api)
    used = contract_use(ContractStore(api.studies.engine), rules, now)
    try:
        routing = stored_input(
            api.studies, api.orders, api.jobs, study_uid, used=used, results=api.results
        )
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    explained = routing.explain(rules, now)
    return Explanation(
        study_uid=study_uid,
        outcome=explained.outcome,
        text=explained.text(),
        routes=explained.rows(),
    )
