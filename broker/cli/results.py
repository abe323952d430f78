"""``radbridge results``: list, show, and the orphans (objects that matched no job)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli.common import (
    ConfigOption,
    JsonOption,
    cli_locale,
    err,
    out,
    plain,
    settings_or_exit,
)
from broker.model.domain import Result
from broker.model.errors import NotFoundError
from broker.runtime.snapshot import result_policies
from broker.store import make_engine
from broker.store.migrate import migrate
from broker.store.results import ResultStore

app = typer.Typer(help="Results returned by AI vendors.", no_args_is_help=True)


def _results(config: Any) -> ResultStore:
    settings = settings_or_exit(config)
    engine = make_engine(settings.database_url())
    migrate(engine)
    return ResultStore(engine, result_policies(settings))


def _result_json(result: Result) -> dict[str, Any]:
    data: dict[str, Any] = plain(asdict(result))
    data["orphan"] = result.job_id is None
    return data


def _table(results: list[Result], _: Callable[[str], str]) -> Table:
    table = Table(
        _("id"),
        _("job"),
        _("vendor"),
        _("state"),
        _("urgent"),
        _("objects"),
        _("findings"),
        _("study UID"),
    )
    for r in results:
        table.add_row(
            str(r.id),
            str(r.job_id) if r.job_id is not None else _("orphan"),
            r.vendor or "",
            r.state.value,
            _("URGENT") if r.urgent else "",
            str(len(r.objects)) + (f"/{r.expected_objects}" if r.expected_objects else ""),
            str(len(r.findings.findings)) if r.findings else "",
            r.study_uid,
        )
    return table


@app.command("list")
def list_results(
    config: ConfigOption = None,
    study: Annotated[str | None, typer.Option("--study", help="Only this study UID.")] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
) -> None:
    """Results, newest first, with their objects and findings counts."""
    results = _results(config).list(study_uid=study, limit=limit)
    if as_json:
        print(json.dumps([_result_json(r) for r in results], indent=2))
        return
    out.print(_table(results, cli_locale(config).gettext))


@app.command("show")
def show_result(
    result_id: Annotated[int, typer.Argument(help="Result id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One result: its objects (spool paths), findings, and why and when it completed."""
    store = _results(config)
    try:
        result = store.get(result_id)
        detail = store.detail(result_id)
    except NotFoundError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps({**_result_json(result), **plain(detail)}, indent=2))
        return
    local = cli_locale(config)
    out.print(_table([result], local.gettext))
    completed = local.time(result.completed_at) if result.completed_at else "-"
    out.print(
        f"completed: {completed} ({detail['complete_reason'] or 'collecting'}); "
        f"sender AE: {detail['calling_ae'] or '-'}",
        highlight=False,
    )
    if detail["error"]:
        out.print(f"error: {detail['error']}", highlight=False, markup=False)
    objects = Table("SOP Instance UID", "SOP class", "origin", "received", "size", "path")
    for o in result.objects:
        objects.add_row(
            o.sop_instance_uid,
            o.sop_class_uid,
            o.origin.value,
            str(detail["receive_counts"].get(o.sop_instance_uid, 1)),
            str(o.size),
            o.path,
        )
    out.print(objects)
    if result.findings:
        for f in result.findings.findings:
            out.print(
                f"{'URGENT ' if f.urgent else ''}{f.code.meaning}: "
                f"{'present' if f.present else 'absent'}"
                + (f" (score {f.score:g})" if f.score is not None else ""),
                highlight=False,
                markup=False,
            )


@app.command("orphans")
def list_orphans(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Result objects that matched no job: kept in the spool, listed here, never dropped."""
    results = _results(config).orphans()
    if as_json:
        print(json.dumps([_result_json(r) for r in results], indent=2))
        return
    out.print(_table(results, cli_locale(config).gettext))
