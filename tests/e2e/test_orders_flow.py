"""End to end: a RIS (python ``hl7``'s MLLP client) sends orders, a modality (dcmtk
``storescu``) sends studies, ``radbridge serve`` correlates them and routes with the
order — order first, study first, no order in time, a cancelled order, a patient
mismatch — on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import hl7
import pydicom
import pytest
from hl7.client import MLLPClient

from adapters.dicom.synthetic import generate_study
from broker.model.domain import OrderPriority, OrderStatus, Patient
from tests.databases import fresh_postgres_database
from tests.hl7_messages import orm_o01, sample_order
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = pytest.mark.timeout(180)

PATIENT = Patient("PAT0001", None, "DOE^JANE", "19700101", "F")
"""The patient of ``generate_study``'s studies."""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """``None`` for the embedded SQLite store, or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_postgres_database() as url:
        yield url


def _config(folder: Path, vendor_port: int, database: str | None, **route: Any) -> dict[str, Any]:
    config = base_config(folder, free_port())
    if database:
        config["storage"]["database"] = database
    config["hl7"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
    config["vendors"] = {
        "lungai": {
            "product": "CT lung nodule",
            "transport": {
                "type": "dicom",
                "ae_title": "LUNGAI",
                "host": "127.0.0.1",
                "port": vendor_port,
            },
        }
    }
    config["routes"] = [
        {
            "name": "stat-chest-ct",
            "when": {"modality": "CT", "order.priority": "STAT"},
            "send": ["lungai"],
            **route,
        }
    ]
    return config


def _send(rb: Radbridge, message: str) -> hl7.Message:
    """Send one message as the RIS does; the parsed ACK."""
    port = int(rb.config["hl7"]["listen"]["port"])
    with MLLPClient("127.0.0.1", port) as client:
        ack = client.send_message(message)
    return hl7.parse(ack.decode() if isinstance(ack, bytes) else ack)


def _study(folder: Path, accession: str) -> list[Path]:
    return generate_study("ct_chest", folder, instances=4, rows=32, columns=32, accession=accession)


def _show(rb: Radbridge, files: list[Path]) -> dict[str, Any]:
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    shown: dict[str, Any] = json.loads(rb.cli("studies", "show", uid, "--json").stdout)
    return shown


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    wait_until(predicate, "condition", timeout, interval=0.1)


def _events(rb: Radbridge, name: str) -> list[dict[str, Any]]:
    return [line for line in rb.log_lines() if line.get("event") == name]


def test_order_then_study_routes_with_the_order_and_shows_it(
    radbridge_factory: Callable[..., Radbridge], database: str | None, tmp_path: Path
) -> None:
    """An ORM^O01 acknowledged AA, then the study: it is routed on the order's STAT priority
    and `studies show` names the order's placer and filler numbers, procedure and priority."""
    order = sample_order(1, patient=PATIENT, priority=OrderPriority.STAT, study_uid=None)
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as vendor:
        rb = radbridge_factory(config=_config(tmp_path / "rb", vendor.port, database))
        ack = _send(rb, orm_o01(order))
        assert str(ack.segment("MSA")[1]) == "AA"
        files = _study(tmp_path / "ct", order.accession_number or "")
        storescu(files, rb.port)
        _wait(lambda: len(vendor.files()) == len(files))
    shown = _show(rb, files)
    assert shown["order_link"]["state"] == "linked"
    assert shown["order_link"]["matched_on"] == "accession"
    linked = shown["order"]
    assert (linked["placer_number"], linked["filler_number"]) == ("PL000001", "FL000001")
    assert (linked["procedure_code"], linked["priority"]) == ("CT-CHEST", "STAT")
    text = rb.cli("studies", "show", shown["study_uid"]).stdout
    assert "PL000001 / FL000001" in text and "CT-CHEST" in text and "STAT" in text


def test_study_waits_for_its_order_and_goes_when_it_comes(
    radbridge_factory: Callable[..., Radbridge], database: str | None, tmp_path: Path
) -> None:
    """With `require_order`, a study that came first waits; its order releases it at once."""
    order = sample_order(2, patient=PATIENT, priority=OrderPriority.STAT, study_uid=None)
    route = {"require_order": {"wait": "10m", "then": "skip"}}
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as vendor:
        rb = radbridge_factory(config=_config(tmp_path / "rb", vendor.port, database, **route))
        files = _study(tmp_path / "ct", order.accession_number or "")
        storescu(files, rb.port)
        _wait(lambda: bool(_events(rb, "study waits for its order")))
        time.sleep(1.0)
        assert vendor.files() == []
        sent_at = time.monotonic()
        assert str(_send(rb, orm_o01(order)).segment("MSA")[1]) == "AA"
        _wait(lambda: len(vendor.files()) == len(files))
        assert time.monotonic() - sent_at < 5.0
    assert _show(rb, files)["order"]["accession_number"] == order.accession_number


def test_no_order_in_time_routes_on_images_or_skips(
    radbridge_factory: Callable[..., Radbridge], tmp_path: Path
) -> None:
    """After the wait, `route_on_images` sends without an order and `skip` does not."""
    with (
        StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as on_images,
        StoreSCP(tmp_path / "other", ae_title="OTHERAI") as skipping,
    ):
        config = _config(
            tmp_path / "rb",
            on_images.port,
            None,
            require_order={"wait": "2s", "then": "route_on_images"},
        )
        config["vendors"]["otherai"] = {
            "product": "CT other",
            "transport": {
                "type": "dicom",
                "ae_title": "OTHERAI",
                "host": "127.0.0.1",
                "port": skipping.port,
            },
        }
        config["routes"].append(
            {
                "name": "needs-an-order",
                "when": {"modality": "CT"},
                "send": ["otherai"],
                "require_order": {"wait": "2s", "then": "skip"},
            }
        )
        rb = radbridge_factory(config=config)
        files = _study(tmp_path / "ct", "ACC-NO-ORDER")
        storescu(files, rb.port)
        _wait(lambda: len(on_images.files()) == len(files), timeout=20)
        time.sleep(1.0)
        assert skipping.files() == []
    jobs = json.loads(rb.cli("jobs", "list", "--json").stdout)
    assert [(j["vendor"], j["route"]) for j in jobs] == [("lungai", "stat-chest-ct")]


def test_cancelled_order_and_patient_mismatch_are_not_routed(
    radbridge_factory: Callable[..., Radbridge], tmp_path: Path
) -> None:
    """A study whose order was cancelled is not routed; an order for another patient is
    flagged on the study, not linked, and the study is not routed on it."""
    cancelled = sample_order(3, patient=PATIENT, priority=OrderPriority.STAT, study_uid=None)
    other_patient = sample_order(
        4, patient=Patient("PAT9999", None, "ROE^RICHARD"), priority=OrderPriority.STAT
    )
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as vendor:
        rb = radbridge_factory(config=_config(tmp_path / "rb", vendor.port, None))
        assert str(_send(rb, orm_o01(cancelled)).segment("MSA")[1]) == "AA"
        ack = _send(rb, orm_o01(replace(cancelled, status=OrderStatus.CANCELLED), control="CA"))
        assert str(ack.segment("MSA")[1]) == "AA"
        assert str(_send(rb, orm_o01(other_patient)).segment("MSA")[1]) == "AA"
        first = _study(tmp_path / "ct3", cancelled.accession_number or "")
        second = _study(tmp_path / "ct4", other_patient.accession_number or "")
        storescu(first + second, rb.port)
        _wait(lambda: len(_events(rb, "study stable")) == 2)
        _wait(lambda: bool(_events(rb, "study not routed: its order is cancelled")))
        time.sleep(1.0)
        assert vendor.files() == []
    flagged = _show(rb, second)
    assert flagged["order"] is None
    assert flagged["order_link"]["state"] == "patient_mismatch"
    assert "flagged for an operator" in rb.cli("studies", "show", flagged["study_uid"]).stdout
    assert _show(rb, first)["order"]["status"] == "cancelled"
