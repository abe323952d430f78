"""``radbridge deliveries``: write-back deliveries (one per result and target).

``list``, ``show`` and ``retry`` (audited as ``delivery.retry`` by ``cli:USER``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli.common import ConfigOption, JsonOption, err, out, plain, settings_or_exit
from broker.model.errors import NotFoundError, RadbridgeError
from broker.model.writeback import Delivery, DeliveryState
from broker.store import make_engine
from broker.store.audit import Action, AuditLog, cli_actor
from broker.store.deliveries import DeliveryStore
from broker.store.migrate import migrate

app = typer.Typer(
    help="Write-back deliveries: one per result and target (PACS, RIS, EMR, notifications).",
    no_args_is_help=True,
)


def _store(config: Any) -> DeliveryStore:
    engine = make_engine(settings_or_exit(config).database_url())
    migrate(engine)
    return DeliveryStore(engine)


def _json(d: Delivery) -> dict[str, Any]:
    data: dict[str, Any] = plain(asdict(d))
    return data


@app.command("list")
def list_deliveries(
    config: ConfigOption = None,
    *,
    state: Annotated[
        list[DeliveryState] | None,
        typer.Option("--state", help="Only deliveries in this state (repeatable)."),
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="Only this target.")] = None,
    job: Annotated[int | None, typer.Option("--job", help="Only this job's deliveries.")] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
) -> None:
    """Deliveries, oldest first, optionally filtered by state, target and job."""
    found = _store(config).list(state=state or None, target=target, job_id=job, limit=limit)
    if as_json:
        print(json.dumps([_json(d) for d in found], indent=2))
        return
    table = Table(
        "id", "state", "target", "kind", "urgent", "job", "result", "attempts", "updated", "error"
    )
    for d in found:
        table.add_row(
            str(d.id),
            d.state.value,
            d.target,
            d.kind.value if d.event == "result" else f"{d.kind.value} ({d.event})",
            "yes" if d.urgent else "",
            str(d.job_id or ""),
            str(d.result_id or ""),
            f"{d.attempts}/{d.max_attempts}",
            f"{d.updated_at:%Y-%m-%d %H:%M:%S}",
            (d.last_error or "")[:80] if d.state is not DeliveryState.DONE else "",
        )
    out.print(table)


@app.command("show")
def show_delivery(
    delivery_id: Annotated[int, typer.Argument(help="Delivery id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One delivery and its history (every attempt with time and error)."""
    store = _store(config)
    try:
        d = store.get(delivery_id)
    except NotFoundError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    history = store.history(delivery_id)
    if as_json:
        events = plain([asdict(e) for e in history])
        print(json.dumps({**_json(d), "history": events}, indent=2))
        return
    out.print(
        f"delivery {d.id}: {d.state.value}; {d.kind.value} ({d.event}) to {d.target} "
        f"({d.target_type}); attempt {d.attempts} of {d.max_attempts}; message {d.message_id}",
        highlight=False,
        markup=False,
    )
    out.print(f"job {d.job_id}, result {d.result_id}, study {d.study_uid}", highlight=False)
    if d.detail:
        out.print(f"done: {d.detail}", highlight=False, markup=False)
    if d.last_error:
        out.print(f"last error: {d.last_error}", highlight=False, markup=False)
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


@app.command("retry")
def retry_delivery(
    delivery_id: Annotated[int, typer.Argument(help="Delivery id.")], config: ConfigOption = None
) -> None:
    """Start a dead or failed delivery over; the running service sends it within a second."""
    store = _store(config)
    try:
        before = store.get(delivery_id)
        d = store.retry(delivery_id)
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    AuditLog(store.engine).record(
        cli_actor(),
        Action.DELIVERY_RETRY,
        f"delivery:{delivery_id}",
        {
            "from_state": before.state.value,
            "to_state": d.state.value,
            "target": d.target,
            "job_id": d.job_id,
        },
    )
    out.print(f"delivery {d.id} is {d.state.value}", highlight=False)
