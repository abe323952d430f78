"""``radbridge backup DIR`` and ``radbridge restore DIR``: the store, the configuration file
and a manifest of the spool, copied while the service runs and restored into a fresh one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker.cli.common import ConfigOption, err, out, settings_or_exit
from broker.model.errors import RadbridgeError
from broker.store.backup import backup, check_spool, restore
from config.loader import config_path

FolderArgument = Annotated[Path, typer.Argument(help="The backup folder.")]


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
    """Restore a backup into the configuration's store (which no service may be using) and
    check the spool's files against the manifest; the service migrates it at its start."""
    settings = settings_or_exit(config)
    try:
        manifest = restore(folder, settings.database_url(), settings.storage.spool, force=force)
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
