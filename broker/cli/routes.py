"""``radbridge routes``: ask what the routing rules would do with a study.

    radbridge routes explain -c FILE PATH|STUDY_UID [--json] [--at TIME]

PATH is a DICOM Part 10 file or a folder of them (searched recursively; other
files are skipped); a STUDY_UID is read from the store. Every route is listed
with matched / not matched and why (``modality: wanted CT, got MR``), what it
would send, and notes on deduplication, exclusive and fallback routes.

Exit codes: 0 when, for every study given, at least one route fires (or a
matching route waits for the study's order); 3 when a study is unrouted (no
route matches, or every matching delivery is skipped); 1 when the study
cannot be read; 2 when the configuration is invalid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.exc import SQLAlchemyError

from broker.cli.common import ConfigOption, settings_or_exit
from broker.model.domain import Study
from broker.model.errors import DicomError, RadbridgeError, StoreError
from broker.model.plugins import registered
from broker.store import StudyStore, make_engine
from config.schema import Settings, routing_rules
from routing import Outcome, RuleSet, explain, to_json, to_text
from routing.facts import study_tags

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


def _study_from_store(settings: Settings, study_uid: str) -> tuple[Study, dict[str, str]]:
    try:
        study = StudyStore(make_engine(settings.database_url())).get_study(study_uid)
    except StoreError as exc:
        raise _fail(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise _fail(f"cannot read the store {settings.storage.database}: {exc}") from exc
    return study, study_tags(study)


def _when(at: str | None, rules: RuleSet) -> datetime:
    if at is None:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(at)
    except ValueError as exc:
        raise _fail(f"--at {at!r} is not a time; valid: ISO 8601, e.g. 2024-05-01T03:00") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=rules.timezone)


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
) -> None:
    """Every route with matched / not matched and why. Exit 0 routed, 3 unrouted."""
    settings = settings_or_exit(config)
    try:
        rules = routing_rules(settings)
    except RadbridgeError as exc:
        raise _fail(f"{config}: {exc}", 2) from exc
    path = Path(target)
    if path.exists():
        try:
            studies, skipped = studies_from_path(path)
        except DicomError as exc:
            raise _fail(f"{path}: {exc}") from exc
        if not studies:
            raise _fail(f"{path}: no DICOM Part 10 files ({skipped} other files skipped)")
    elif _UID.fullmatch(target):
        studies = [_study_from_store(settings, target)]
    else:
        raise _fail(f"{target}: no such file or folder, and not a Study Instance UID")
    now = _when(at, rules)
    rows: list[dict[str, Any]] = []
    texts: list[str] = []
    routed_all = True
    for study, tags in studies:
        decision, explanations = explain(rules, study, None, now, tags=tags)
        routed_all = routed_all and decision.outcome in (Outcome.ROUTED, Outcome.WAITING)
        rows += to_json(study.study_uid, explanations, decision)
        texts.append(to_text(study, explanations, decision))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo("\n\n".join(texts))
    if not routed_all:
        raise typer.Exit(EXIT_UNROUTED)


if __name__ == "__main__":
    app()
