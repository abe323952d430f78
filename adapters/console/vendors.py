"""Operators pause a vendor for maintenance (its jobs wait) and resume it, from the jobs page
of that vendor; the dashboard shows the pause, why and until when. Both actions are audited
(``vendor.pause``, ``vendor.resume``, actor ``console:NAME``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from adapters.console.auth import Operator, State, peer_of, safe_next
from adapters.console.views import render, translator
from broker.model.work import LaneNotPausedError
from broker.store.jobs import JOBS
from broker.store.pauses import LanePauses
from config.base import parse_end

router = APIRouter()

Next = Annotated[str, Form(alias="next", max_length=2000)]


def _problem(request: Request, name: str, message: str, status: int) -> Response:
    _ = translator(request)
    return render(
        request,
        "error.html",
        {
            "title": _("Vendor {name}").format(name=name),
            "message": message,
            "back": safe_next(request, f"/jobs?vendor={name}"),
        },
        status=status,
    )


def _unknown(request: Request, console: State, name: str) -> Response | None:
    vendors = console.settings.vendors
    if name in vendors:
        return None
    valid = ", ".join(sorted(vendors)) or "none configured"
    return _problem(request, name, f"no vendor '{name}' is configured; valid: {valid}", 404)


@router.post("/vendors/{name}/pause", name="vendor_pause")
def pause_vendor(
    request: Request,
    name: str,
    console: State,
    who: Operator,
    *,
    until: Annotated[str, Form(max_length=64)] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
    next_page: Next = "",
) -> Response:
    """Pause the vendor until ``until`` (a time or a duration; empty: until resumed)."""
    unknown = _unknown(request, console, name)
    if unknown is not None:
        return unknown
    now = datetime.now(UTC)
    end = None
    if until.strip():
        try:
            end = parse_end(until, console.settings.site.timezone, now)
        except ValueError as exc:
            return _problem(request, name, str(exc), 422)
    LanePauses(console.engine, JOBS).pause(
        name,
        actor=who.actor,
        until=end,
        reason=reason.strip() or None,
        peer=peer_of(request),
        now=now,
    )
    return RedirectResponse(safe_next(request, next_page), status_code=303)


@router.post("/vendors/{name}/resume", name="vendor_resume")
def resume_vendor(
    request: Request, name: str, console: State, who: Operator, next_page: Next = ""
) -> Response:
    """End the vendor's pause: its waiting jobs go out within a second."""
    unknown = _unknown(request, console, name)
    if unknown is not None:
        return unknown
    try:
        LanePauses(console.engine, JOBS).resume(name, actor=who.actor, peer=peer_of(request))
    except LaneNotPausedError as exc:
        return _problem(request, name, str(exc), 409)
    return RedirectResponse(safe_next(request, next_page), status_code=303)
