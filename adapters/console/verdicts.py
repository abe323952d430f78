"""Verdicts on AI findings from the console: a reader's (or operator's) buttons on the study
page, and the one-click signed links a notification carries (``/console/v/TOKEN``).

A link's page shows the finding and one button: opening a link never records anything by
itself, because mail and chat programs open links to preview them. The signature is the
authority, so no login is needed; who clicked is the signed-in user if there is one, else
``link`` with the client's address. Every verdict is audited (``finding.verdict``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from adapters.api.auth import site_scoped
from adapters.console.auth import COOKIE, Reader, State, peer_of, safe_next
from adapters.console.views import render, translator
from broker.model.errors import NotFoundError
from broker.model.signed_links import LinkPurpose
from broker.model.verdicts import (
    Verdict,
    VerdictError,
    VerdictLink,
    VerdictSource,
    read_verdict_link,
)
from broker.store.verdicts import VerdictStore

router = APIRouter()

Next = Annotated[str, Form(alias="next", max_length=2000)]
Text = Annotated[str, Form(max_length=2000)]


def _problem(request: Request, message: str, status: int, back: str | None = None) -> Response:
    _ = translator(request)
    context = {"title": _("Verdict not recorded"), "message": message}
    if back is not None:
        context["back"] = back
    return render(request, "error.html", context, status=status)


@router.post("/results/{result_id}/findings/{n}/verdict", name="finding_verdict")
@site_scoped
def give_verdict(
    request: Request,
    result_id: int,
    n: int,
    console: State,
    who: Reader,
    *,
    verdict: Annotated[Verdict, Form()],
    corrected_value: Annotated[str, Form(max_length=500)] = "",
    comment: Text = "",
    next_page: Next = "",
) -> Response:
    """Record the signed-in reader's verdict on finding ``n`` of the result."""
    back = safe_next(request, next_page)
    try:
        if not console.sees_study(who.sites, console.results.get(result_id).study_uid):
            raise NotFoundError(f"no result with id {result_id}")
        VerdictStore(console.engine).record(
            result_id,
            n,
            verdict,
            actor=who.actor,
            source=VerdictSource.CONSOLE,
            corrected_value=corrected_value.strip() or None,
            comment=comment.strip() or None,
            peer=peer_of(request),
        )
    except (NotFoundError, VerdictError) as exc:
        return _problem(request, str(exc), 404, back)
    return RedirectResponse(f"{back}#finding-{result_id}-{n}", status_code=303)


def _link(request: Request, console: State, token: str) -> VerdictLink | Response:
    secret = console.settings.link_secret(LinkPurpose.VERDICT)
    if secret is None:
        message = "verdict links are off here (no http.link_secret)"
        return _problem(request, message, 404)
    try:
        return read_verdict_link(secret, token)
    except (VerdictError, ValueError) as exc:
        message = str(exc) if isinstance(exc, VerdictError) else "this verdict link is not valid"
        return _problem(request, message, 404)


@router.get("/v/{token}", name="verdict_link")
def verdict_link(request: Request, token: str, console: State) -> Response:
    """The finding a link is about, and one button that records its verdict."""
    link = _link(request, console, token)
    if isinstance(link, Response):
        return link
    try:
        result = console.results.get(link.result_id)
    except NotFoundError as exc:
        return _problem(request, str(exc), 404)
    findings = result.findings.findings if result.findings else ()
    if link.finding_index >= len(findings):
        return _problem(request, f"result {result.id} has no such finding", 404)
    return render(
        request,
        "verdict_link.html",
        {
            "token": token,
            "link": link,
            "result": result,
            "finding": findings[link.finding_index],
            "algorithm": result.findings.algorithm if result.findings else None,
        },
    )


@router.post("/v/{token}", name="verdict_link_confirm")
def confirm_verdict_link(
    request: Request, token: str, console: State, comment: Text = ""
) -> Response:
    """Record the verdict the link carries (its signature is the authority)."""
    link = _link(request, console, token)
    if isinstance(link, Response):
        return link
    session = console.sessions.get(request.cookies.get(COOKIE, ""))
    actor = session.actor if session is not None else f"link:{token.rsplit('.', 1)[-1][:8]}"
    try:
        VerdictStore(console.engine).record(
            link.result_id,
            link.finding_index,
            link.verdict,
            actor=actor,
            source=VerdictSource.LINK,
            comment=comment.strip() or None,
            peer=peer_of(request),
        )
    except (NotFoundError, VerdictError) as exc:
        return _problem(request, str(exc), 404)
    _ = translator(request)
    return render(
        request,
        "verdict_link.html",
        {"token": token, "link": link, "recorded": True, "result": None, "finding": None},
    )
