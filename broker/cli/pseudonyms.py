"""``radbridge pseudonyms``: what a de-identified value stands for, and what a study was sent
as (for a vendor's support call that names a pseudonymous study). Each look-up is audited
(``pseudonym.lookup``): it leads back to a patient."""

from __future__ import annotations

import json
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
    store_engine,
)
from broker.model.deid import Pseudonym
from broker.model.errors import RadbridgeError
from broker.store.audit import Action, AuditLog, cli_actor
from broker.store.pseudonyms import PseudonymStore

app = typer.Typer(
    help="Pseudonyms of de-identified studies: what they stand for (audited).",
    no_args_is_help=True,
)


def _show(found: list[Pseudonym], config: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(p) for p in found], indent=2))
        return
    _ = cli_locale(config).gettext
    table = Table(_("kind"), _("pseudonym"), _("original"), _("study"))
    for p in found:
        table.add_row(p.kind.value, p.pseudonym, p.original, p.study_uid)
    out.print(table)


def _lookup(config: Any, target: str, find: Any) -> list[Pseudonym]:
    """``find(store)`` under an audit row naming ``target``; errors end the command."""
    try:
        engine = store_engine(config)
        found: list[Pseudonym] = find(PseudonymStore(engine))
        AuditLog(engine).record(cli_actor(), Action.PSEUDONYM_LOOKUP, target, {"found": len(found)})
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(1) from exc
    return found


@app.command("show")
def show(
    values: Annotated[list[str], typer.Argument(help="Pseudonyms (UIDs, patient IDs, …).")],
    *,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """What each pseudonym stands for; exit 1 when none was issued by radbridge."""
    found = _lookup(
        config,
        "pseudonym:" + ",".join(values)[:200],
        lambda store: list(store.lookup(values).values()),
    )
    if not found:
        err.print("radbridge issued none of these pseudonyms", highlight=False)
        raise typer.Exit(1)
    _show(found, config, as_json)


@app.command("study")
def study(
    study_uid: Annotated[str, typer.Argument(help="The original Study Instance UID.")],
    *,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every pseudonym issued for a study: what de-identifying vendors were sent as."""
    found = _lookup(config, f"study:{study_uid}", lambda store: store.of_study(study_uid))
    _show(found, config, as_json)
