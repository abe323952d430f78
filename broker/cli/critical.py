"""``radbridge critical``: critical-result cases: list (open ones by default), show one with
its ledger, acknowledge one by a named person (audited as ``critical.ack``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
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
from broker.model.critical import AckVia, CaseState, CriticalCase
from broker.model.errors import RadbridgeError
from broker.store.audit import cli_actor
from broker.store.critical import CriticalStore

app = typer.Typer(
    help="Critical-result cases: urgent findings a named person must acknowledge.",
    no_args_is_help=True,
)


def _store(config: Any) -> CriticalStore:
    engine = store_engine(config)
    return CriticalStore(engine)


def case_json(case: CriticalCase, now: datetime) -> dict[str, Any]:
    data: dict[str, Any] = plain(asdict(case))
    data["overdue"] = case.overdue(now)
    data["summary"] = case.summary
    return data


@app.command("list")
def list_cases(
    *,
    config: ConfigOption = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Acknowledged ones too (default: open ones).")
    ] = False,
    overdue: Annotated[bool, typer.Option("--overdue", help="Only open past deadline.")] = False,
    study: Annotated[str | None, typer.Option("--study", help="Only this study.")] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 200,
) -> None:
    """Critical-result cases, newest first: what, when, by when, who acknowledged."""
    now = datetime.now(UTC)
    found = _store(config).list(
        state=None if show_all else CaseState.OPEN,
        overdue_at=now if overdue else None,
        study_uid=study,
        limit=limit,
    )
    if as_json:
        print(json.dumps([case_json(c, now) for c in found], indent=2))
        return
    local = cli_locale(config)
    _ = local.gettext
    table = Table(
        _("id"),
        _("state"),
        _("finding"),
        _("accession"),
        _("route"),
        _("opened"),
        _("deadline"),
        _("acknowledged"),
    )
    for c in found:
        state = _("overdue") if c.overdue(now) else _(c.state.value)
        acked = ""
        if c.acknowledged_at is not None:
            acked = f"{c.acknowledged_by} {local.time(c.acknowledged_at)}"
        table.add_row(
            str(c.id),
            f"[red]{state}[/red]" if c.overdue(now) else state,
            c.summary,
            c.accession_number or "",
            c.route or "",
            local.time(c.opened_at),
            local.time(c.deadline_at),
            acked,
        )
    out.print(table)


@app.command("show")
def show_case(
    case_id: Annotated[int, typer.Argument(help="Case id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One case and its ledger: who was notified, when, on which channel; who acknowledged."""
    store = _store(config)
    try:
        case = store.get(case_id)
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    steps = store.steps(case_id)
    now = datetime.now(UTC)
    if as_json:
        data = case_json(case, now)
        data["steps"] = [plain(asdict(s)) for s in steps]
        print(json.dumps(data, indent=2))
        return
    local = cli_locale(config)
    state = "overdue" if case.overdue(now) else case.state.value
    out.print(f"[bold]Critical case[/bold] {case.id}: {state}, {case.summary}", highlight=False)
    for s in steps:
        who = " ".join(x for x in (s.contact, s.channel, s.address) if x)
        out.print(f"  {local.time(s.at)}  {s.kind.value:12} {who}", highlight=False, markup=False)


@app.command("ack")
def acknowledge(
    case_id: Annotated[int, typer.Argument(help="Case id.")],
    by: Annotated[str, typer.Option("--by", help="The person who acknowledges (name, role).")],
    note: Annotated[str | None, typer.Option("--note", help="What was done.")] = None,
    config: ConfigOption = None,
) -> None:
    """Acknowledge an open case for the person named (audited as critical.ack)."""
    if not by.strip():
        err.print("--by is empty; valid: the name of the person who acknowledges", highlight=False)
        raise typer.Exit(2)
    try:
        case = _store(config).acknowledge(
            case_id, by=by, via=AckVia.CLI, actor=cli_actor(), note=note
        )
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    out.print(f"critical case {case.id} acknowledged by {case.acknowledged_by}", highlight=False)
