"""`radbridge routes explain` on synthetic DICOM studies: what fires, what does not, and why."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.study import group_by_study, study_from_records
from adapters.dicom.synthetic import generate_study
from broker.model.domain import (
    InboundMessage,
    Order,
    OrderPriority,
    OrderSource,
    OrderStatus,
    Patient,
)
from broker.model.jobs import JobState
from broker.store import StudyStore, make_engine
from broker.store.jobs import JobStore
from broker.store.migrate import migrate
from broker.store.orders import OrderStore
from routing.facts import study_tags
from tests import cli_fork
from tests.fhir_data import service_request, transaction, typed
from tests.hl7_messages import adt, omi_o23, orm_o01, sample_order

pytestmark = pytest.mark.xdist_group("routes_explain")

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
    """Run ``radbridge routes explain`` in a process of its own (tests.cli_fork)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADBRIDGE_")}
    args = ("explain", "-c", str(config), str(target), *args)
    return cli_fork.run(["routes", *args], env=env, timeout=120)


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
        "mode": "live",
        "shadow": None,
        "contract": None,
        "contract_state": None,
        "charge": None,
        "alert": None,
        "instead_of": None,
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


# ------------------------------------------- a stored study with its order and jobs

ORDER_ROUTES = """\
  - name: chest-ct-with-order
    when: {modality: CT, body_part: CHEST, order.priority: stat}
    send: [lungai]
    require_order: {wait: 1h, then: skip}
  - name: ct-to-ich
    when: {modality: CT}
    send: [ichai]
"""
PATIENT = Patient("PAT0001", "EXAMPLE-GH", "DOE^JANE", "19700101", "F")


def _order_config(tmp_path: Path, routes: str = ORDER_ROUTES) -> Path:
    path = tmp_path / "radbridge.yaml"
    path.write_text(CONFIG[: CONFIG.index("routes:\n")] + "routes:\n" + routes, encoding="utf-8")
    return path


def _order(**changes: Any) -> Order:
    values: dict[str, Any] = {
        "accession_number": "ACC0001",
        "patient": PATIENT,
        "priority": OrderPriority.STAT,
        "study_uid": None,
    }
    values.update(changes)
    return sample_order(1, **values)


def _store_study(tmp_path: Path, folder: Path) -> tuple[Engine, str]:
    """Index a study's files into the configured store and close it, as the listener does."""
    engine = make_engine(f"sqlite:///{tmp_path / 'radbridge.db'}")
    migrate(engine)
    store = StudyStore(engine)
    for path in sorted(folder.rglob("*.dcm")):
        store.record_instance(instance_record_from_spooled_file(path), stable_seconds=1)
    (uid,) = store.close_stable(datetime.now(UTC) + timedelta(minutes=1))
    return engine, uid


def _record_order(engine: Engine, order: Order) -> None:
    raw = orm_o01(order).encode()
    OrderStore(engine).record_order(order, InboundMessage(OrderSource.HL7, "ORM^O01", raw))


def test_a_stored_study_is_explained_with_its_order_and_its_jobs(
    tmp_path: Path, studies: dict[str, Path]
) -> None:
    """A routed study with a STAT order: the order is used (no 'waiting for an order'); a job
    that reached its vendor is 'already delivered', a dead one 'not delivered'; exit 0."""
    config = _order_config(tmp_path)
    engine, uid = _store_study(tmp_path, studies["ct_chest"])
    _record_order(engine, _order())
    jobs = JobStore(engine)
    done = jobs.create(uid, "lungai", route="chest-ct-with-order").job
    jobs.claim(done.id)
    jobs.finish(done.id, [JobState.SENT, JobState.AWAITING_RESULT])
    dead = jobs.create(uid, "ichai", route="ct-to-ich").job
    jobs.claim(dead.id)
    jobs.finish(dead.id, JobState.DEAD, error="association rejected")
    engine.dispose()

    result = explain(config, uid)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Order: accession ACC0001, hl7, scheduled, priority STAT, procedure CT-CHEST, " in (
        lines[1] + ", "
    )
    assert f"  job {done.id} lungai (route 'chest-ct-with-order'): awaiting_result, delivered" in (
        lines
    )
    assert f"  job {dead.id} ichai (route 'ct-to-ich'): dead, not delivered to the vendor" in lines
    assert "waiting for an order" not in result.stdout
    assert "  matched      chest-ct-with-order" in lines
    assert (
        f"note: lungai: already delivered (job {done.id}, route 'chest-ct-with-order', "
        "awaiting_result); resend_updates is false" in result.stdout
    )
    assert (
        f"note: ichai: a job exists (job {dead.id}, route 'ct-to-ich', dead), not delivered to "
        "the vendor; it is not created again (resend_updates is false)" in result.stdout
    )
    assert "ichai: already delivered" not in result.stdout
    assert lines[-1] == (
        "Outcome: nothing new to send: every matching vendor has its job already "
        "(1 delivered, 1 not delivered to the vendor)"
    )
    rows = {r["route"]: r for r in json.loads(explain(config, uid, "--json").stdout)}
    assert rows["ct-to-ich"]["jobs"] == [
        {"id": dead.id, "vendor": "ichai", "state": "dead", "delivered": False, "priors": None}
    ]
    assert rows["chest-ct-with-order"]["jobs"][0]["delivered"] is True
    assert rows["chest-ct-with-order"]["order"]["priority"] == "STAT"
    assert {r["outcome"] for r in rows.values()} == {"nothing_new"}


def test_a_cancelled_order_stops_routing_and_explain_says_so(
    tmp_path: Path, studies: dict[str, Path]
) -> None:
    """The study's order is cancelled: 'not routed: its order is cancelled', nothing fires,
    exit 3 — what the service does."""
    config = _order_config(tmp_path)
    engine, uid = _store_study(tmp_path, studies["ct_chest"])
    _record_order(engine, _order(status=OrderStatus.CANCELLED))
    engine.dispose()
    result = explain(config, uid, "--json")
    assert result.returncode == 3, result.stderr
    rows = json.loads(result.stdout)
    assert {r["outcome"] for r in rows} == {"not_routed"}
    assert not any(r["fired"] or r["dispatches"] for r in rows)
    text = explain(config, uid)
    assert text.stdout.splitlines()[-1] == "Outcome: not routed: its order is cancelled"


def test_an_order_of_another_patient_is_named_but_not_used(
    tmp_path: Path, studies: dict[str, Path]
) -> None:
    """An order with the study's accession but another patient is flagged, not used: the
    route that needs an order waits for one, as in the service."""
    config = _order_config(tmp_path)
    engine, uid = _store_study(tmp_path, studies["ct_chest"])
    _record_order(engine, _order(patient=replace(PATIENT, patient_id="PAT9999")))
    engine.dispose()
    result = explain(config, uid)
    assert result.returncode == 0, result.stderr
    assert "Order: none" in result.stdout.splitlines()
    assert "but the patient ID differs" in result.stdout
    assert "flagged for an operator, not used for routing" in result.stdout
    assert "  waiting      chest-ct-with-order" in result.stdout.splitlines()


# ------------------------------------------------------- options for explaining files


def test_files_are_explained_as_sent_by_the_calling_ae_to_the_called_ae(
    tmp_path: Path, studies: dict[str, Path]
) -> None:
    """--calling-ae / --called-ae feed calling_ae and called_ae conditions (files carry none)."""
    config = _order_config(
        tmp_path,
        "  - name: from-ct01\n    when: {calling_ae: CT01, called_ae: RB_CT}\n    send: [lungai]\n",
    )
    without = explain(config, studies["ct_chest"])
    assert without.returncode == 3
    assert "calling_ae: wanted CT01, got nothing" in without.stdout
    given = explain(
        config, studies["ct_chest"], "--calling-ae", "CT01", "--called-ae", "RB_CT", "--json"
    )
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)[0]["status"] == "fired"


@pytest.mark.parametrize("kind", ["orm", "omi", "fhir", "fhir-bundle", "stored"])
def test_files_are_explained_with_the_order_given(
    tmp_path: Path, studies: dict[str, Path], kind: str
) -> None:
    """--order FILE (HL7 ORM^O01 / OMI^O23, FHIR ServiceRequest or Bundle) or --order
    ACCESSION (an order in the store): the STAT order makes the order route fire."""
    config = _order_config(tmp_path)
    order = _order()
    if kind == "stored":
        engine = make_engine(f"sqlite:///{tmp_path / 'radbridge.db'}")
        migrate(engine)
        _record_order(engine, order)
        engine.dispose()
        given = "ACC0001"
    else:
        path = tmp_path / f"order.{kind}"
        if kind == "orm":
            path.write_bytes(b"\x0b" + orm_o01(order).encode() + b"\x1c\r")
        elif kind == "omi":
            path.write_text(omi_o23(order).replace("\r", "\n"), encoding="utf-8")
        else:
            resource = service_request("ACC0001", contained=[_fhir_patient()])
            data = resource if kind == "fhir" else transaction("transaction", resource)
            if kind == "fhir-bundle":
                data["entry"][0]["resource"] = _fhir_patient()
            path.write_text(json.dumps(data), encoding="utf-8")
        given = str(path)
    if kind == "orm":
        waiting = explain(config, studies["ct_chest"])
        assert "  waiting      chest-ct-with-order" in waiting.stdout.splitlines()
    result = explain(config, studies["ct_chest"], "--order", given)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("Order: accession ACC0001, ")
    assert "  fired        chest-ct-with-order" in lines


def _fhir_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p",
        "identifier": [typed("MR", "PAT0001", system="EXAMPLE-GH")],
    }


def test_an_order_given_for_files_is_used_only_if_the_service_would_link_it(
    tmp_path: Path, studies: dict[str, Path]
) -> None:
    """An order of another accession, or of another patient, is named and left out."""
    config = _order_config(tmp_path)
    other = tmp_path / "other.hl7"
    other.write_text(orm_o01(_order(accession_number="ACC9999")), encoding="utf-8")
    result = explain(config, studies["ct_chest"], "--order", str(other))
    assert "the order given (accession ACC9999) would not be linked" in result.stdout
    assert "  waiting      chest-ct-with-order" in result.stdout.splitlines()
    stranger = tmp_path / "stranger.hl7"
    stranger.write_text(
        orm_o01(_order(patient=replace(PATIENT, patient_id="PAT9999"))), encoding="utf-8"
    )
    result = explain(config, studies["ct_chest"], "--order", str(stranger))
    assert "the order given matches on accession_number but the patient ID differs" in (
        result.stdout
    )
    assert "  waiting      chest-ct-with-order" in result.stdout.splitlines()


def test_bad_orders_and_options_are_refused_with_what_would_be_valid(
    tmp_path: Path, studies: dict[str, Path]
) -> None:
    """Unknown accession, a file that is no order, an ADT message, a bad AE title, and
    options meant for files given with a Study Instance UID."""
    config = _order_config(tmp_path)
    engine = make_engine(f"sqlite:///{tmp_path / 'radbridge.db'}")
    migrate(engine)
    engine.dispose()
    unknown = explain(config, studies["ct_chest"], "--order", "NOPE")
    assert unknown.returncode == 1
    assert "no order with id, resource id or accession number 'NOPE'" in unknown.stderr
    assert "valid: the accession number of an order radbridge holds" in unknown.stderr
    junk = tmp_path / "junk.txt"
    junk.write_text("hello", encoding="utf-8")
    refused = explain(config, studies["ct_chest"], "--order", str(junk))
    assert refused.returncode == 1
    assert "neither an HL7 v2 message nor FHIR JSON" in refused.stderr
    adt_file = tmp_path / "adt.hl7"
    adt_file.write_text(adt("A08", PATIENT), encoding="utf-8")
    not_order = explain(config, studies["ct_chest"], "--order", str(adt_file))
    assert not_order.returncode == 1
    assert "not an order; valid: ORM^O01 or OMI^O23" in not_order.stderr
    long_ae = explain(config, studies["ct_chest"], "--calling-ae", "A" * 17)
    assert long_ae.returncode == 2
    assert "valid: 1 to 16 printable characters" in long_ae.stderr
    for_files = explain(config, "1.2.3.4", "--order", "ACC0001")
    assert for_files.returncode == 2
    assert "--order: for DICOM files only" in for_files.stderr
