"""`radbridge routes explain` on synthetic DICOM studies: what fires, what does not, and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.study import group_by_study, study_from_records
from adapters.dicom.synthetic import generate_study
from broker.store import StudyStore, make_engine
from broker.store.migrate import migrate
from routing.facts import study_tags

CONFIG = """\
site: {name: Test General Hospital, timezone: Asia/Shanghai}
storage: {spool: ./spool, database: "sqlite:///./radbridge.db"}
vendors:
  lungai:
    product: CT lung nodule
    transport: {type: dicom, ae_title: LUNGAI, host: 127.0.0.1, port: 11113}
  ichai:
    product: Head CT bleed triage
    transport: {type: dicom, ae_title: ICHAI, host: 127.0.0.1, port: 11114}
targets:
  pacs: {type: dicom, ae_title: PACS, host: 127.0.0.1, port: 11115}
routes:
  - name: chest-ct-lung-nodule
    when:
      modality: CT
      body_part: {in: [CHEST, LUNG]}
      series.slice_thickness: {lte: 2.5}
    send: [lungai]
    series: thinnest_axial
    write_back: [pacs]
  - name: head-ct-thin
    when: {modality: CT, body_part: HEAD, series.slice_thickness: {lte: 2}}
    send: [ichai]
    priority: stat
    deadline: 5m
"""


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small synthetic studies, one folder each: chest CT 1 mm, head CT 5 mm, brain MR."""
    root = tmp_path_factory.mktemp("studies")
    folders = {}
    for kind in ("ct_chest", "ct_head", "mr_brain"):
        folders[kind] = root / kind
        generate_study(kind, folders[kind], instances=3, rows=32, columns=32)
    return folders


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The test configuration: a lung nodule route and a thin head CT route."""
    path = tmp_path / "radbridge.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def explain(config: Path, target: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``routes explain`` in a real process (``python -m broker.cli.routes``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADBRIDGE_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli.routes",
            "explain",
            "-c",
            str(config),
            str(target),
            *args,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _by_route(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["route"]: row for row in rows}


def test_chest_ct_with_thin_slices_fires_the_lung_nodule_route(
    config: Path, studies: dict[str, Path]
) -> None:
    """A 1 mm chest CT folder goes to the lung nodule vendor (exit 0); the head route says why."""
    result = explain(config, studies["ct_chest"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  fired        chest-ct-lung-nodule" in lines
    assert any("-> lungai: 1 series (thinnest_axial), priority routine" in ln for ln in lines)
    assert "  not matched  head-ct-thin          body_part: wanted HEAD, got CHEST" in lines
    assert lines[-1] == "Outcome: routed to lungai (1 delivery)"


def test_brain_mr_is_unrouted_with_the_reason_in_text_and_json(
    config: Path, studies: dict[str, Path]
) -> None:
    """A brain MR matches no route: exit 3, `modality: wanted CT, got MR` in text and JSON."""
    text = explain(config, studies["mr_brain"])
    assert text.returncode == 3, text.stderr
    assert "  not matched  chest-ct-lung-nodule  modality: wanted CT, got MR" in text.stdout
    assert text.stdout.rstrip().endswith(
        "Outcome: unrouted: closest route 'chest-ct-lung-nodule': modality: wanted CT, got MR"
    )
    as_json = explain(config, studies["mr_brain"], "--json")
    assert as_json.returncode == 3
    rows = json.loads(as_json.stdout)
    assert isinstance(rows, list)
    lung = _by_route(rows)["chest-ct-lung-nodule"]
    assert lung["status"] == "not_matched"
    assert lung["matched"] is False
    assert lung["reason"] == "modality: wanted CT, got MR"
    assert lung["failed"] == {"condition": "modality", "wanted": "CT", "got": "MR"}
    assert lung["closest"] is True
    assert {row["outcome"] for row in rows} == {"unrouted"}


def test_thick_head_ct_names_the_thinnest_series(config: Path, studies: dict[str, Path]) -> None:
    """A 5 mm head CT fails the thin-slice route with the thinnest series' value."""
    result = explain(config, studies["ct_head"], "--json")
    assert result.returncode == 3
    head = _by_route(json.loads(result.stdout))["head-ct-thin"]
    assert head["reason"] == "series.slice_thickness: wanted <= 2, got 5.0 (thinnest series)"


def test_json_lists_what_a_fired_route_sends(config: Path, studies: dict[str, Path]) -> None:
    """The JSON object of a fired route carries vendor, series UIDs, priority and write-back."""
    result = explain(config, studies["ct_chest"], "--json")
    assert result.returncode == 0
    lung = _by_route(json.loads(result.stdout))["chest-ct-lung-nodule"]
    assert lung["status"] == "fired"
    (dispatch,) = lung["dispatches"]
    record = instance_record_from_spooled_file(next(studies["ct_chest"].rglob("*.dcm")))
    assert dispatch == {
        "vendor": "lungai",
        "series_uids": [record.series_uid],
        "priority": "routine",
        "deadline_seconds": None,
        "stable_seconds": None,
        "write_back": ["pacs"],
    }


def test_a_single_dicom_file_is_enough(config: Path, studies: dict[str, Path]) -> None:
    """PATH may be one DICOM file."""
    one = sorted(studies["ct_chest"].rglob("*.dcm"))[0]
    result = explain(config, one)
    assert result.returncode == 0, result.stderr
    assert "1 series, 1 instances" in result.stdout


def test_a_study_in_the_store_is_explained_by_its_uid(
    config: Path, studies: dict[str, Path], tmp_path: Path
) -> None:
    """STUDY_UID reads the study from the configured store."""
    engine = make_engine(f"sqlite:///{tmp_path / 'radbridge.db'}")
    migrate(engine)
    store = StudyStore(engine)
    records = [instance_record_from_spooled_file(p) for p in studies["ct_chest"].rglob("*.dcm")]
    for record in records:
        store.record_instance(record, stable_seconds=1)
    store.close_stable(datetime.now(UTC) + timedelta(minutes=1))
    engine.dispose()
    result = explain(config, records[0].study_uid)
    assert result.returncode == 0, result.stderr
    assert "  fired        chest-ct-lung-nodule" in result.stdout.splitlines()


def test_time_of_day_routes_follow_at_in_the_site_timezone(
    tmp_path: Path, studies: dict[str, Path]
) -> None:
    """--at without an offset is site time: a night-only route fires at 03:00, not at 15:00."""
    path = tmp_path / "night.yaml"
    path.write_text(
        CONFIG.replace("series.slice_thickness: {lte: 2.5}", "time.hour: {lt: 6}"),
        encoding="utf-8",
    )
    assert explain(path, studies["ct_chest"], "--at", "2024-05-01T03:00").returncode == 0
    day = explain(path, studies["ct_chest"], "--at", "2024-05-01T15:00")
    assert day.returncode == 3
    assert "time.hour: wanted < 6, got 15" in day.stdout


def test_bad_targets_and_configurations_exit_non_zero(tmp_path: Path, config: Path) -> None:
    """No such path: 1; a folder without DICOM: 1; an invalid configuration: 2 with FILE:LINE."""
    missing = explain(config, tmp_path / "nowhere")
    assert missing.returncode == 1
    assert "no such file or folder, and not a Study Instance UID" in missing.stderr
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not DICOM", encoding="utf-8")
    empty = explain(config, junk)
    assert empty.returncode == 1
    assert "no DICOM Part 10 files (1 other files skipped)" in empty.stderr
    text = CONFIG.replace("send: [ichai]", "send: [icahi]")
    config.write_text(text, encoding="utf-8")
    broken = explain(config, junk)
    assert broken.returncode == 2
    line = text[: text.index("icahi")].count("\n") + 1
    assert f"{config}:{line}: routes.1.send.0: unknown vendor 'icahi'" in broken.stderr


def test_study_from_records_assembles_series_and_tags(studies: dict[str, Path]) -> None:
    """Records of a 4-series MR become one study with ordered series and keyword tags, no names."""
    records = [instance_record_from_spooled_file(p) for p in studies["mr_brain"].rglob("*.dcm")]
    (group,) = group_by_study(records).values()
    study, tags = study_from_records(group)
    assert [s.series_number for s in study.series] == [1, 2, 3, 4]
    assert [s.instance_count for s in study.series] == [3, 3, 3, 3]
    assert study.modalities == ("MR",)
    assert study.instance_count == 12
    assert study.series[3].contrast_agent == "Gadobutrol 1.0 mmol/ml"
    assert tags["InstitutionName"] == "Example General Hospital"
    assert tags["Modality"] == "MR"
    assert "PatientName" not in tags
    assert set(study_tags(study)) <= set(tags)
