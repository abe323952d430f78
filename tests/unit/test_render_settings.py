"""The ``render`` settings of write-back targets: what each type can carry, what ``originals:
false`` needs, the site's language as the default, and a clear error without a Chinese font."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.results.render import fonts
from broker.model.errors import ConfigError
from broker.model.target import TARGETS
from broker.runtime.snapshot import target_specs
from config.schema import Settings
from tests.peers import ensure_cjk_font

PACS = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}
RIS = {"host": "127.0.0.1", "port": 2575}


@pytest.fixture(autouse=True)
def _font() -> None:
    ensure_cjk_font()


def test_a_dicom_target_takes_every_rendering_and_a_document_target_only_the_pdf() -> None:
    """dicom and dicomweb accept all four renderings; hl7 and fhir refuse anything but pdf,
    naming what is valid."""
    every = ["sc_summary", "kos", "seg_overlay", "pdf"]
    TARGETS.get("dicom").from_params("pacs", {**PACS, "render": every})
    TARGETS.get("dicomweb").from_params(
        "web", {"url": "http://127.0.0.1/dicom-web", "render": every}
    )
    TARGETS.get("hl7").from_params("ris", {"host": "127.0.0.1", "port": 2575, "render": ["pdf"]})
    with pytest.raises(ConfigError, match=r"targets\.ris\.render: .*cannot carry kos; valid: pdf"):
        TARGETS.get("hl7").from_params(
            "ris", {"host": "127.0.0.1", "port": 2575, "render": ["kos"]}
        )
    with pytest.raises(ConfigError, match="cannot carry sc_summary; valid: pdf"):
        TARGETS.get("fhir").from_params(
            "emr", {"url": "http://127.0.0.1/fhir", "render": ["sc_summary"]}
        )
    with pytest.raises(ConfigError, match="Input should be 'sc_summary', 'kos', 'seg_overlay'"):
        TARGETS.get("dicom").from_params("pacs", {**PACS, "render": ["sc_summary2"]})


def test_originals_false_needs_a_rendering_and_a_rendering_is_listed_once() -> None:
    """``originals: false`` alone would store nothing, and a rendering listed twice is a typo:
    both are configuration errors."""
    with pytest.raises(ConfigError, match="originals: false needs at least one rendering"):
        TARGETS.get("dicom").from_params("pacs", {**PACS, "originals": False})
    with pytest.raises(ConfigError, match="listed twice"):
        TARGETS.get("dicom").from_params("pacs", {**PACS, "render": ["kos", "kos"]})
    TARGETS.get("dicom").from_params("pacs", {**PACS, "originals": False, "render": ["kos"]})


def test_pages_speak_the_site_language_unless_the_target_says_its_own() -> None:
    """A rendering target without ``language`` gets ``site.language``; one with its own keeps it;
    a target that cannot render gets no language."""
    settings = Settings.model_validate(
        {
            "site": {"language": "zh_CN"},
            "targets": {
                "pacs": {"type": "dicom", **PACS, "render": ["sc_summary"]},
                "pacs_en": {"type": "dicom", **PACS, "render": ["pdf"], "language": "en"},
                "hook": {"type": "webhook", "url": "http://127.0.0.1/hook"},
            },
        }
    )
    specs = target_specs(settings)
    assert specs["pacs"].params["language"] == "zh_CN"
    assert specs["pacs_en"].params["language"] == "en"
    assert "language" not in specs["hook"].params


def test_without_a_chinese_font_rendering_is_a_configuration_error_naming_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no known font installed, a target that renders pages fails to load with the
    Debian package to install; kos and seg_overlay need no font."""
    monkeypatch.setattr(fonts, "KNOWN_FONTS", ((tmp_path / "none.ttc", "fonts-wqy-microhei"),))
    fonts.cjk_font.cache_clear()
    try:
        with pytest.raises(ConfigError, match="apt-get install fonts-wqy-microhei"):
            TARGETS.get("dicom").from_params("pacs", {**PACS, "render": ["sc_summary"]})
        TARGETS.get("dicom").from_params("pacs", {**PACS, "render": ["kos", "seg_overlay"]})
    finally:
        fonts.cjk_font.cache_clear()
