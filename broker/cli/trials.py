"""``radbridge trials report``: how a product did in a silent trial (or any period), and
its agreement with another product per finding code."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from broker.cli.audit import Format
from broker.cli.common import ConfigOption, err, settings_or_exit
from broker.cli.usage import day_option
from broker.model.errors import NotFoundError
from broker.model.trials import report_csv
from broker.runtime.trials import trial_report
from broker.store import make_engine
from broker.store.migrate import migrate

app = typer.Typer(help="Silent trials: compare a product with another.", no_args_is_help=True)


@app.callback()
def trials() -> None:
    """Silent trials: compare a product with another."""


@app.command("report")
def report(
    *,
    vendor: Annotated[str, typer.Option("--vendor", help="The product on trial (vendor name).")],
    since: Annotated[str, typer.Option("--from", help="First day (YYYY-MM-DD, site days).")],
    until: Annotated[str, typer.Option("--to", help="Last day, included.")],
    against: Annotated[
        str | None,
        typer.Option(
            "--against", help="Compare with this vendor (default: the live one with most studies)."
        ),
    ] = None,
    config: ConfigOption = None,
    fmt: Annotated[Format, typer.Option("--format", help="json or csv.")] = Format.JSON,
) -> None:
    """Studies sent, results received, failure and no-answer rates, turnaround p50/p95,
    positive rate, agreement per finding code (percent and Cohen's kappa), and the cost at
    the product's price."""
    start, end = day_option(since, "--from"), day_option(until, "--to")
    if end < start:
        err.print(f"--to {end} is before --from {start}")
        raise typer.Exit(2)
    settings = settings_or_exit(config)
    engine = make_engine(settings.database_url())
    migrate(engine)
    try:
        found = trial_report(engine, settings, vendor, start=start, end=end, against=against)
    except NotFoundError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from exc
    if fmt is Format.CSV:
        typer.echo(report_csv(found), nl=False)
    else:
        typer.echo(json.dumps(found.as_json(), indent=2))
