"""``radbridge studies timeline`` and ``radbridge studies turnaround``: the time ledger of
one study, and door-to-result times per route over a period."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from broker.cli.audit import Format, moment
from broker.cli.common import ConfigOption, cli_locale, err, out, settings_or_exit, store_engine
from broker.model.errors import NotFoundError
from broker.model.timeline import (
    INTERVALS,
    STAMP_COLUMNS,
    TURNAROUND_COLUMNS,
    as_csv,
    stamp_json,
    summarize,
    summary_json,
    turnaround_json,
)
from broker.store import make_engine
from broker.store.migrate import migrate
from broker.store.timeline import study_timeline, turnaround


def timeline_command(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv_: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
) -> None:
    """The study's time ledger: first and last instance, complete (and why), routed, sent
    to each vendor, result received, written back to each target, notifications."""
    engine = store_engine(config)
    try:
        stamps = study_timeline(engine, study_uid)
    except NotFoundError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    rows = [stamp_json(s) for s in stamps]
    if as_json:
        typer.echo(json.dumps({"study_uid": study_uid, "stamps": rows}, indent=2))
        return
    if as_csv_:
        typer.echo(as_csv(STAMP_COLUMNS, rows), nl=False)
        return
    local = cli_locale(config)
    start = stamps[0].at if stamps else None
    table = Table("time", "+s", "what", "who", "reason", "detail")
    for s in stamps:
        offset = f"{(s.at - start).total_seconds():.3f}" if start else ""
        table.add_row(
            local.time(s.at), offset, str(s.kind), s.subject or "", s.reason or "", s.detail or ""
        )
    out.print(table)


def turnaround_command(
    since: Annotated[
        str, typer.Option("--from", help="Studies first received from this time or date.")
    ],
    until: Annotated[
        str, typer.Option("--to", help="Until this time (excluded) or date (included).")
    ],
    config: ConfigOption = None,
    fmt: Annotated[
        Format, typer.Option("--format", help="json (summary and rows) or csv (rows).")
    ] = Format.JSON,
) -> None:
    """Door-to-result times: per route, p50/p95 seconds from a study's first instance to
    complete, sent, result and written back; with one row per job (CSV: the rows)."""
    settings = settings_or_exit(config)
    start = moment(since, settings.site.timezone)
    end = moment(until, settings.site.timezone, end=True)
    if end <= start:
        err.print(f"--to {until} is not after --from {since}")
        raise typer.Exit(2)
    engine = make_engine(settings.database_url())
    migrate(engine)
    rows = turnaround(engine, start, end)
    if fmt is Format.CSV:
        typer.echo(as_csv(TURNAROUND_COLUMNS, [turnaround_json(r) for r in rows]), nl=False)
        return
    report = {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "intervals": [f"door_to_{name}" for name in INTERVALS],
        "routes": [summary_json(s) for s in summarize(rows)],
        "jobs": [turnaround_json(r) for r in rows],
    }
    typer.echo(json.dumps(report, indent=2))
