"""End to end: a route on any DICOM attribute (``tag.InstitutionName``) fires in ``radbridge
serve`` as in ``routes explain``; the vendor's storescp receives the study."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = pytest.mark.timeout(240)


def _institution(files: list[Path], name: str, station: str) -> None:
    for path in files:
        ds = pydicom.dcmread(path)
        ds.InstitutionName = name
        ds.StationName = station
        ds.save_as(path)


def _config(folder: Path, vendor_port: int) -> dict[str, Any]:
    config = base_config(folder, free_port())
    config["vendors"] = {
        "northai": {
            "product": "North campus triage",
            "transport": {
                "type": "dicom",
                "ae_title": "NORTHAI",
                "host": "127.0.0.1",
                "port": vendor_port,
            },
        },
        "otherai": {
            "product": "Never used",
            "transport": {"type": "dicom", "ae_title": "OTHERAI", "host": "127.0.0.1", "port": 9},
        },
    }
    config["routes"] = [
        {
            "name": "north-campus",
            "when": {"tag.InstitutionName": "North Campus", "tag.StationName": {"regex": "^NC"}},
            "send": ["northai"],
        },
        {
            "name": "south-campus",
            "when": {"tag.InstitutionName": "South Campus", "tag.Manufacturer": {"exists": False}},
            "send": ["otherai"],
        },
    ]
    return config


def _wait(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    wait_until(predicate, "condition", timeout, interval=0.2)


def _explain(rb: Radbridge, target: str | Path) -> subprocess.CompletedProcess[str]:
    return rb.cli("routes", "explain", str(target), "--json", check=False)


def test_an_institution_name_route_fires_in_serve_and_the_vendor_gets_the_study(
    radbridge_factory: Callable[..., Radbridge], tmp_path: Path
) -> None:
    """tag.InstitutionName + tag.StationName: the North Campus CT reaches the vendor's storescp,
    the South Campus MR goes nowhere; explain of the files and of the stored study agree."""
    north = generate_study("ct_chest", tmp_path / "north", instances=6, rows=32, columns=32)
    south = generate_study("mr_brain", tmp_path / "south", instances=2, rows=32, columns=32)
    _institution(north, "North Campus", "NC-CT1")
    _institution(south, "South Campus", "SC-MR1")
    with StoreSCP(tmp_path / "northai", ae_title="NORTHAI") as vendor:
        rb = radbridge_factory(config=_config(tmp_path / "rb", vendor.port))
        files = _explain(rb, tmp_path / "north")
        assert files.returncode == 0, files.stderr
        assert {r["route"]: r["status"] for r in json.loads(files.stdout)} == {
            "north-campus": "fired",
            "south-campus": "not_matched",
        }
        storescu(north, rb.port)
        storescu(south, rb.port)
        _wait(lambda: len(vendor.files()) >= len(north))
        sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in north}
        received = {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in vendor.files()
        }
        assert received == sent
        north_uid = str(pydicom.dcmread(north[0], stop_before_pixels=True).StudyInstanceUID)
        south_uid = str(pydicom.dcmread(south[0], stop_before_pixels=True).StudyInstanceUID)
        jobs = json.loads(rb.cli("jobs", "list", "--json").stdout)
        assert [(j["study_uid"], j["vendor"], j["route"]) for j in jobs] == [
            (north_uid, "northai", "north-campus")
        ]
        rb.wait_state(south_uid, "stable")
        stored = _explain(rb, north_uid)
        assert stored.returncode == 0, stored.stderr
        north_row = {r["route"]: r for r in json.loads(stored.stdout)}["north-campus"]
        assert north_row["status"] == "matched"
        assert [j["vendor"] for j in north_row["jobs"]] == ["northai"]
        unrouted = _explain(rb, south_uid)
        assert unrouted.returncode == 3
        south_row = {r["route"]: r for r in json.loads(unrouted.stdout)}["south-campus"]
        assert south_row["status"] == "not_matched"
        assert south_row["reason"].startswith("tag.Manufacturer: ")
