"""The routes in force, and "explain this study": what they do with a stored study, and why.

The explanation is the one ``radbridge routes explain STUDY_UID`` prints
(:func:`routing.explain`), here with the study's order and the jobs it
already has, so it also says which deliveries were already made.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapters.console.auth import State, reading
from adapters.console.views import phi_values, render, scrub
from broker.model.domain import Role
from broker.model.errors import NotFoundError
from broker.store.users import Session
from config.vendors import Route
from routing import explain, to_json, to_text
from routing.facts import study_tags
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
    study = console.studies.get_study(study_uid)
    stored, _link = console.orders.order_for_study(study)
    delivered = {(j.route, j.vendor) for j in console.jobs.list(study_uid=study_uid)}
    decision, explanations = explain(
        console.rule_set(),
        study,
        stored.order if stored is not None else None,
        datetime.now(UTC),
        tags=study_tags(study),
        delivered=delivered,
    )
    patients = [study.patient] + ([stored.order.patient] if stored is not None else [])
    values = phi_values(patients, [study.accession_number])
    rows = to_json(study_uid, explanations, decision)
    for row in rows:
        row["reason"] = scrub(row["reason"], who, values)
        row["notes"] = [scrub(n, who, values) for n in row["notes"]]
    return {
        "outcome": decision.outcome.value,
        "text": scrub(to_text(study, explanations, decision), who, values),
        "rows": rows,
    }


@router.get("/routes", name="routes")
def routes(
    request: Request,
    console: State,
    who: Viewer,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The routes and vendors in force; with ``study_uid``, what the routes do with that study."""
    settings = console.settings
    explained = None
    problem = None
    uid = (study_uid or "").strip()
    if uid:
        if not UID.fullmatch(uid):
            problem = f"{uid!r} is not a Study Instance UID; valid: digits and dots"
        else:
            try:
                explained = _explain(console, who, uid)
            except NotFoundError as exc:
                problem = str(exc)
    return render(
        request,
        "routes.html",
        {
            "routes": [_route(r) for r in settings.routes],
            "vendors": sorted(settings.vendors.items()),
            "config_path": str(console.config_path or ""),
            "study_uid": uid,
            "explained": explained,
            "problem": problem,
        },
        status=404 if problem and UID.fullmatch(uid) else 200,
    )
