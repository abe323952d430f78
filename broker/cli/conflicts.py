"""``radbridge conflicts``: identity conflicts (data that named another patient): list, show,
resolve with a note (audited)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli.common import (
    ConfigOption,
    JsonOption,
    cli_locale,
    err,
    out,
    plain,
    store_engine,
)
from broker.model.domain import Patient
from broker.model.errors import RadbridgeError
from broker.model.identity import ConflictKind, ConflictState, IdentityConflict
from broker.store.audit import cli_actor
from broker.store.conflicts import ConflictStore

app = typer.Typer(
    help="Identity conflicts: orders, studies and results that named another patient.",
    no_args_is_help=True,
)


def _store(config: Any) -> ConflictStore:
    engine = store_engine(config)
    return ConflictStore(engine)


def conflict_json(c: IdentityConflict) -> dict[str, Any]:
    """A conflict for ``--json`` output (the report's fields beside the rest)."""
    data: dict[str, Any] = plain(asdict(c))
    data.update(data.pop("report"))
    return data


def _patient(p: Patient) -> str:
    if not p.patient_id:
        return "-"
    return f"{p.patient_id}^{p.issuer}" if p.issuer else p.patient_id


@app.command("list")
def list_conflicts(
    *,
    config: ConfigOption = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Resolved ones too (default: open ones).")
    ] = False,
    kind: Annotated[
        str | None,
        typer.Option("--kind", help=f"Only this kind: {', '.join(ConflictKind)}."),
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only this study.")] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 200,
) -> None:
    """Identity conflicts, newest first: what was refused or flagged, and why."""
    try:
        wanted = ConflictKind(kind) if kind else None
    except ValueError as exc:
        err.print(f"no conflict kind {kind!r}; valid: {', '.join(ConflictKind)}", highlight=False)
        raise typer.Exit(2) from exc
    found = _store(config).list(
        state=None if show_all else ConflictState.OPEN, kind=wanted, study_uid=study, limit=limit
    )
    if as_json:
        print(json.dumps([conflict_json(c) for c in found], indent=2))
        return
    local = cli_locale(config)
    _ = local.gettext
    table = Table(
        _("id"),
        _("kind"),
        _("action"),
        _("state"),
        _("subject"),
        _("held"),
        _("claimed"),
        _("times"),
        _("last"),
    )
    for c in found:
        r = c.report
        table.add_row(
            str(c.id),
            r.kind.value,
            r.action.value,
            c.state.value,
            r.subject,
            _patient(r.held),
            _patient(r.claimed),
            str(c.count),
            local.time(c.last_at),
        )
    out.print(table)


@app.command("show")
def show_conflict(
    conflict_id: Annotated[int, typer.Argument(help="Conflict id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One conflict: what conflicted, the patient held and the one named, where it came from."""
    try:
        c = _store(config).get(conflict_id)
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps(conflict_json(c), indent=2))
        return
    r = c.report
    local = cli_locale(config)
    rows = [
        ("kind", f"{r.kind.value} ({r.action.value}, {r.reason.value})"),
        ("state", c.state.value),
        ("subject", r.subject),
        ("study", r.study_uid or "-"),
        ("order", str(r.order_id) if r.order_id is not None else "-"),
        ("patient held", _patient(r.held)),
        ("patient named", _patient(r.claimed)),
        ("what", r.detail),
        ("from", f"{c.source} {c.sender} ({c.peer or '-'})"),
        ("message", str(c.message_id) if c.message_id is not None else "-"),
        ("times", f"{c.count} ({local.time(c.first_at)} – {local.time(c.last_at)})"),
    ]
    if c.resolved_at is not None:
        rows.append(("resolved", f"{local.time(c.resolved_at)} by {c.resolved_by}: {c.resolution}"))
    out.print(f"[bold]Identity conflict[/bold] {c.id}", highlight=False)
    for key, value in rows:
        out.print(f"  {key:15} {value}", highlight=False, markup=False)


@app.command("resolve")
def resolve_conflict(
    conflict_id: Annotated[int, typer.Argument(help="Conflict id.")],
    note: Annotated[
        str, typer.Option("--note", help="What was done about it (kept, and audited).")
    ],
    config: ConfigOption = None,
) -> None:
    """Mark an open conflict resolved (audited as conflict.resolve). It moves no data: the HIS
    corrects a patient with an ADT merge or update, a sender resends corrected data."""
    if not note.strip():
        err.print("--note is empty; valid: what was done about the conflict", highlight=False)
        raise typer.Exit(2)
    try:
        c = _store(config).resolve(conflict_id, actor=cli_actor(), note=note.strip())
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    out.print(f"conflict {c.id} is {c.state.value}", highlight=False)
