"""Critical-result cases: the list (open ones first, red past their deadline), one case with
its ledger, and the acknowledgement by a named person, from the console (readers and above)
or from the signed link of a notification (no login: the link is the permission, for its
own case only; opening it only shows the case, the form's POST acknowledges).

Each acknowledgement is audited (``critical.ack``; actor ``console:NAME``, or
``link:CONTACT`` for a link).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from adapters.api.auth import site_scoped
from adapters.console.auth import State, acting, peer_of, reading
from adapters.console.views import render, translator
from broker.model.critical import ACK_ROLE, AckVia, CaseState, CaseStateError, CriticalCase
from broker.model.critical_link import AckClaim, AckLinkError, verify
from broker.model.domain import Role
from broker.model.errors import NotFoundError
from broker.model.signed_links import LinkPurpose
from broker.store.critical import CriticalStore
from broker.store.users import Session

router = APIRouter()
Viewer = Annotated[Session, Depends(reading(Role.VIEWER))]
Acknowledger = Annotated[Session, Depends(acting(ACK_ROLE))]
PAGE = 100
By = Annotated[str, Form(min_length=1, max_length=160)]
Note = Annotated[str, Form(max_length=1000)]


def _store(console: State) -> CriticalStore:
    return CriticalStore(console.engine)


@router.get("/critical", name="critical")
@site_scoped
def cases(
    *,
    request: Request,
    console: State,
    who: Viewer,
    state: Annotated[str | None, Query(max_length=16)] = None,
    before: int | None = None,
) -> Response:
    """Cases newest first; ``state=open`` (the default), ``acknowledged`` or ``all``."""
    chosen = state or CaseState.OPEN.value
    wanted = None if chosen == "all" else CaseState(chosen) if chosen in set(CaseState) else None
    found = _store(console).list(state=wanted, before_id=before, limit=PAGE + 1, sites=who.sites)
    page = found[:PAGE]
    return render(
        request,
        "critical.html",
        {
            "cases": page,
            "state": chosen,
            "states": [*CaseState, "all"],
            "now": datetime.now(UTC),
            "following": page[-1].id if len(found) > PAGE else None,
        },
    )


def _not_found(request: Request, message: str) -> Response:
    title = translator(request)("No such critical case")
    return render(request, "error.html", {"title": title, "message": message}, status=404)


def _case(console: State, who: Session, case_id: int) -> CriticalCase:
    """The case, when the user may see its study's site; else as if there were none."""
    found = _store(console).get(case_id)
    if not console.sees_study(who.sites, found.study_uid):
        raise NotFoundError(f"no critical case with id {case_id}")
    return found


@router.get("/critical/{case_id}", name="critical_case")
@site_scoped
def case(request: Request, case_id: int, console: State, who: Viewer) -> Response:
    """One case: what, when, its deadline, its ledger, and the acknowledgement form."""
    store = _store(console)
    try:
        found = _case(console, who, case_id)
    except NotFoundError as exc:
        return _not_found(request, str(exc))
    return render(
        request,
        "critical_case.html",
        {
            "case": found,
            "steps": store.steps(case_id),
            "now": datetime.now(UTC),
            "by": who.subject,
            "can_ack": who.role.allows(ACK_ROLE),
            "action": f"{request.scope.get('root_path', '')}/critical/{case_id}/ack",
        },
    )


@router.post("/critical/{case_id}/ack", name="critical_ack")
@site_scoped
def acknowledge(
    request: Request,
    case_id: int,
    *,
    console: State,
    who: Acknowledger,
    by: By,
    note: Note = "",
) -> Response:
    """Acknowledge in the console: the person named (the signed-in user by default)."""
    try:
        _case(console, who, case_id)
        _store(console).acknowledge(
            case_id,
            by=by,
            via=AckVia.CONSOLE,
            actor=who.actor,
            peer=peer_of(request),
            note=note or None,
        )
    except NotFoundError as exc:
        return _not_found(request, str(exc))
    except (CaseStateError, ValueError) as exc:
        _ = translator(request)
        title = _("Critical case {id}").format(id=case_id)
        return render(request, "error.html", {"title": title, "message": str(exc)}, status=409)
    root = str(request.scope.get("root_path", ""))
    return RedirectResponse(f"{root}/critical/{case_id}", status_code=303)


# ---------------------------------------------------------------- the signed link


def _claim(request: Request, console: State, token: str) -> AckClaim | Response:
    _ = translator(request)
    secret = console.settings.link_secret(LinkPurpose.CRITICAL_ACK)
    if secret is None:
        message = _("acknowledgement links are not enabled here")
        return render(request, "error.html", {"title": _("Link"), "message": message}, status=404)
    try:
        return verify(token, secret, console.settings.critical.link_valid_for)
    except AckLinkError as exc:
        return render(request, "error.html", {"title": _("Link"), "message": str(exc)}, status=403)


def _link_page(
    request: Request, found: CriticalCase, claim: AckClaim, token: str, *, status: int = 200
) -> Response:
    root = str(request.scope.get("root_path", ""))
    return render(
        request,
        "critical_link.html",
        {
            "case": found,
            "claim": claim,
            "now": datetime.now(UTC),
            "action": f"{root}/critical/ack/{token}",
        },
        status=status,
    )


@router.get("/critical/ack/{token}", name="critical_link")
def link_page(request: Request, token: str, console: State) -> Response:
    """The page a notification's link opens: the case and a form to acknowledge it."""
    claim = _claim(request, console, token)
    if isinstance(claim, Response):
        return claim
    try:
        found = _store(console).get(claim.case_id)
    except NotFoundError as exc:
        return _not_found(request, str(exc))
    return _link_page(request, found, claim, token)


@router.post("/critical/ack/{token}", name="critical_link_ack")
def link_ack(request: Request, token: str, console: State, by: By, note: Note = "") -> Response:
    """Acknowledge through the signed link: the case it names, by the person named."""
    claim = _claim(request, console, token)
    if isinstance(claim, Response):
        return claim
    store = _store(console)
    try:
        store.acknowledge(
            claim.case_id,
            by=by,
            via=AckVia.LINK,
            actor=f"link:{claim.contact}",
            peer=peer_of(request),
            note=note or None,
        )
    except NotFoundError as exc:
        return _not_found(request, str(exc))
    except (CaseStateError, ValueError):
        return _link_page(request, store.get(claim.case_id), claim, token, status=409)
    return _link_page(request, store.get(claim.case_id), claim, token)
