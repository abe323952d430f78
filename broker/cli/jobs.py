"""``radbridge jobs``: list, show, retry and cancel vendor jobs (one per study and vendor)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from broker.cli.common import ConfigOption, JsonOption, cli_locale, err, out, store_engine
from broker.cli.work import (
    BeforeOption,
    as_json,
    audited,
    more_pages,
    print_json,
    show,
)
from broker.model.jobs import JobState
from broker.store.audit import Action
from broker.store.corrections import OperatorJobStore
from broker.store.deliveries import DeliveryStore
from broker.store.jobs import JobStore
from broker.store.listing import JobFilter, Listing

app = typer.Typer(
    help="Vendor jobs: one per study and vendor product (sent to an AI vendor).",
    no_args_is_help=True,
)


@app.command("list")
def list_jobs(
    config: ConfigOption = None,
    *,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            help="Only jobs in this state (repeatable); 'overdue': still waiting for a "
            "result (sent, awaiting_result) past their route's deadline.",
        ),
    ] = None,
    vendor: Annotated[str | None, typer.Option("--vendor", help="Only this vendor.")] = None,
    json_out: JsonOption = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
    before: BeforeOption = None,
) -> None:
    """Jobs, newest first, optionally filtered by state and vendor; ``--before ID`` pages on."""
    store = JobStore(store_engine(config))
    local = cli_locale(config)
    _ = local.gettext
    states = [s.strip().lower() for s in state or []]
    try:
        wanted = [JobState(s) for s in states if s != "overdue"]
    except ValueError as exc:
        valid = ", ".join([*JobState, "overdue"])
        err.print(
            _("{error}; valid states: {valid}").format(error=exc, valid=valid), highlight=False
        )
        raise typer.Exit(2) from exc
    listing = Listing(store.engine)
    if "overdue" in states:
        overdue = DeliveryStore(store.engine).overdue_jobs(limit=limit)
        jobs = [j for j in overdue if vendor in (None, j.vendor)]
        if wanted:
            jobs += listing.jobs(
                JobFilter(states=wanted, vendor=vendor), before_id=before, limit=limit
            )
    else:
        jobs = listing.jobs(JobFilter(states=wanted, vendor=vendor), before_id=before, limit=limit)
    if json_out:
        print_json([as_json(j) for j in jobs])
        return
    table = Table(
        _("id"),
        _("state"),
        _("vendor"),
        _("route"),
        _("priority"),
        _("attempts"),
        _("study UID"),
        _("updated"),
    )
    for j in jobs:
        table.add_row(
            str(j.id),
            j.state.value,
            j.vendor,
            j.route,
            j.priority.value,
            f"{j.attempts}/{j.max_attempts}",
            j.study_uid,
            local.time(j.updated_at),
        )
    out.print(table)
    more_pages(jobs, limit, local)


@app.command("show")
def show_job(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """One job and its full history (every transition with time, attempt, worker, snapshot
    and error)."""
    show(
        JobStore(store_engine(config)),
        cli_locale(config),
        job_id,
        json_out,
        lambda job: [
            f"job {job.id}: {job.state.value}; {job.vendor} via route {job.route}; "
            f"priority {job.priority.value}; attempt {job.attempts} of {job.max_attempts}",
            f"study {job.study_uid}",
        ],
    )


def _operator(action: str, job_id: int, config: ConfigOption) -> None:
    store = OperatorJobStore(store_engine(config))
    retry = action == "retry"

    def act() -> tuple[object, object]:
        before = store.get(job_id)
        after = (
            store.retry(job_id) if retry else store.cancel(job_id, reason="cancelled by operator")
        )
        return before, after

    job = audited(
        store.engine,
        Action.JOB_RETRY if retry else Action.JOB_CANCEL,
        f"job:{job_id}",
        act,
        lambda before, after: {
            "from_state": before.state.value,
            "to_state": after.state.value,
            "vendor": after.vendor,
        },
    )
    out.print(f"job {job.id} is {job.state.value}", highlight=False)


@app.command("retry")
def retry_job(
    job_id: Annotated[int, typer.Argument(help="Job id.")], config: ConfigOption = None
) -> None:
    """Start a dead or failed job over; the running service wakes a worker within a second."""
    _operator("retry", job_id, config)


@app.command("cancel")
def cancel_job(
    job_id: Annotated[int, typer.Argument(help="Job id.")], config: ConfigOption = None
) -> None:
    """Cancel a job that has not finished."""
    _operator("cancel", job_id, config)
