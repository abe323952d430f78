"""``radbridge audit export``: the audit trail of a period, as JSON lines or CSV."""

from __future__ import annotations

import enum
import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from broker.cli.common import ConfigOption, err, settings_or_exit
from broker.store import make_engine
from broker.store.audit import AuditLog, export_csv
from broker.store.migrate import migrate

app = typer.Typer(
    help="The audit trail: operator actions, studies sent out, results written back.",
    no_args_is_help=True,
)


class Format(enum.StrEnum):
    JSON = "json"
    CSV = "csv"


def moment(value: str, tz: str, *, end: bool = False) -> datetime:
    """An ISO 8601 time, or a date (its start; with ``end`` the start of the next day);
    without an offset in the site's timezone."""
    try:
        if len(value) == 10:
            parsed = datetime.combine(date.fromisoformat(value) + timedelta(days=int(end)), time())
        else:
            parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        err.print(f"{value!r} is not a time; valid: ISO 8601, e.g. 2024-05-01 or 2024-05-01T08:00")
        raise typer.Exit(2) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(tz))
    return parsed.astimezone(UTC)


@app.callback()
def audit() -> None:
    """The audit trail: operator actions, studies sent out, results written back."""


@app.command("export")
def export(
    since: Annotated[
        str, typer.Option("--from", help="From this time or date (site timezone), included.")
    ],
    until: Annotated[
        str, typer.Option("--to", help="Until this time (excluded) or date (included).")
    ],
    config: ConfigOption = None,
    fmt: Annotated[Format, typer.Option("--format", help="json (one array) or csv.")] = Format.JSON,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action, e.g. study.sent.")
    ] = None,
) -> None:
    """Every audit row of the period, oldest first, on stdout."""
    settings = settings_or_exit(config)
    tz = settings.site.timezone
    start, end = moment(since, tz), moment(until, tz, end=True)
    engine = make_engine(settings.database_url())
    migrate(engine)
    entries = AuditLog(engine).export(start, end, action=action)
    if fmt is Format.CSV:
        typer.echo(export_csv(entries), nl=False)
    else:
        typer.echo(json.dumps([e.as_json() for e in entries], indent=2))
