"""Languages and local times: the zh_CN catalogue is complete, times carry the site offset."""

from __future__ import annotations

import enum
import functools
import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from adapters.console.words import WORDS
from broker import i18n
from broker.model import completion, critical, domain, jobs, timeline, writeback
from routing import evaluate

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _extracted() -> frozenset[str]:
    """Every msgid Babel extracts with the project's ``babel.cfg`` (templates and sources)."""
    found: set[str] = set()
    with (ROOT / "babel.cfg").open() as mapping:
        method_map, options_map = parse_mapping_cfg(mapping)
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
    for _file, _line, message, _comments, _context in extract_from_dir(
        ROOT, method_map, options_map, keywords=keywords
    ):
        found.add(message[0] if isinstance(message, tuple) else message)
    return frozenset(found)


def test_every_extracted_message_has_a_zh_cn_translation() -> None:
    """Each msgid the extraction finds is in zh_CN's .po, translated, and not fuzzy."""
    extracted = _extracted()
    assert len(extracted) > 200  # the extraction saw the templates and the sources
    path = i18n.LOCALES / "zh_CN" / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"
    with path.open("rb") as po:
        catalog = read_po(po)
    translated = {
        (m.id[0] if isinstance(m.id, tuple) else m.id)
        for m in catalog
        if m.id and not m.fuzzy and all(m.string if isinstance(m.string, tuple) else [m.string])
    }
    missing = sorted(extracted - translated)
    assert not missing, f"untranslated in zh_CN: {missing}"


def test_placeholders_survive_translation() -> None:
    """A translation keeps every %(name)s and {name} placeholder of its msgid."""
    pattern = re.compile(r"%\(\w+\)[sd]|\{\w+\}")
    tr = i18n.translations("zh_CN")
    for message in _extracted():
        assert sorted(pattern.findall(tr.gettext(message))) == sorted(pattern.findall(message))


def test_every_coded_value_the_console_shows_is_marked() -> None:
    """Job, delivery, study, result, link states, roles and route statuses are all in WORDS."""
    coded: list[type[enum.Enum]] = [
        jobs.JobState,
        writeback.DeliveryState,
        domain.StudyState,
        domain.ResultState,
        domain.LinkState,
        domain.Role,
        evaluate.RouteStatus,
        evaluate.Outcome,
        critical.CaseState,
        critical.StepKind,
        critical.AckVia,
        timeline.StampKind,
        completion.Completion,
    ]
    values = {str(member.value) for kind in coded for member in kind}
    assert values - set(WORDS) == set()


def test_local_time_has_the_site_offset() -> None:
    """A UTC time is shown in the site's timezone with its offset; naive means UTC."""
    moment = datetime(2026, 12, 6, 4, 30, 5, 123456, tzinfo=UTC)
    shanghai = ZoneInfo("Asia/Shanghai")
    assert i18n.local_time(moment, shanghai) == "2026-12-06 12:30:05 +08:00"
    assert i18n.local_time(moment.replace(tzinfo=None), shanghai) == "2026-12-06 12:30:05 +08:00"
    assert i18n.local_time(moment, ZoneInfo("UTC"), ms=True) == "2026-12-06 04:30:05.123 +00:00"
    assert i18n.local_time(moment, ZoneInfo("America/St_Johns")).endswith(" -03:30")
    assert i18n.local_time(None, shanghai) == ""


def test_accept_language_and_cli_language() -> None:
    """Accept-Language picks the best supported language; the CLI's env beats the site's."""
    assert i18n.from_accept_language("zh-CN,zh;q=0.9,en;q=0.8") == "zh_CN"
    assert i18n.from_accept_language("en-US,zh-CN;q=0.5") == "en"
    assert i18n.from_accept_language("fr-FR, zh;q=0.3") == "zh_CN"
    assert i18n.from_accept_language("fr", default="zh_CN") == "zh_CN"
    assert i18n.from_accept_language("zh-CN;q=0, en;q=0.1") == "en"
    assert i18n.from_accept_language(None) == "en"
    assert i18n.cli_language("en", {"RADBRIDGE_LANG": "zh_CN"}) == "zh_CN"
    assert i18n.cli_language("zh_CN", {"RADBRIDGE_LANG": "en", "LANG": "zh_CN.UTF-8"}) == "en"
    assert i18n.cli_language("en", {"LANG": "zh_CN.UTF-8"}) == "zh_CN"
    assert i18n.cli_language("zh_CN", {"LANG": "C.UTF-8"}) == "zh_CN"
    assert i18n.cli_language("zh_CN", {"LANG": "en_US.UTF-8"}) == "zh_CN"
    assert i18n.translations("en").gettext("Dashboard") == "Dashboard"
    assert i18n.translations("zh_CN").gettext("Dashboard") == "仪表盘"
