"""The routes in force, and "explain this study": what they do with a stored study, and why.

The explanation is the one ``radbridge routes explain STUDY_UID`` prints, from
the same routing input the service decides on
(:func:`broker.runtime.routing_input.stored_input`): the study's order and the
jobs it already has, each said to be delivered to its vendor or not yet.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapters.api.auth import site_scoped
from adapters.console.auth import State, reading
from adapters.console.views import render, scrub, translator
from broker.model.domain import Role
from broker.model.errors import NotFoundError
from broker.model.phi import phi_values
from broker.runtime.contracts import contract_use
from broker.runtime.routing_input import stored_input
from broker.store.contracts import ContractStore
from broker.store.users import Session
from config.vendors import Route
from routing.schema import show_duration
from routing.trace import describe

router = APIRouter()
Viewer = Annotated[Session, Depends(reading(Role.VIEWER))]
UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _route(route: Route) -> dict[str, Any]:
    when = []
    for item in route.when.items:
        condition, wanted = describe(item)
        when.append(f"{condition}: {wanted}")
    flags = [
        name
        for name, on in (
            ("exclusive", route.exclusive),
            ("fallback", route.fallback),
            ("resend updates", route.resend_updates),
        )
        if on
    ]
    if route.require_order is not None:
        flags.append(
            f"needs its order (waits {show_duration(route.require_order.wait)}, "
            f"then {route.require_order.then.value})"
        )
    return {
        "name": route.name,
        "when": when,
        "send": list(route.send),
        "series": route.series.name.value,
        "priority": route.priority.value,
        "deadline": show_duration(route.deadline) if route.deadline else "",
        "write_back": list(route.write_back),
        "flags": flags,
    }


def _explain(console: State, who: Session, study_uid: str) -> dict[str, Any]:
    rules, now = console.rule_set(), datetime.now(UTC)
    used = contract_use(ContractStore(console.studies.engine), rules, now)
    routing = stored_input(
        console.studies, console.orders, console.jobs, study_uid, used=used, results=console.results
    )
    explained = routing.explain(rules, now)
    order = routing.order
    patients = [routing.study.patient] + ([order.patient] if order is not None else [])
    accessions = [routing.study.accession_number, order.accession_number if order else None]
    values = phi_values(patients, accessions)
    rows = explained.rows()
    for row in rows:
        row["reason"] = scrub(row["reason"], who, values)
        row["notes"] = [scrub(n, who, values) for n in row["notes"]]
        row["study_notes"] = [scrub(n, who, values) for n in row["study_notes"]]
        if row["order"] is not None:
            row["order"]["accession_number"] = scrub(row["order"]["accession_number"], who, values)
    return {
        "outcome": explained.outcome,
        "text": scrub(explained.text(), who, values),
        "rows": rows,
    }


@router.get("/routes", name="routes")
@site_scoped
def routes(
    request: Request,
    console: State,
    who: Viewer,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The routes and vendors in force; with ``study_uid``, what the routes do with that study
    (a user limited to sites: the routes of their sites, and their sites' studies only)."""
    _ = translator(request)
    settings = console.settings
    explained = None
    problem = None
    uid = (study_uid or "").strip()
    if uid:
        if not UID.fullmatch(uid):
            problem = _("{uid} is not a Study Instance UID; valid: digits and dots").format(
                uid=repr(uid)
            )
        else:
            try:
                if not console.sees_study(who.sites, uid):
                    raise NotFoundError(f"no study with Study Instance UID {uid}")
                explained = _explain(console, who, uid)
            except NotFoundError as exc:
                problem = str(exc)
    return render(
        request,
        "routes.html",
        {
            "routes": [
                _route(r)
                for r in settings.routes
                if who.sites is None or not r.sites or set(r.sites) & who.sites
            ],
            "vendors": sorted(settings.vendors.items()),
            "config_path": str(console.config_path or ""),
            "study_uid": uid,
            "explained": explained,
            "problem": problem,
        },
        status=404 if problem and UID.fullmatch(uid) else 200,
    )
