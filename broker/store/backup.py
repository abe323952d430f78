"""Online backup and restore of a radbridge store, with a manifest of its spool.

A backup folder holds the store (``store.sqlite``, made with SQLite's online backup
API, or ``store.pgdump``, ``pg_dump``'s custom format), a copy of the configuration
file and ``manifest.json``: when, from which store and spool, the schema revision,
and every spool file it keeps with its size (and SHA-256): the studies' and the
results' objects, the canary studies, and the renderings of results kept for
write-back retries (a retry after a restore sends the same bytes): the folders
:attr:`~broker.store.spool.Spool.kept` names. The spool's files themselves are left to
the hospital's backup tool. The store is copied first and the spool listed after it,
so every file of those folders the copied store refers to is in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import StoreError
from broker.store.engine import make_engine, writing
from broker.store.spool import Spool, fsync_dir

MANIFEST = "manifest.json"
SQLITE_COPY = "store.sqlite"
PG_DUMP = "store.pgdump"
#: Tables whose ``path`` column names a file in the spool.
_PATH_TABLES = ("instances", "result_objects")


@dataclass(frozen=True)
class SpoolFile:
    """One file of the spool, relative to its root."""

    path: str
    size: int
    sha256: str | None


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A URL ``pg_dump`` and ``pg_restore`` understand, and the environment with its password."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _schema_option(url: str) -> list[str]:
    """``pg_dump``'s ``--schema`` when the URL sets a ``search_path`` (a store kept in a
    schema of its own), so that only the store is dumped, not the whole database."""
    options = make_url(url).query.get("options", "")
    for option in options if isinstance(options, tuple) else (options,):
        if "search_path=" in option:
            return ["--schema", option.split("search_path=", 1)[1].split(",")[0].strip()]
    return []


def _run(command: list[str], env: dict[str, str]) -> None:
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise StoreError(f"cannot run {command[0]}: {exc.strerror}") from exc
    if done.returncode != 0:
        raise StoreError(f"{command[0]} failed: {done.stderr.strip()[-2000:]}")


def _revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the store at {engine.url!r}: {exc}") from exc


def spool_files(root: Path, checksums: bool = True) -> Iterator[SpoolFile]:
    """Every file under the spool's kept folders (:attr:`~broker.store.spool.Spool.kept`),
    in name order; not those of a folder whose name starts with a dot (renderings or a
    canary study still being made), nor one that retention removed while the spool was
    listed."""
    for folder in Spool(root).kept:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            try:
                with path.open("rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    digest = hashlib.file_digest(f, "sha256").hexdigest() if checksums else None
            except FileNotFoundError:
                continue
            yield SpoolFile(str(relative), size, digest)


def backup(
    url: str, spool: Path, config: Path | None, folder: Path, checksums: bool = True
) -> dict[str, Any]:
    """Back up a running store into ``folder`` (empty or new); the manifest it wrote."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise StoreError(f"the backup folder {folder} is not empty; valid: a new or empty folder")
    engine = make_engine(url)
    try:
        revision = _revision(engine)
    finally:
        engine.dispose()
    if _is_sqlite(url):
        source_path = make_url(url).database or ""
        try:
            with (
                closing(sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)) as source,
                closing(sqlite3.connect(folder / SQLITE_COPY)) as copy,
            ):
                source.backup(copy)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot back up {source_path}: {exc}") from exc
        store = SQLITE_COPY
    else:
        dump_url, env = _libpq(url)
        command = ["pg_dump", "--format=custom", "--no-owner", "-f", str(folder / PG_DUMP)]
        _run([*command, *_schema_option(url), dump_url], env)
        store = PG_DUMP
    if config is not None:
        shutil.copy2(config, folder / config.name)
    files = list(spool_files(spool, checksums))
    manifest = {
        "created_at": datetime.now(UTC).isoformat(),
        "store": store,
        "database": "sqlite" if _is_sqlite(url) else "postgresql",
        "schema_revision": revision,
        "config": config.name if config is not None else None,
        "spool_root": str(spool),
        "spool_files": [f.__dict__ for f in files],
        "spool_bytes": sum(f.size for f in files),
    }
    _write_synced(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    fsync_dir(folder)
    return manifest


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{folder} is not a radbridge backup: cannot read {MANIFEST}") from exc
    return manifest


def check_spool(manifest: dict[str, Any], root: Path, source: Path | None = None) -> list[str]:
    """Copy the manifest's files from ``source`` into ``root`` (when given), then list those
    missing from ``root`` or differing from the manifest."""
    problems = []
    for entry in manifest["spool_files"]:
        target = root / entry["path"]
        if source is not None and (source / entry["path"]).is_file():
            _make_folders(root, target.parent)
            shutil.copy2(source / entry["path"], target)
            with target.open("rb") as f:
                os.fsync(f.fileno())
        if not target.is_file():
            problems.append(f"missing: {entry['path']}")
        elif target.stat().st_size != entry["size"]:
            problems.append(f"size differs: {entry['path']}")
        elif entry.get("sha256"):
            with target.open("rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != entry["sha256"]:
                    problems.append(f"content differs: {entry['path']}")
    return problems


def _make_folders(root: Path, folder: Path) -> None:
    """Make ``folder`` under the spool ``root`` and its missing parents; those under
    ``rendered`` private (mode 0700), as the write-back makes them."""
    rendered = Spool(root).rendered
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        private = made.is_relative_to(rendered) and made != rendered
        made.mkdir(mode=0o700 if private else 0o777, exist_ok=True)


def _holds_data(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            return bool(inspect(conn).get_table_names())
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the store at {engine.url!r}: {exc}") from exc


def restore(folder: Path, url: str, spool: Path, force: bool = False) -> dict[str, Any]:
    """Restore the backup in ``folder`` into the store at ``url`` (refusing one that holds
    tables unless ``force``), its spool paths moved to ``spool``; the manifest."""
    manifest = read_manifest(folder)
    if (manifest["database"] == "sqlite") != _is_sqlite(url):
        raise StoreError(
            f"the backup holds a {manifest['database']} store; valid: restore it into one"
        )
    engine = make_engine(url)
    try:
        if _holds_data(engine) and not force:
            raise StoreError(
                f"the store at {engine.url!r} is not empty; restore into a fresh one, "
                "or add --force to replace it"
            )
        engine.dispose()
        if _is_sqlite(url):
            try:
                with (
                    closing(sqlite3.connect(folder / manifest["store"])) as copy,
                    closing(sqlite3.connect(make_url(url).database or "")) as target,
                ):
                    copy.backup(target)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot restore into {url}: {exc}") from exc
        else:
            restore_url, env = _libpq(url)
            command = ["pg_restore", "--no-owner", "--exit-on-error", "-d", restore_url]
            command += ["--clean", "--if-exists"] if force else []
            _run([*command, str(folder / manifest["store"])], env)
        _move_spool_paths(engine, manifest["spool_root"], str(spool))
    finally:
        engine.dispose()
    return manifest


def _move_spool_paths(engine: Engine, old: str, new: str) -> None:
    """Point the store's file paths under the backed-up spool root to the new one."""
    if old == new:
        return
    prefix = old.rstrip("/") + "/"
    try:
        with writing(engine) as conn:
            for table in _PATH_TABLES:
                conn.execute(
                    text(
                        f"UPDATE {table} SET path = :new || substr(path, :cut) "  # noqa: S608
                        "WHERE substr(path, 1, :length) = :old"
                    ),
                    {
                        "new": new.rstrip("/") + "/",
                        "cut": len(prefix) + 1,
                        "length": len(prefix),
                        "old": prefix,
                    },
                )
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot move the spool paths in the restored store: {exc}") from exc
