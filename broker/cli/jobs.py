"""``radbridge jobs``: list, show, retry and cancel delivery jobs."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli.common import ConfigOption, JsonOption, err, out, plain, settings_or_exit
from broker.model.errors import NotFoundError, RadbridgeError
from broker.model.jobs import Job, JobState
from broker.store import make_engine
from broker.store.audit import Action, AuditLog, cli_actor
from broker.store.deliveries import DeliveryStore
from broker.store.jobs import JobStore
from broker.store.migrate import migrate

app = typer.Typer(help="Delivery jobs: one per study and vendor product.", no_args_is_help=True)


def _jobs(config: Any) -> JobStore:
    engine = make_engine(settings_or_exit(config).database_url())
    migrate(engine)
    return JobStore(engine)


def _job_json(job: Job) -> dict[str, Any]:
    result: dict[str, Any] = plain(asdict(job))
    return result


@app.command("list")
def list_jobs(
    config: ConfigOption = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            help="Only jobs in this state (repeatable); 'overdue': still waiting for a "
            "result (sent, awaiting_result) past their route's deadline.",
        ),
    ] = None,
    vendor: Annotated[str | None, typer.Option("--vendor", help="Only this vendor.")] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
) -> None:
    """Jobs, oldest first, optionally filtered by state and vendor."""
    store = _jobs(config)
    states = [s.strip().lower() for s in state or []]
    try:
        wanted = [JobState(s) for s in states if s != "overdue"]
    except ValueError as exc:
        valid = ", ".join([*JobState, "overdue"])
        err.print(f"{exc}; valid states: {valid}", highlight=False)
        raise typer.Exit(2) from exc
    if "overdue" in states:
        overdue = DeliveryStore(store.engine).overdue_jobs(limit=limit)
        jobs = [j for j in overdue if vendor in (None, j.vendor)]
        jobs += store.list(state=wanted, vendor=vendor, limit=limit) if wanted else []
    else:
        jobs = store.list(state=wanted or None, vendor=vendor, limit=limit)
    if as_json:
        print(json.dumps([_job_json(j) for j in jobs], indent=2))
        return
    table = Table("id", "state", "vendor", "route", "priority", "attempts", "study UID", "updated")
    for j in jobs:
        table.add_row(
            str(j.id),
            j.state.value,
            j.vendor,
            j.route,
            j.priority.value,
            f"{j.attempts}/{j.max_attempts}",
            j.study_uid,
            f"{j.updated_at:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)


@app.command("show")
def show_job(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One job and its full history (every transition with time, attempt and error)."""
    store = _jobs(config)
    try:
        job = store.get(job_id)
    except NotFoundError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    history = store.history(job_id)
    if as_json:
        print(
            json.dumps({**_job_json(job), "history": plain([asdict(e) for e in history])}, indent=2)
        )
        return
    out.print(
        f"job {job.id}: {job.state.value}; {job.vendor} via route {job.route}; "
        f"priority {job.priority.value}; attempt {job.attempts} of {job.max_attempts}",
        highlight=False,
    )
    out.print(f"study {job.study_uid}", highlight=False)
    if job.last_error:
        out.print(f"last error: {job.last_error}", highlight=False, markup=False)
    table = Table("at", "from", "to", "attempt", "error")
    for e in history:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S.%f}"[:-3],
            str(e.from_state or ""),
            str(e.to_state),
            str(e.attempt),
            e.error or "",
        )
    out.print(table)


def _operator(action: str, job_id: int, config: Any) -> None:
    store = _jobs(config)
    try:
        before = store.get(job_id)
        job = (
            store.retry(job_id)
            if action == "retry"
            else store.cancel(job_id, reason="cancelled by operator")
        )
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    AuditLog(store.engine).record(
        cli_actor(),
        Action.JOB_RETRY if action == "retry" else Action.JOB_CANCEL,
        f"job:{job_id}",
        {"from_state": before.state.value, "to_state": job.state.value, "vendor": job.vendor},
    )
    out.print(f"job {job.id} is {job.state.value}", highlight=False)


@app.command("retry")
def retry_job(
    job_id: Annotated[int, typer.Argument(help="Job id.")], config: ConfigOption = None
) -> None:
    """Start a dead or failed job over; the running service publishes it within a second."""
    _operator("retry", job_id, config)


@app.command("cancel")
def cancel_job(
    job_id: Annotated[int, typer.Argument(help="Job id.")], config: ConfigOption = None
) -> None:
    """Cancel a job that has not finished."""
    _operator("cancel", job_id, config)
