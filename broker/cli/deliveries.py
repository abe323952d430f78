"""``radbridge deliveries``: write-back deliveries (one per result and target).

``list``, ``show`` and ``retry`` (audited as ``delivery.retry`` by ``cli:USER``).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from broker.cli.common import ConfigOption, JsonOption, cli_locale, out, store_engine
from broker.cli.work import (
    BeforeOption,
    as_json,
    audited,
    more_pages,
    print_json,
    show,
)
from broker.model.writeback import DeliveryState
from broker.store.audit import Action
from broker.store.deliveries import DeliveryStore
from broker.store.listing import DeliveryFilter, Listing

app = typer.Typer(
    help="Write-back deliveries: one per result and target (PACS, RIS, EMR, notifications).",
    no_args_is_help=True,
)


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
    json_out: JsonOption = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
    before: BeforeOption = None,
) -> None:
    """Deliveries, newest first, optionally filtered by state, target and job; ``--before ID``
    pages on."""
    found = Listing(store_engine(config)).deliveries(
        DeliveryFilter(states=state or (), target=target, job_id=job), before_id=before, limit=limit
    )
    if json_out:
        print_json([as_json(d) for d in found])
        return
    local = cli_locale(config)
    _ = local.gettext
    table = Table(
        _("id"),
        _("state"),
        _("target"),
        _("kind"),
        _("urgent"),
        _("job"),
        _("result"),
        _("attempts"),
        _("updated"),
        _("error"),
    )
    for d in found:
        table.add_row(
            str(d.id),
            d.state.value,
            d.target,
            d.kind.value if d.event == "result" else f"{d.kind.value} ({d.event})",
            _("yes") if d.urgent else "",
            str(d.job_id or ""),
            str(d.result_id or ""),
            f"{d.attempts}/{d.max_attempts}",
            local.time(d.updated_at),
            (d.last_error or "")[:80] if d.state is not DeliveryState.DONE else "",
        )
    out.print(table)
    more_pages(found, limit, local)


@app.command("show")
def show_delivery(
    delivery_id: Annotated[int, typer.Argument(help="Delivery id.")],
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """One delivery and its history (every attempt with time, worker, snapshot and error)."""
    show(
        DeliveryStore(store_engine(config)),
        cli_locale(config),
        delivery_id,
        json_out,
        lambda d: [
            f"delivery {d.id}: {d.state.value}; {d.kind.value} ({d.event}) to {d.target} "
            f"({d.target_type}); attempt {d.attempts} of {d.max_attempts}; "
            f"message {d.message_id}",
            f"job {d.job_id}, result {d.result_id}, study {d.study_uid}",
            d.detail and f"done: {d.detail}",
        ],
    )


@app.command("retry")
def retry_delivery(
    delivery_id: Annotated[int, typer.Argument(help="Delivery id.")], config: ConfigOption = None
) -> None:
    """Start a dead or failed delivery over; the running service sends it within a second."""
    store = DeliveryStore(store_engine(config))

    def act() -> tuple[object, object]:
        return store.get(delivery_id), store.retry(delivery_id)

    d = audited(
        store.engine,
        Action.DELIVERY_RETRY,
        f"delivery:{delivery_id}",
        act,
        lambda before, after: {
            "from_state": before.state.value,
            "to_state": after.state.value,
            "target": after.target,
            "job_id": after.job_id,
        },
    )
    out.print(f"delivery {d.id} is {d.state.value}", highlight=False)
