"""``/api/v1/config``: the configuration snapshot in force; ``/api/v1/config/reload`` (admins)
loads the configuration file again, like SIGHUP, optionally draining removed vendors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from adapters.api.deps import Admin, State, Viewer

router = APIRouter(tags=["config"])


class SnapshotOut(BaseModel):
    snapshot: str
    """The id of the snapshot in force (``cfg-…``); jobs' histories name it."""
    loaded_at: datetime
    config_path: str | None
    draining: list[str]
    """Vendors (``NAME``) and targets (``target:NAME``) kept only to finish their work."""
    settings: dict[str, Any]
    """The settings in force; secrets show as ``(secret)``, never their value."""


class Reloaded(BaseModel):
    reloaded: bool
    changed: bool
    """False when the file holds the configuration already in force."""
    snapshot: str
    previous: str
    config_path: str
    routes: int
    vendors: int
    changes: list[str]
    draining: list[str]
    unfinished: dict[str, list[int]]
    """With drain: the jobs (``vendors.NAME``) and write-backs (``targets.NAME``) the
    removed vendors and targets still finish."""


@router.get("/config", response_model=SnapshotOut, summary="The configuration snapshot in force")
def snapshot_in_force(api: State, _who: Viewer) -> SnapshotOut:
    holder = api.snapshots
    if holder is None:
        raise HTTPException(409, "this API runs without a service; no snapshot is in force")
    snapshot = holder.current
    return SnapshotOut(
        snapshot=snapshot.id,
        loaded_at=snapshot.loaded_at,
        config_path=str(snapshot.source) if snapshot.source is not None else None,
        draining=[
            *sorted(snapshot.draining_vendors),
            *(f"target:{t}" for t in sorted(snapshot.draining_targets)),
        ],
        settings=snapshot.view.settings,
    )


@router.post(
    "/config/reload",
    response_model=Reloaded,
    summary="Load the configuration file again (admin)",
    responses={
        409: {
            "description": "Refused: a setting needs a restart, or a removed vendor or target "
            "still has unfinished work (drain=true accepts that), or the service was not "
            "started from a file."
        },
        422: {"description": "The file is invalid; the running configuration stays."},
    },
)
def reload_config(api: State, who: Admin, drain: bool = False) -> Reloaded:
    """Like SIGHUP: a whole new configuration snapshot from the file, checked and swapped in
    one step. An invalid file (422) or a change that needs a restart or would drop
    unfinished jobs (409) changes nothing; the problems come back as ``problems``.
    ``drain=true`` accepts removing a vendor (target) that still has unfinished jobs
    (write-backs): it gets no new study and finishes them, then leaves."""
    reloader = api.context.reloader if api.context is not None else None
    if reloader is None or reloader.path is None:
        raise HTTPException(409, "this radbridge was not started from a configuration file")
    outcome = reloader.reload(drain=drain, trigger="api", actor=who.actor, peer=who.peer)
    if not outcome.reloaded:
        raise HTTPException(422 if outcome.refusal == "invalid" else 409, outcome.as_json())
    settings = api.settings
    return Reloaded(
        reloaded=True,
        changed=outcome.changed,
        snapshot=outcome.snapshot,
        previous=outcome.previous,
        config_path=str(reloader.path),
        routes=len(settings.routes),
        vendors=len(settings.vendors),
        changes=list(outcome.changes),
        draining=list(outcome.draining),
        unfinished=outcome.unfinished,
    )
