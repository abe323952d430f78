"""What every ``radbridge`` sub-command shares: options, consoles, loading settings."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from sqlalchemy import Engine

from broker import i18n
from broker.model.errors import ConfigError
from broker.store import make_engine
from broker.store.migrate import migrate
from config.loader import load_settings
from config.schema import Settings

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "-c",
        "--config",
        envvar="RADBRIDGE_CONFIG",
        help="Configuration file (YAML).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# Piped output keeps long lines (UIDs, FILE:LINE problems) whole instead of
# wrapping them at rich's default 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, soft_wrap=True)


def settings_or_exit(config: Path | None) -> Settings:
    """The validated settings, or every problem on stderr and exit code 2."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False)
        raise typer.Exit(2) from exc


def store_engine(config: Path | None) -> Engine:
    """The configuration's store, migrated to the newest schema (or exit 2, as above)."""
    engine = make_engine(settings_or_exit(config).database_url())
    migrate(engine)
    return engine


@dataclass(frozen=True, slots=True)
class CliLocale:
    """The CLI's language (:func:`broker.i18n.cli_language`) and the site's clock."""

    language: str
    tz: ZoneInfo

    @property
    def gettext(self) -> Callable[[str], str]:
        return i18n.translations(self.language).gettext

    def time(self, value: datetime | None, *, ms: bool = False) -> str:
        """``value`` in the site's timezone with its offset (:func:`broker.i18n.local_time`)."""
        return i18n.local_time(value, self.tz, ms=ms)


@functools.cache
def cli_locale(config: Path | None) -> CliLocale:
    """The locale of the configuration's site (``site.language``, ``site.timezone``)."""
    site = settings_or_exit(config).site
    return CliLocale(i18n.cli_language(site.language), ZoneInfo(site.timezone))


def plain(value: Any) -> Any:
    """A value made of dataclass fields (``asdict``) as JSON can hold it: ISO times, enum values."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
