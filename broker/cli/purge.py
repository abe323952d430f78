"""``radbridge purge [--dry-run]``: remove now what ``retention.*`` lets go (the service
does the same every ``retention.interval``), or list it with how many bytes it frees."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from broker.cli.common import ConfigOption, JsonOption, out, settings_or_exit
from broker.model.logging import configure_logging
from broker.runtime.retention import configured, cutoffs
from broker.store import make_engine
from broker.store.audit import cli_actor
from broker.store.migrate import migrate
from broker.store.retention import Retention
from broker.store.spool import Spool


def purge_command(
    config: ConfigOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go and its bytes; remove nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Purge studies, result objects, job history and messages past their retention
    (retention.* in the configuration); every purged study and object is audited."""
    settings = settings_or_exit(config)
    logging = settings.logging  # log lines to standard error or the log file, never stdout
    configure_logging(logging.level, logging.format, logging.phi, file=logging.log_file())
    engine = make_engine(settings.database_url())
    migrate(engine)
    retention = Retention(engine, Spool(settings.storage.spool, settings.node.id))
    when = cutoffs(settings.retention, datetime.now(UTC))
    found = retention.plan(when) if dry_run else retention.purge(when, actor=cli_actor())
    if as_json:
        items = [
            {"kind": i.kind, "target": i.target, "count": i.count, "bytes": i.bytes}
            for i in found.items
        ]
        print(json.dumps({"dry_run": dry_run, "bytes": found.bytes, "items": items}, indent=2))
        return
    if not configured(settings.retention):
        out.print("nothing is purged: no retention.* duration is configured", highlight=False)
        return
    table = Table("what", "target", "count", "bytes")
    for i in found.items:
        table.add_row(i.kind, i.target, str(i.count), str(i.bytes))
    out.print(table)
    verb = "would free" if dry_run else "freed"
    out.print(f"{len(found.items)} items; {verb} {found.bytes} bytes of spool", highlight=False)
