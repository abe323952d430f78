"""``radbridge usage report``: delivered studies per vendor, product, site and day."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated

import typer

from broker.cli.audit import Format
from broker.cli.common import ConfigOption, err, store_engine
from broker.store.usage import UsageStore, report_csv

app = typer.Typer(help="Usage for settlement with the AI vendors.", no_args_is_help=True)


@app.callback()
def usage() -> None:
    """Usage for settlement with the AI vendors."""


def day_option(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        err.print(f"{option} {value!r} is not a date; valid: YYYY-MM-DD, e.g. 2024-05-01")
        raise typer.Exit(2) from exc


@app.command("report")
def report(
    *,
    since: Annotated[str, typer.Option("--from", help="First day (YYYY-MM-DD, site days).")],
    until: Annotated[str, typer.Option("--to", help="Last day, included.")],
    config: ConfigOption = None,
    fmt: Annotated[Format, typer.Option("--format", help="csv or json.")] = Format.CSV,
    vendor: Annotated[str | None, typer.Option("--vendor", help="Only this vendor.")] = None,
    site: Annotated[
        list[str] | None,
        typer.Option("--site", help="Only this site (its id; the hub's name); repeatable."),
    ] = None,
) -> None:
    """One line per vendor, product, site, day and unit: studies, quantity, billable,
    trial, unbillable, package, amount, contract, payer and price code."""
    start, end = day_option(since, "--from"), day_option(until, "--to")
    if end < start:
        err.print(f"--to {end} is before --from {start}")
        raise typer.Exit(2)
    engine = store_engine(config)
    lines = UsageStore(engine).report(start, end, vendor, site or None)
    if fmt is Format.CSV:
        typer.echo(report_csv(lines), nl=False)
    else:
        typer.echo(json.dumps([line.as_json() for line in lines], indent=2))
