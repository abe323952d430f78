"""The ``radbridge`` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict
from importlib.metadata import entry_points
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli.audit import app as audit_app
from broker.cli.backup import backup_command, restore_command
from broker.cli.common import ConfigOption, JsonOption, cli_locale, err, out, settings_or_exit
from broker.cli.config import app as config_app
from broker.cli.conflicts import app as conflicts_app
from broker.cli.critical import app as critical_app
from broker.cli.deliveries import app as deliveries_app
from broker.cli.install import install_service
from broker.cli.jobs import app as jobs_app
from broker.cli.orders import app as orders_app
from broker.cli.orders import link_json, order_json, order_rows, print_rows
from broker.cli.pseudonyms import app as pseudonyms_app
from broker.cli.purge import purge_command
from broker.cli.results import app as results_app
from broker.cli.routes import app as routes_app
from broker.cli.timeline import timeline_command, turnaround_command
from broker.cli.tokens import app as tokens_app
from broker.cli.trials import app as trials_app
from broker.cli.usage import app as usage_app
from broker.cli.users import app as users_app
from broker.cli.vendors import app as vendors_app
from broker.model.domain import LinkState, Study
from broker.model.errors import NotFoundError, RadbridgeError
from broker.model.logging import configure_logging, get_logger
from broker.model.version import VERSION
from broker.store import StudyStore, make_engine
from broker.store.migrate import migrate
from broker.store.orders import OrderStore
from broker.store.study_events import StudyEvents
from config.loader import config_path
from config.schema import Settings

app = typer.Typer(
    help="radbridge: PACS/RIS integration middleware for imaging AI.", no_args_is_help=True
)
studies_app = typer.Typer(help="Studies received by radbridge.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(studies_app, name="studies")
studies_app.command("timeline")(timeline_command)
studies_app.command("turnaround")(turnaround_command)
app.add_typer(routes_app, name="routes")
app.add_typer(jobs_app, name="jobs")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(orders_app, name="orders")
app.add_typer(conflicts_app, name="conflicts")
app.add_typer(critical_app, name="critical")
app.add_typer(tokens_app, name="tokens")
app.add_typer(audit_app, name="audit")
app.add_typer(usage_app, name="usage")
app.add_typer(trials_app, name="trials")
app.add_typer(results_app, name="results")
app.add_typer(users_app, name="users")
app.add_typer(vendors_app, name="vendors")
app.add_typer(pseudonyms_app, name="pseudonyms")
app.command("backup")(backup_command)
app.command("restore")(restore_command)
app.command("purge")(purge_command)
app.command("install-service")(install_service)


def _add_plugin_commands(argv: list[str]) -> None:
    """Add the sub-commands adapter packages declare under the ``radbridge.commands`` entry
    points (``harness``), so that the broker never imports an adapter by name.

    One is loaded only when the command line names it (or asks for the full help): the
    harness imports pydicom, numpy and highdicom, which every other command would
    otherwise pay for at start (about 0.7 s).
    """
    asked = argv[1] if len(argv) > 1 else ""
    for command in entry_points(group="radbridge.commands"):
        if asked in ("", command.name) or asked.startswith("-"):
            app.add_typer(command.load(), name=command.name)
        else:
            app.add_typer(
                typer.Typer(help=f"See radbridge {command.name} --help."), name=command.name
            )


_add_plugin_commands(sys.argv)


def _print_version(asked: bool) -> None:
    if asked:
        print(f"radbridge {VERSION}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """radbridge: PACS/RIS integration middleware for imaging AI."""


def _store(settings: Settings) -> StudyStore:
    engine = make_engine(settings.database_url())
    migrate(engine)
    return StudyStore(engine)


def _exit_now() -> None:
    """End ``serve`` or ``worker`` after a clean stop without finalising the interpreter.

    Everything is stopped, committed and closed by then; tearing down the
    modules and objects of a service costs about 0.3 s of CPU for nothing.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the service: DICOM listener, stable timer, routing and delivery, until Ctrl-C."""
    from broker.runtime.service import Service  # noqa: PLC0415 (the service is heavy; other commands skip it)

    settings = settings_or_exit(config)
    configure_logging(
        settings.logging.level,
        settings.logging.format,
        settings.logging.phi,
        file=settings.logging.log_file(),
    )
    log = get_logger("radbridge.cli")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        service = Service(settings, config_path=config_path(config))
        signal.signal(signal.SIGHUP, lambda *_: service.hup.set())
        service.start()
    except RadbridgeError as exc:
        log.error("radbridge cannot start", error=str(exc))
        raise typer.Exit(1) from exc
    listen = settings.dicom.listen
    out.print(
        f"radbridge listening for DICOM on {listen.host}:{listen.port} "
        f"as {', '.join(settings.dicom.ae_titles)}; Ctrl-C stops",
        highlight=False,
    )
    stop.wait()
    log.info("stopping")
    service.stop()
    _exit_now()


@app.command()
def worker(config: ConfigOption = None) -> None:
    """Send vendor jobs, woken from a shared bus (RabbitMQ), until Ctrl-C or SIGTERM."""
    from broker.engine.bus import Bus  # noqa: PLC0415 (kombu is heavy; other commands skip it)
    from broker.runtime.worker import WorkerProcess  # noqa: PLC0415

    settings = settings_or_exit(config)
    configure_logging(
        settings.logging.level,
        settings.logging.format,
        settings.logging.phi,
        file=settings.logging.log_file(),
    )
    log = get_logger("radbridge.cli")
    if settings.bus.url.startswith("memory"):
        err.print(
            "radbridge worker needs a shared bus: set bus.url to amqp://… "
            "(with memory:// the service delivers itself)"
        )
        raise typer.Exit(2)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    engine = make_engine(settings.database_url())
    migrate(engine)
    bus = Bus(settings.bus.connection_url(), prefix=settings.bus.prefix)
    try:
        process = WorkerProcess(settings, engine, bus, config)
        signal.signal(signal.SIGHUP, lambda *_: process.hup.set())
        process.start()
    except RadbridgeError as exc:
        log.error("radbridge worker cannot start", error=str(exc))
        raise typer.Exit(1) from exc
    stop.wait()
    process.stop(timeout=30)
    bus.close()
    engine.dispose()
    _exit_now()


def _study_json(study: Study, with_series: bool) -> dict[str, Any]:
    data = asdict(study)
    data["instances"] = data.pop("instance_count")
    data["state"] = study.state.value
    for key in ("first_received_at", "last_received_at", "stable_at", "purged_at"):
        value = getattr(study, key)
        data[key] = value.isoformat() if value else None
    data["series"] = [
        {**{k: v for k, v in s.items() if k != "instance_count"}, "instances": s["instance_count"]}
        for s in data["series"]
    ]
    if not with_series:
        data.pop("series")
    return data


@studies_app.command("list")
def studies_list(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
) -> None:
    """Studies in the store, newest first."""
    studies = _store(settings_or_exit(config)).list_studies(limit=limit)
    if as_json:
        print(json.dumps([_study_json(s, with_series=False) for s in studies], indent=2))
        return
    local = cli_locale(config)
    _ = local.gettext
    table = Table(
        _("study UID"),
        _("patient"),
        _("accession"),
        _("modalities"),
        _("series"),
        _("instances"),
        _("state"),
        _("last received"),
    )
    for s in studies:
        table.add_row(
            s.study_uid,
            s.patient.patient_id or "",
            s.accession_number or "",
            "/".join(s.modalities),
            str(len(s.series)),
            str(s.instance_count),
            s.state.value + (" " + _("(purged)") if s.purged_at else ""),
            local.time(s.last_received_at),
        )
    out.print(table)


@studies_app.command("show")
def studies_show(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One study: patient, accession, linked order, series with instance counts, state, times."""
    store = _store(settings_or_exit(config))
    try:
        study = store.get_study(study_uid)
    except NotFoundError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    orders = OrderStore(store.engine)
    link = orders.link(study_uid)
    order = orders.get(link.order_id) if link is not None else None
    history = StudyEvents(store.engine).history(study_uid)
    if as_json:
        data = _study_json(study, with_series=True)
        data["history"] = [
            {"at": e.at.isoformat(), "kind": e.kind, "reason": e.reason, "detail": e.detail}
            for e in history
        ]
        data["order_link"] = link_json(link) if link is not None else None
        linked = order is not None and link is not None and link.state is LinkState.LINKED
        data["order"] = order_json(order) if linked and order is not None else None
        print(json.dumps(data, indent=2))
        return
    p = study.patient
    local = cli_locale(config)
    out.print(f"[bold]Study[/bold] {study.study_uid}", highlight=False)
    rows = [
        ("patient", f"{p.name or ''} ({p.patient_id or '-'}{'^' + p.issuer if p.issuer else ''})"),
        ("birth date / sex", f"{p.birth_date or '-'} / {p.sex or '-'}"),
        ("accession", study.accession_number or "-"),
        ("description", study.description or "-"),
        ("state", f"{study.state.value} (revision {study.revision})"),
        (
            "received",
            f"{local.time(study.first_received_at)} – {local.time(study.last_received_at)}",
        ),
        ("stable at", local.time(study.stable_at) or "-"),
        ("from", f"{study.calling_ae} ({study.peer_address}) to {study.called_ae}"),
        ("instances", f"{study.instance_count} ({study.size / 1e6:.1f} MB)"),
    ]
    print_rows(rows)
    if link is not None and order is not None and link.state is LinkState.LINKED:
        print_rows(order_rows(order))
    elif link is not None:
        out.print(
            f"  order {link.order_id} matches by {link.matched_on} but is not linked: "
            f"{link.detail} (flagged for an operator)",
            highlight=False,
            markup=False,
        )
    else:
        out.print("  order              none linked", highlight=False, markup=False)
    table = Table(
        "series UID", "#", "modality", "body part", "description", "thickness", "instances"
    )
    for s in study.series:
        table.add_row(
            s.series_uid,
            str(s.series_number or ""),
            s.modality or "",
            s.body_part or "",
            s.description or "",
            f"{s.slice_thickness:g}" if s.slice_thickness is not None else "",
            str(s.instance_count),
        )
    out.print(table)
    if history:
        events = Table("time", "event", "reason", "detail")
        for e in history:
            events.add_row(local.time(e.at), e.kind, e.reason or "", e.detail or "")
        out.print(events)
