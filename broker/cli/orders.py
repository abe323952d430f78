"""``radbridge orders``: orders received from the RIS/HIS (HL7 v2 or FHIR) and their studies."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli.common import ConfigOption, JsonOption, cli_locale, err, out, settings_or_exit
from broker.model.domain import OrderLink, StoredOrder
from broker.model.errors import NotFoundError
from broker.store import make_engine
from broker.store.migrate import migrate
from broker.store.orders import OrderStore
from config.schema import Settings

app = typer.Typer(help="Orders from the RIS/HIS and the studies they belong to.")


def order_store(settings: Settings) -> OrderStore:
    engine = make_engine(settings.database_url())
    migrate(engine)
    return OrderStore(engine)


def order_json(stored: StoredOrder, links: list[OrderLink] | None = None) -> dict[str, Any]:
    """An order for ``--json`` output (also the ``order`` of ``studies show --json``)."""
    o = stored.order
    data: dict[str, Any] = {
        "id": stored.id,
        "resource_id": stored.resource_id,
        "version": stored.version,
        "source": o.source.value,
        "placer_number": o.placer_number,
        "filler_number": o.filler_number,
        "accession_number": o.accession_number,
        "issuer": o.issuer,
        "patient": {
            "patient_id": o.patient.patient_id,
            "issuer": o.patient.issuer,
            "name": o.patient.name,
            "birth_date": o.patient.birth_date,
            "sex": o.patient.sex,
        },
        "procedure_code": o.procedure_code,
        "procedure_text": o.procedure_text,
        "modality": o.modality,
        "priority": o.priority.value,
        "department": o.department,
        "status": o.status.value,
        "study_uid": o.study_uid,
        "requested_procedure_id": o.requested_procedure_id,
        "created_at": stored.created_at.isoformat(),
        "updated_at": stored.updated_at.isoformat(),
    }
    if links is not None:
        data["studies"] = [link_json(link) for link in links]
    return data


def link_json(link: OrderLink) -> dict[str, Any]:
    return {
        "study_uid": link.study_uid,
        "order_id": link.order_id,
        "state": link.state.value,
        "matched_on": link.matched_on,
        "detail": link.detail,
    }


def order_rows(stored: StoredOrder) -> list[tuple[str, str]]:
    """The lines ``orders show`` and ``studies show`` print for an order."""
    o = stored.order
    procedure = " ".join(filter(None, [o.procedure_code, o.procedure_text])) or "-"
    return [
        ("order", f"{stored.id} ({o.source.value}, version {stored.version}) {stored.resource_id}"),
        ("placer / filler", f"{o.placer_number or '-'} / {o.filler_number or '-'}"),
        ("accession", f"{o.accession_number or '-'}{'^' + o.issuer if o.issuer else ''}"),
        ("procedure", procedure),
        ("modality", o.modality or "-"),
        ("priority", o.priority.value),
        ("status", o.status.value),
        ("department", o.department or "-"),
    ]


def print_rows(rows: list[tuple[str, str]]) -> None:
    for key, value in rows:
        out.print(f"  {key:18} {value}", highlight=False, markup=False)


@app.command("list")
def orders_list(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
) -> None:
    """Orders in the store, most recently updated first."""
    orders = order_store(settings_or_exit(config)).list(limit=limit)
    if as_json:
        print(json.dumps([order_json(s) for s in orders], indent=2))
        return
    local = cli_locale(config)
    _ = local.gettext
    table = Table(
        _("id"),
        _("accession"),
        _("placer"),
        _("patient"),
        _("procedure"),
        _("priority"),
        _("status"),
        _("updated"),
    )
    for s in orders:
        o = s.order
        table.add_row(
            str(s.id),
            o.accession_number or "",
            o.placer_number or "",
            o.patient.patient_id or "",
            o.procedure_code or "",
            o.priority.value,
            o.status.value,
            local.time(s.updated_at),
        )
    out.print(table)


@app.command("show")
def orders_show(
    key: Annotated[str, typer.Argument(help="Order id, FHIR resource id or accession number.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One order: identifiers, patient, procedure, priority, status and its studies."""
    store = order_store(settings_or_exit(config))
    try:
        stored = store.get(key)
    except NotFoundError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    links = store.linked_studies(stored.id)
    if as_json:
        print(json.dumps(order_json(stored, links), indent=2))
        return
    p = stored.order.patient
    out.print(f"[bold]Order[/bold] {stored.id}", highlight=False)
    print_rows(
        [
            *order_rows(stored),
            ("patient", f"{p.name or ''} ({p.patient_id or '-'})"),
            ("received", cli_locale(config).time(stored.created_at)),
            ("updated", cli_locale(config).time(stored.updated_at)),
        ]
    )
    for link in links:
        note = f" — {link.detail}" if link.detail else ""
        out.print(
            f"  study {link.study_uid}: {link.state.value} by {link.matched_on}{note}",
            highlight=False,
            markup=False,
        )
