"""``radbridge backup DIR`` and ``radbridge restore DIR``: the store, the configuration file
and a manifest of the spool, copied while the service runs and restored into a fresh one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker.cli.common import ConfigOption, err, out, settings_or_exit
from broker.model.errors import RadbridgeError
from broker.store.audit import Action, AuditLog, cli_actor
from broker.store.backup import backup, check_spool, restore
from broker.store.engine import make_engine
from broker.store.migrate import migrate
from broker.store.spool import Spool
from config.loader import config_path

FolderArgument = Annotated[Path, typer.Argument(help="The backup folder.")]


def _audit(url: str, action: str, detail: dict[str, str], upgrade: bool = False) -> None:
    """One audit row in the store at ``url`` (brought to this version's schema first when
    ``upgrade``: a restored backup may be older)."""
    engine = make_engine(url)
    try:
        if upgrade:
            migrate(engine)
        AuditLog(engine).record(cli_actor(), action, "store", detail)
    finally:
        engine.dispose()


def backup_command(
    folder: Annotated[Path, typer.Argument(help="A new or empty folder for the backup.")],
    config: ConfigOption = None,
    checksums: Annotated[
        bool, typer.Option("--sha256/--sizes-only", help="SHA-256 of every spool file.")
    ] = True,
) -> None:
    """Back up the store (online, consistent), the configuration file and a manifest of
    the spool (the spool's files are left to the hospital's backup tool)."""
    settings = settings_or_exit(config)
    try:
        manifest = backup(
            settings.database_url(),
            settings.storage.spool,
            config_path(config),
            folder,
            checksums=checksums,
        )
        _audit(
            settings.database_url(),
            Action.STORE_BACKUP,
            {"folder": str(folder), "revision": manifest["schema_revision"]},
        )
    except RadbridgeError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from exc
    out.print(
        f"backed up the store (revision {manifest['schema_revision']}) to {folder}; spool "
        f"manifest: {len(manifest['spool_files'])} files, {manifest['spool_bytes']} bytes",
        highlight=False,
        markup=False,
    )


def restore_command(
    folder: FolderArgument,
    config: ConfigOption = None,
    spool: Annotated[
        Path | None,
        typer.Option(help="A copy of the backed-up spool to copy the manifest's files from."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a store that is not empty.")] = (
        False
    ),
) -> None:
    """Restore a backup into the configuration's store (no service may be running on it),
    bring it to this version's schema, and check the spool's files against the manifest."""
    settings = settings_or_exit(config)
    try:
        Spool(settings.storage.spool).lock()  # no service may be running on this spool
        manifest = restore(folder, settings.database_url(), settings.storage.spool, force=force)
        _audit(
            settings.database_url(),
            Action.STORE_RESTORE,
            {"folder": str(folder), "backed_up_at": manifest["created_at"]},
            upgrade=True,
        )
    except RadbridgeError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from exc
    problems = check_spool(manifest, settings.storage.spool, spool)
    for problem in problems:
        err.print(problem, markup=False, highlight=False)
    out.print(
        f"restored the store of {manifest['created_at']} (revision "
        f"{manifest['schema_revision']}); spool: {len(manifest['spool_files']) - len(problems)}"
        f" of {len(manifest['spool_files'])} files in place",
        highlight=False,
        markup=False,
    )
    if problems:
        raise typer.Exit(3)
