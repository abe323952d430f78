"""What ``radbridge jobs`` and ``radbridge deliveries`` share: one engine, one way to show it.

Both list work items of the job engine and show one with its history: every
transition with its time, attempt, error, the worker that took the step and
the configuration snapshot it used.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Protocol

import typer
from rich.table import Table
from sqlalchemy import Engine

from broker.cli.common import CliLocale, err, out, plain
from broker.model.errors import NotFoundError, RadbridgeError
from broker.store.audit import AuditLog, cli_actor


class Event(Protocol):
    """A history row of a job or a delivery."""

    @property
    def at(self) -> datetime: ...

    @property
    def from_state(self) -> StrEnum | None: ...

    @property
    def to_state(self) -> StrEnum: ...

    @property
    def attempt(self) -> int: ...

    @property
    def error(self) -> str | None: ...

    @property
    def worker(self) -> str | None: ...

    @property
    def snapshot(self) -> str | None: ...


BeforeOption = Annotated[
    int | None,
    typer.Option("--before", help="Only items older than this id (the next page of a list)."),
]


def more_pages(items: list[Any], limit: int, local: CliLocale) -> None:
    """Say how to see the next (older) page when ``items`` filled the page."""
    if items and len(items) >= limit:
        hint = local.gettext("newest {limit} shown; older ones: --before {id}")
        err.print(hint.format(limit=limit, id=items[-1].id), highlight=False)


def as_json(item: Any, history: list[Any] | None = None) -> dict[str, Any]:
    """An item (a dataclass) as JSON, with its history if given."""
    fields: dict[str, Any] = plain(asdict(item))
    data = {"id": fields.pop("id"), "state": fields.pop("state"), **fields}
    if history is not None:
        data["history"] = plain([asdict(e) for e in history])
    return data


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def claim_line(item: Any, local: CliLocale) -> str | None:
    """``claimed by WORKER until TIME`` while an attempt holds the item."""
    if getattr(item, "claimed_by", None) is None:
        return None
    until = item.lease_until
    return f"claimed by {item.claimed_by}" + (f" until {local.time(until)}" if until else "")


def print_history(history: list[Any], local: CliLocale) -> None:
    """The history as a table: time, from, to, attempt, worker, snapshot, error."""
    _ = local.gettext
    table = Table(_("at"), _("from"), _("to"), _("attempt"), _("worker"), _("snapshot"), _("error"))
    for e in history:
        table.add_row(
            local.time(e.at, ms=True),
            str(e.from_state or ""),
            str(e.to_state),
            str(e.attempt),
            e.worker or "",
            e.snapshot or "",
            e.error or "",
        )
    out.print(table)


def show(store: Any, local: CliLocale, item_id: int, json_out: bool, describe: Any) -> None:
    """One item and its history: JSON, or ``describe(item)``'s lines, the claim and the
    last error, then the history table. An unknown id is printed and exits 1."""
    try:
        item = store.get(item_id)
    except NotFoundError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    history = store.history(item_id)
    if json_out:
        print_json(as_json(item, history))
        return
    lines = [*describe(item), claim_line(item, local)]
    if item.last_error:
        lines.append(local.gettext("last error: {error}").format(error=item.last_error))
    for line in lines:
        if line:
            out.print(line, highlight=False, markup=False)
    print_history(history, local)


def audited(engine: Engine, action: str, target: str, act: Any, detail: Any) -> Any:
    """Run an operator's action; on success record it in the audit trail as ``cli:USER``.

    ``act()`` returns ``(before, after)``; ``detail(before, after)`` the audit
    detail. A refusal (not found, wrong state) is printed and exits 1.
    """
    try:
        before, after = act()
    except RadbridgeError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from exc
    AuditLog(engine).record(cli_actor(), action, target, detail(before, after))
    return after
