"""``radbridge vendors``: pause a vendor for maintenance (its jobs wait), resume it, list them;
send one a canary now."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from broker.cli.common import (
    ConfigOption,
    JsonOption,
    cli_locale,
    err,
    out,
    settings_or_exit,
    store_engine,
)
from broker.cli.work import print_json
from broker.model.canary import OPEN_STATES, CanaryState
from broker.model.errors import RadbridgeError
from broker.runtime.canary import Canaries
from broker.store.audit import Action, AuditLog, cli_actor
from broker.store.canaries import CanaryStore
from broker.store.jobs import JOBS
from broker.store.pauses import LanePauses
from broker.store.spool import Spool
from config.base import parse_end

app = typer.Typer(
    help="Vendors (AI products): pause one for maintenance, resume it, send it a canary.",
    no_args_is_help=True,
)

VendorArgument = Annotated[str, typer.Argument(help="The vendor's name in the configuration.")]


def _configured(name: str, config: ConfigOption) -> None:
    vendors = settings_or_exit(config).vendors
    if name not in vendors:
        valid = ", ".join(sorted(vendors)) or "none configured"
        err.print(f"no vendor '{name}' is configured; valid: {valid}", highlight=False)
        raise typer.Exit(1)


@app.command("pause")
def pause(
    vendor: VendorArgument,
    config: ConfigOption = None,
    *,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            help="Resume by itself then: a time (ISO 8601, site timezone) or a duration (2h).",
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (shown on the dashboard).")
    ] = None,
) -> None:
    """Stop sending to VENDOR: its jobs wait (neither failed nor retried) until it is resumed
    or the pause ends; a send under way finishes. Audited."""
    _configured(vendor, config)
    now = datetime.now(UTC)
    end = None
    if until is not None:
        try:
            end = parse_end(until, settings_or_exit(config).site.timezone, now)
        except ValueError as exc:
            err.print(f"--until: {exc}", highlight=False)
            raise typer.Exit(2) from exc
    pauses = LanePauses(store_engine(config), JOBS)
    try:
        done = pauses.pause(vendor, actor=cli_actor(), until=end, reason=reason, now=now)
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    local = cli_locale(config)
    ends = f" until {local.time(done.until)}" if done.until else " until resumed"
    out.print(f"vendor {vendor} is paused{ends}", highlight=False)


@app.command("resume")
def resume(vendor: VendorArgument, config: ConfigOption = None) -> None:
    """Send to VENDOR again: its waiting jobs go out (within a second). Audited."""
    _configured(vendor, config)
    try:
        LanePauses(store_engine(config), JOBS).resume(vendor, actor=cli_actor())
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    out.print(f"vendor {vendor} is resumed", highlight=False)


@app.command("list")
def list_vendors(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """The configured vendors and their pauses."""
    settings = settings_or_exit(config)
    pauses = LanePauses(store_engine(config), JOBS).current()
    rows = []
    for name in sorted(settings.vendors):
        p = pauses.get(name)
        rows.append(
            {
                "name": name,
                "product": settings.vendors[name].product,
                "paused": p is not None,
                "paused_at": p.since.isoformat() if p else None,
                "paused_until": p.until.isoformat() if p and p.until else None,
                "paused_by": p.by if p else None,
                "pause_reason": p.reason if p else None,
            }
        )
    if json_out:
        print_json(rows)
        return
    local = cli_locale(config)
    _ = local.gettext
    table = Table(_("vendor"), _("product"), _("paused"), _("until"), _("by"), _("reason"))
    for name in sorted(settings.vendors):
        p = pauses.get(name)
        table.add_row(
            name,
            settings.vendors[name].product,
            local.time(p.since) if p else "",
            (local.time(p.until) if p.until else _("resumed by hand")) if p else "",
            p.by if p else "",
            (p.reason or "") if p else "",
        )
    out.print(table)


@app.command("canary")
def canary(
    vendor: VendorArgument,
    config: ConfigOption = None,
    *,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Wait until the running service decides it (passed: exit 0, else 1)."
        ),
    ] = False,
) -> None:
    """Send VENDOR its canary now (its ``canary`` block): a synthetic study marked as a test,
    to this vendor only, never written back, billed or counted. Audited."""
    _configured(vendor, config)
    settings = settings_or_exit(config)
    engine = store_engine(config)
    canaries = Canaries(engine, Spool(Path(settings.storage.spool)), lambda: settings)
    actor = cli_actor()
    try:
        run = canaries.run_now(vendor, actor=actor)
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    AuditLog(engine).record(
        actor, Action.VENDOR_CANARY, f"vendor:{vendor}", {"run_id": run.id, "job_id": run.job_id}
    )
    local = cli_locale(config)
    out.print(
        f"canary {run.id} sent to {vendor}: job {run.job_id}, study {run.study_uid}, "
        f"result expected by {local.time(run.deadline_at)}",
        highlight=False,
    )
    if not wait:
        return
    runs = CanaryStore(engine)
    give_up = run.deadline_at.timestamp() + 60  # the service decides within seconds of it
    while run.state in OPEN_STATES:
        if time.time() > give_up:
            err.print(f"canary {run.id} is not decided: is radbridge serve running?")
            raise typer.Exit(1)
        time.sleep(0.5)
        run = runs.get(run.id)
    out.print(f"canary {run.id}: {run.state.value}", highlight=False)
    if run.state is not CanaryState.PASSED:
        raise typer.Exit(1)
