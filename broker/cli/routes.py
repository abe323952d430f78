"""``radbridge routes``: ask what the routing rules would do with a study.

    radbridge routes explain -c FILE PATH|STUDY_UID [--json] [--at TIME]
        [--calling-ae AE] [--called-ae AE] [--order ACCESSION|FILE]

PATH is a DICOM Part 10 file or a folder of them (searched recursively; other
files are skipped; files are taken in name order, as if received in that
order); a STUDY_UID is read from the store with the order linked to it and
the jobs it already has. Every route is listed with matched / not matched and
why (``modality: wanted CT, got MR``), what it would send, and notes on
deduplication, exclusive and fallback routes and existing jobs (delivered to
the vendor, or not yet).

For files, ``--calling-ae`` and ``--called-ae`` say which AE title sent them
and to which of radbridge's, and ``--order`` gives their order: the
accession number of an order in the store, or a file with an HL7 v2
ORM^O01/OMI^O23 message or a FHIR ServiceRequest (or Bundle). The order is
used only if the service would link it (same accession number or Study
Instance UID, same patient). Explain and ``serve`` build their routing input
the same way (:mod:`broker.runtime.routing_input`).

Exit codes: 0 when, for every study given, at least one route fires, a
matching route waits for the study's order, or every matching vendor has its
job already; 3 when a study is unrouted (no route matches, every matching
delivery is skipped, or its order is cancelled); 1 when the study or the
order cannot be read; 2 when the configuration or an option is invalid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from broker.cli.common import ConfigOption, settings_or_exit
from broker.model.domain import Order, Study
from broker.model.errors import AdapterError, DicomError, RadbridgeError, StoreError
from broker.model.plugins import registered
from broker.runtime.contracts import contract_use
from broker.runtime.routing_input import (
    RoutingInput,
    files_input,
    orders_from_file,
    stored_input,
    stored_order,
)
from broker.store import StudyStore, make_engine
from broker.store.contracts import ContractStore
from broker.store.jobs import JobStore
from broker.store.orders import OrderStore
from broker.store.results import ResultStore
from config.schema import Settings, routing_rules
from routing import RuleSet

EXIT_UNROUTED = 3
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

app = typer.Typer(help="Routing rules: what would happen to a study.", no_args_is_help=True)


@app.callback()
def routes() -> None:
    """Routing rules: what would happen to a study."""


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def studies_from_path(path: Path) -> tuple[list[tuple[Study, dict[str, str]]], int]:
    """The studies in a DICOM file or folder, and how many files were not DICOM."""
    read: Callable[[Path], tuple[list[tuple[Study, dict[str, str]]], int]] = registered(
        "study_reader"
    )
    return read(path)


def _store_error(settings: Settings, exc: Exception) -> typer.Exit:
    if isinstance(exc, StoreError):
        return _fail(str(exc))
    return _fail(f"cannot read the store {settings.storage.database}: {exc}")


def _stored_input(
    settings: Settings, study_uid: str, rules: RuleSet, now: datetime
) -> RoutingInput:
    engine = make_engine(settings.database_url())
    try:
        used = contract_use(ContractStore(engine), rules, now)
        return stored_input(
            StudyStore(engine),
            OrderStore(engine),
            JobStore(engine),
            study_uid,
            used=used,
            results=ResultStore(engine),
        )
    except (StoreError, SQLAlchemyError) as exc:
        raise _store_error(settings, exc) from exc
    finally:
        engine.dispose()


def _files_contract_use(settings: Settings, rules: RuleSet, now: datetime) -> dict[str, int]:
    """The contracts' use from the store when there is one (files are explained without it
    otherwise: every contract as if nothing were used yet)."""
    if not any(p.contracts for p in rules.products.values()):
        return {}
    url = make_url(settings.database_url())
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        return {}
    engine = make_engine(settings.database_url())
    try:
        return contract_use(ContractStore(engine), rules, now)
    except (StoreError, SQLAlchemyError):
        return {}
    finally:
        engine.dispose()


def _orders(settings: Settings, given: str) -> tuple[Order, ...]:
    """The orders ``--order`` names: a file's, or the stored order with that accession."""
    path = Path(given)
    if path.is_file():
        charset = settings.hl7.default_charset if settings.hl7 is not None else "utf-8"
        try:
            return orders_from_file(path, charset)
        except AdapterError as exc:
            raise _fail(f"--order {exc}") from exc
    engine = make_engine(settings.database_url())
    try:
        return (stored_order(OrderStore(engine), given),)
    except (StoreError, SQLAlchemyError) as exc:
        raise _store_error(settings, exc) from exc
    finally:
        engine.dispose()


def _when(at: str | None, rules: RuleSet) -> datetime:
    if at is None:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(at)
    except ValueError as exc:
        raise _fail(f"--at {at!r} is not a time; valid: ISO 8601, e.g. 2024-05-01T03:00") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=rules.timezone)


def _ae(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 16 or "\\" in text or not text.isprintable():
        raise _fail(
            f"{option} {value!r} is not an AE title; valid: 1 to 16 printable characters, "
            "no backslash",
            2,
        )
    return text


def _inputs(
    settings: Settings,
    target: str,
    order: str | None,
    calling_ae: str | None,
    called_ae: str | None,
    *,
    rules: RuleSet,
    now: datetime,
    site: str | None = None,
) -> list[RoutingInput]:
    path = Path(target)
    if path.exists():
        orders = _orders(settings, order) if order is not None else ()
        try:
            studies, skipped = studies_from_path(path)
        except DicomError as exc:
            raise _fail(f"{path}: {exc}") from exc
        if not studies:
            raise _fail(f"{path}: no DICOM Part 10 files ({skipped} other files skipped)")
        used = _files_contract_use(settings, rules, now)
        return [
            replace(
                files_input(
                    study, tags, orders, calling_ae=calling_ae, called_ae=called_ae, site=site
                ),
                used=used,
            )
            for study, tags in studies
        ]
    if _UID.fullmatch(target):
        given = [
            name
            for name, value in (
                ("--order", order),
                ("--calling-ae", calling_ae),
                ("--called-ae", called_ae),
                ("--site", site),
            )
            if value is not None
        ]
        if given:
            raise _fail(
                f"{', '.join(given)}: for DICOM files only; a stored study is explained with "
                "the order linked to it and the AE titles it came with",
                2,
            )
        return [_stored_input(settings, target, rules, now)]
    raise _fail(f"{target}: no such file or folder, and not a Study Instance UID")


@app.command("explain")
def explain_command(
    target: Annotated[
        str,
        typer.Argument(
            metavar="PATH|STUDY_UID",
            help="A DICOM file or folder, or the Study Instance UID of a study in the store.",
            show_default=False,
        ),
    ],
    *,
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, one object per route.")
    ] = False,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Decide as at this time (ISO 8601; without an offset: the site's timezone). "
            "Default: now.",
            show_default=False,
        ),
    ] = None,
    calling_ae: Annotated[
        str | None,
        typer.Option(
            "--calling-ae",
            help="Files only: the AE title that sent them (calling_ae conditions).",
            show_default=False,
        ),
    ] = None,
    called_ae: Annotated[
        str | None,
        typer.Option(
            "--called-ae",
            help="Files only: the radbridge AE title they were sent to (called_ae conditions).",
            show_default=False,
        ),
    ] = None,
    site: Annotated[
        str | None,
        typer.Option(
            "--site",
            help="Files only: the site (id of sites:) that sent them (site conditions, "
            "routes' sites: and site.NAME write-backs).",
            show_default=False,
        ),
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(
            "--order",
            metavar="ACCESSION|FILE",
            help="Files only: their order; the accession number of an order in the store, or "
            "a file with an HL7 v2 ORM^O01/OMI^O23 message or a FHIR ServiceRequest.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Every route with matched / not matched and why. Exit 0 routed, 3 unrouted."""
    settings = settings_or_exit(config)
    try:
        rules = routing_rules(settings)
    except RadbridgeError as exc:
        raise _fail(f"{config}: {exc}", 2) from exc
    calling = _ae("--calling-ae", calling_ae)
    called = _ae("--called-ae", called_ae)
    now = _when(at, rules)
    if site is not None and site not in settings.sites:
        valid = ", ".join(settings.sites) or "none (no sites: block)"
        raise _fail(f"--site: unknown site {site!r}; valid: {valid}", 2)
    inputs = _inputs(settings, target, order, calling, called, rules=rules, now=now, site=site)
    rows: list[dict[str, Any]] = []
    texts: list[str] = []
    routed_all = True
    for routing_input in inputs:
        explained = routing_input.explain(rules, now)
        routed_all = routed_all and explained.routed
        rows += explained.rows()
        texts.append(explained.text())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo("\n\n".join(texts))
    if not routed_all:
        raise typer.Exit(EXIT_UNROUTED)


if __name__ == "__main__":
    app()
