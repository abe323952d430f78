"""A site radbridge forwards a study to a hub radbridge over the site-to-hub link, across an
unreliable network, and gets the AI result back to its own PACS.

Two ``radbridge serve`` processes: the site (a CT sends with ``storescu``; its vendor
``hub`` has ``transport: {type: radbridge}``; its PACS is a dcmtk ``storescp``) and the
hub (site ``township-a``; its AI product is the harness vendor, an SR by C-STORE; its
route writes back to ``site.pacs``, which for this site is the site radbridge's results
AE title). Between them a loopback TCP proxy (:class:`tests.link.CuttingProxy`) delays
every chunk and cuts the first three connections mid-study: this machine has network
namespaces but no ``sch_netem`` kernel module, so ``tc netem`` cannot run and the proxy
is the bad network.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from adapters.harness.products import ProductKind
from adapters.harness.vendor import ResultsTarget, SimulatedVendor
from adapters.link.parts import StudyStream
from adapters.results.sr import read_source_study
from broker.store.engine import make_engine
from broker.store.transfers import TransferStore
from tests.link import CuttingProxy
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config, dicom_block

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("site_link")]
CUTS = 3


@dataclass
class World:
    hub: Radbridge
    hub_http: str
    hub_token: str
    """The site's token at the hub (operator, township-a)."""
    site: Radbridge
    site_http: str
    site_token: str
    site_pacs: StoreSCP
    proxy: CuttingProxy
    study_uid: str
    instances: int

    def api(self, base: str, token: str, path: str, **params: Any) -> Any:
        answer = httpx.get(
            f"{base}/api/v1{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


def _hub_config(folder: Path, port: int, http_port: int, vendor_port: int) -> dict[str, Any]:
    config = base_config(folder, port)
    # short, so that the timer's purge of abandoned transfers is seen (checked every second)
    config["http"] = {
        "listen": {"host": "127.0.0.1", "port": http_port},
        "transfers": {"abandon_after": "6s"},
    }
    config["sites"] = {"township-a": {"name": "Township A Health Centre", "timezone": "UTC"}}
    config["vendors"] = {
        "lungai": {
            "product": "CT lung nodule",
            "transport": dicom_block("LUNGAI", vendor_port),
            "results": {"quiet_seconds": 0.3},
        }
    }
    config["routes"] = [
        {"name": "chest-ct", "when": {"modality": "CT"}, "send": ["lungai"]}
        | {"write_back": ["site.pacs"]}
    ]
    config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The hub and the site running; the site's CT sends a 6-instance chest CT; the fixture
    waits until the site's own PACS holds the hub's SR."""
    folder = tmp_path_factory.mktemp("site-link")
    hub_port, hub_http, site_port, site_http = (free_port() for _ in range(4))
    hub_vendor_port = free_port()
    with (
        StoreSCP(folder / "site-pacs", ae_title="SITE_PACS") as site_pacs,
        SimulatedVendor(
            ProductKind.LUNG_NODULE_CT,
            folder / "vendor",
            ae_title="LUNGAI",
            port=hub_vendor_port,
            delay=0.1,
            target=ResultsTarget(ae_title="RADBRIDGE_RES", port=hub_port),
        ),
        CuttingProxy(hub_http, cut_after=12_000, cuts=CUTS, delay=0.002) as proxy,
    ):
        hub_config = _hub_config(folder / "hub", hub_port, hub_http, hub_vendor_port)
        hub_config["sites"]["township-a"]["targets"] = {
            # the site radbridge's results AE title: results go back by C-STORE
            "pacs": dicom_block("RADBRIDGE_RES", site_port, calling_ae="HUB")
        }
        hub = Radbridge(folder / "hub", hub_config).start()
        site: Radbridge | None = None
        try:
            link_token = hub.cli(
                "tokens", "create", "--role", "operator", "--site", "township-a"
            ).stdout.strip()
            site_config = base_config(folder / "site", site_port)
            site_config["http"] = {"listen": {"host": "127.0.0.1", "port": site_http}}
            site_config["vendors"] = {
                "hub": {
                    "product": "Regional platform AI",
                    "transport": {
                        "type": "radbridge",
                        "url": f"http://127.0.0.1:{proxy.port}",
                        "part_bytes": "32KiB",
                        "timeout": 10,
                    },
                    "retries": 8,
                    "results": {"ae_titles": ["HUB"], "quiet_seconds": 0.3},
                }
            }
            site_config["targets"] = {"pacs": dicom_block("SITE_PACS", site_pacs.port)}
            site_config["routes"] = [
                {"name": "to-hub", "when": {"modality": "CT"}, "send": ["hub"]}
                | {"write_back": ["pacs"]}
            ]
            site_config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
            site = Radbridge(folder / "site", site_config)
            site.env["RADBRIDGE_VENDORS__HUB__TRANSPORT__TOKEN"] = link_token
            site.start()
            site_token = site.cli("tokens", "create", "--role", "admin").stdout.strip()
            files = generate_study("ct_chest", folder / "ct", instances=6, rows=128, columns=128)
            study_uid = read_source_study(files).study_uid
            storescu(files, site.port, calling_ae="SITEA_CT")
            world = World(
                hub,
                f"http://127.0.0.1:{hub_http}",
                link_token,
                site,
                f"http://127.0.0.1:{site_http}",
                site_token,
                site_pacs,
                proxy,
                study_uid,
                len(files),
            )
            wait_until(
                lambda: any(_modality(p) == "SR" for p in site_pacs.files()),
                "the hub's SR at the site's PACS",
                150,
                interval=0.3,
            )
            yield world
        finally:
            if site is not None:
                site.close()
            hub.close()


def _modality(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", ""))


def test_cut_link_leaves_the_hub_the_whole_study_once(world: World) -> None:
    """After cuts mid-study (three connections armed) the hub holds the study whole (all its
    instances), attributed to township-a; the site's job history shows one
    failed attempt per cut, each naming it, then the send."""
    assert world.proxy.cut >= 2
    held = world.api(world.hub_http, world.hub_token, f"/studies/{world.study_uid}")
    assert held["site"] == "township-a"
    assert held["instances"] == world.instances
    jobs = world.api(world.site_http, world.site_token, "/jobs", study_uid=world.study_uid)
    (job,) = jobs["items"]
    shown = world.api(world.site_http, world.site_token, f"/jobs/{job['id']}")
    steps = [(e["to_state"], e.get("error") or "") for e in shown["history"]]
    failed = [error for state, error in steps if state == "failed"]
    assert len(failed) == world.proxy.cut, steps
    assert all("LinkUnavailableError" in error for error in failed), failed
    assert job["attempts"] == world.proxy.cut + 1
    assert "sent" in [state for state, _ in steps]


def test_the_result_comes_back_to_the_sites_pacs(world: World) -> None:
    """The hub's AI result (an SR of the site's study) reached the site radbridge by
    C-STORE to its results AE title and was written back to the site's own PACS; the site's
    job is done."""
    srs = [p for p in world.site_pacs.files() if _modality(p) == "SR"]
    assert srs
    assert {str(pydicom.dcmread(p).StudyInstanceUID) for p in srs} == {world.study_uid}
    jobs = world.api(world.site_http, world.site_token, "/jobs", study_uid=world.study_uid)
    wait_until(
        lambda: (
            world.api(world.site_http, world.site_token, f"/jobs/{jobs['items'][0]['id']}")["state"]
            == "done"
        ),
        "the site's job done",
        30,
        interval=0.3,
    )


def test_the_hubs_timer_purges_an_abandoned_transfer(world: World, tmp_path: Path) -> None:
    """A transfer the site opened and sent one part of, then left (no part for longer than
    ``abandon_after``), is purged by the hub's timer with no other transfer opening: its
    state says purged and its staged parts are gone."""
    files = generate_study("ct_chest", tmp_path / "left", instances=3, rows=64, columns=64)
    stream = StudyStream(read_source_study(files).study_uid, files, part_bytes=16384)
    manifest = stream.manifest()
    api = f"{world.hub_http}/link/v1/transfers"
    auth = {"Authorization": f"Bearer {world.hub_token}"}
    opened = httpx.post(api, json={"manifest": manifest.model_dump(mode="json")}, headers=auth)
    assert opened.status_code == 201, opened.text
    transfer = opened.json()["id"]
    digest = base64.b64encode(bytes.fromhex(manifest.parts[0].sha256)).decode()
    put = httpx.put(
        f"{api}/{transfer}/parts/0",
        content=stream.part(0),
        headers=auth | {"Content-Digest": f"sha-256=:{digest}:"},
    )
    assert put.status_code == 204, put.text
    staged = Path(world.hub.config["storage"]["spool"]) / "transfers" / transfer
    assert any(staged.iterdir())
    engine = make_engine(str(world.hub.config["storage"]["database"]))
    try:  # a day without a part
        TransferStore(engine).touch(transfer, now=datetime.now(UTC) - timedelta(days=1))
    finally:
        engine.dispose()
    wait_until(
        lambda: httpx.get(f"{api}/{transfer}", headers=auth).json()["state"] == "purged",
        "the hub's timer purged the abandoned transfer",
        20,
        interval=0.2,
    )
    assert not staged.exists()
