"""Languages and local times: what the console and the CLI show people.

Messages are Babel catalogues: ``locale/<lang>/LC_MESSAGES/radbridge.po`` in
this package (extracted with ``pybabel extract -F babel.cfg``), compiled into
a ``.mo`` in memory on first use, so a fresh clone, the wheel and the offline
bundle need no build step. English is the source language: ``en`` has no
catalogue. :func:`local_time` is the one way a time is shown: in the site's
timezone, with its offset.
"""

from __future__ import annotations

import functools
import gettext
import io
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.core import negotiate_locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALES = Path(__file__).parent / "locale"
DOMAIN = "radbridge"
DEFAULT = "en"
#: The languages radbridge speaks (``site.language``, a console user's choice).
LANGUAGES: tuple[str, ...] = ("en", "zh_CN")
#: How each language names itself (the console's language menu).
NAMES: Mapping[str, str] = {"en": "English", "zh_CN": "简体中文"}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def N_(message: str) -> str:  # noqa: N802 (the name Babel's extractor looks for)
    """Mark ``message`` for the catalogue; it is translated where it is shown."""
    return message


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalogue of ``language`` (compiled from its ``.po``); English passes through."""
    path = LOCALES / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if language == DEFAULT or language not in LANGUAGES or not path.is_file():
        return gettext.NullTranslations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=language, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def supported(value: str | None) -> str | None:
    """The language of radbridge that ``value`` names (``zh-CN``, ``zh_CN.UTF-8``, ``en_US``)."""
    if not value:
        return None
    tag = value.split(".")[0].split("@")[0].replace("-", "_").strip()
    if not tag or tag in ("C", "POSIX"):
        return None
    found = negotiate_locale([tag], list(LANGUAGES))
    if found is None:  # ``zh``, ``en_GB``: the first language of that family
        family = tag.split("_")[0].lower()
        found = next((lang for lang in LANGUAGES if lang.split("_")[0] == family), None)
    return found


def from_accept_language(header: str | None, default: str = DEFAULT) -> str:
    """The best of :data:`LANGUAGES` for an HTTP ``Accept-Language`` header, else ``default``."""
    weighted = []
    for index, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and tag != "*" and quality > 0:
            weighted.append((-quality, index, tag))
    for _quality, _index, tag in sorted(weighted):
        found = supported(tag)
        if found is not None:
            return found
    return default


def cli_language(site_language: str, environ: Mapping[str, str] | None = None) -> str:
    """The CLI's language: ``RADBRIDGE_LANG``, else ``LANG`` when it names a language of
    radbridge other than English, else ``site.language``."""
    env = os.environ if environ is None else environ
    chosen = supported(env.get("RADBRIDGE_LANG"))
    if chosen is not None:
        return chosen
    from_lang = supported(env.get("LANG"))
    if from_lang is not None and from_lang != DEFAULT:
        return from_lang
    return site_language


def local_time(
    value: datetime | None, tz: ZoneInfo, fmt: str = TIME_FORMAT, *, ms: bool = False
) -> str:
    """``2026-12-06 12:30:05 +08:00``: ``value`` in the site's timezone with its offset
    (``ms``: ``12:30:05.123``).

    A naive ``value`` is taken as UTC (the store keeps UTC). ``None`` is ``""``.
    """
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    local = value.astimezone(tz)
    offset = local.strftime("%z")
    shown = local.strftime(fmt) + (f".{local.microsecond // 1000:03d}" if ms else "")
    return f"{shown} {offset[:3]}:{offset[3:]}"
