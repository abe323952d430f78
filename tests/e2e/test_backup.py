"""``radbridge backup`` of a running service and ``radbridge restore`` into a fresh folder.

The service is driven through its real interfaces (an HL7 order over MLLP, a study by
``storescu``, JSON findings to the results callback) to hold studies, orders, jobs, a
result written back to a PACS (``storescp``) as a rendered summary page, and audit rows;
one of its two vendors is down. The backup is taken while it
runs; then the service and its whole folder are gone, the store is restored into a new
folder (the spool's files from a copy, as the hospital's backup tool would hold them),
and the restored service holds everything and sends the study to the vendor that was
down.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import stat
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest
from hl7.client import MLLPClient
from sqlalchemy import create_engine, text

from adapters.dicom.synthetic import generate_study
from adapters.results.sr import read_source_study
from tests.databases import fresh_postgres_database
from tests.hl7_messages import orm_o01, sample_order
from tests.integration.test_results_sr import head_bleed
from tests.peers import LOOPBACK, StoreSCP, ensure_cjk_font, free_port, storescu, wait_until
from tests.service import Radbridge, base_config, dicom_block

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

TOKEN = "lungai-results-" + uuid.uuid4().hex
TABLES = ("studies", "instances", "orders", "order_messages", "jobs", "results", "audit")


def _config(folder: Path, vendor_port: int, down_port: int, pacs_port: int) -> dict[str, Any]:
    config = base_config(folder, free_port(), study_stable_seconds=0.5)
    config["hl7"] = {"listen": {"host": LOOPBACK, "port": free_port()}}
    config["http"] = {"listen": {"host": LOOPBACK, "port": free_port()}}
    config["vendors"] = {
        name: {
            "product": f"Head CT {name}",
            "transport": {
                "type": "dicom",
                "ae_title": name.upper(),
                "host": LOOPBACK,
                "port": port,
            },
            "retries": 100,
        }
        for name, port in (("lungai", vendor_port), ("ichai", down_port))
    }
    # findings carry no DICOM object: the PACS gets a summary page, rendered once and kept
    config["targets"] = {
        "pacs": dicom_block("PACS", pacs_port, render=["sc_summary"], originals=False)
    }
    config["routes"] = [
        {
            "name": "head-ct",
            "when": {"modality": "CT", "body_part": "HEAD"},
            "send": ["lungai", "ichai"],
            "write_back": ["pacs"],
        }
    ]
    config["delivery"] = {"backoff_base_seconds": 0.5, "backoff_cap_seconds": 1.0}
    return config


def _counts(rb: Radbridge) -> dict[str, int]:
    path = str(rb.config["storage"]["database"]).removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _actions(rb: Radbridge) -> list[str]:
    """The store's audit trail, oldest first: its actions."""
    path = str(rb.config["storage"]["database"]).removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        return [row[0] for row in conn.execute("SELECT action FROM audit ORDER BY id")]


def _written_back(rb: Radbridge) -> bool:
    """Whether the store holds a write-back and every one is done."""
    path = str(rb.config["storage"]["database"]).removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        states = [row[0] for row in conn.execute("SELECT state FROM deliveries")]
    return bool(states) and set(states) == {"done"}


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its path relative to it, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _jobs(rb: Radbridge) -> dict[str, dict[str, Any]]:
    """The service's jobs by vendor, read from its store (a command per poll costs a second)."""
    url = str(rb.config["storage"]["database"]).replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT id, vendor, state, attempts FROM jobs")).mappings()
            return {row["vendor"]: dict(row) for row in found}
    finally:
        engine.dispose()


def test_backup_of_a_running_service_restores_everything_and_resumes_jobs(
    tmp_path: Path,
) -> None:
    """A backup taken while the service runs, restored into a fresh folder after the old
    one is gone: studies, instances (paths in the new spool), orders, jobs, the result and
    the audit trail are all there, and the result's kept renderings (listed with their
    SHA-256, copied byte for byte into private folders); the vendor that was down
    receives the study; a second restore is refused onto the now non-empty store without
    --force, and onto the running service's spool even with it."""
    ensure_cjk_font()
    with (
        StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as lungai,
        StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs,
    ):
        down_port = free_port()
        old_config = _config(tmp_path / "old", lungai.port, down_port, pacs.port)
        rb = Radbridge(tmp_path / "old", old_config)
        rb.env["RADBRIDGE_VENDORS__LUNGAI__RESULTS__TOKEN"] = TOKEN
        rb.start()
        try:
            order = sample_order(4242, study_uid=None)
            with MLLPClient(LOOPBACK, rb.config["hl7"]["listen"]["port"]) as client:
                ack = hl7.parse(client.send_message(orm_o01(order)).decode())
            assert str(ack.segment("MSA")[1]) == "AA"
            files = generate_study(
                "ct_head",
                tmp_path / "study",
                instances=6,
                rows=32,
                columns=32,
                accession=order.accession_number,
            )
            source = read_source_study(files)
            storescu(files, rb.port)
            job = wait_until(
                lambda: (j := _jobs(rb).get("lungai")) and j["state"] == "awaiting_result" and j,
                "lungai job sent",
            )
            answer = httpx.post(
                f"http://{LOOPBACK}:{rb.config['http']['listen']['port']}"
                f"/results/jobs/{job['id']}/findings",
                json=head_bleed(source) | {"complete": True},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
            assert answer.status_code == 202, answer.text
            wait_until(lambda: _counts(rb)["results"] == 1, "result stored")
            wait_until(lambda: _written_back(rb), "the summary page written back to the PACS")
            rendered = _files(rb.spool / "rendered")
            assert any(p.endswith("/made.json") for p in rendered), sorted(rendered)
            assert len(pacs.files()) == len(rendered) - 1  # each page, not the record
            wait_until(lambda: _jobs(rb)["ichai"]["attempts"] >= 1, "ichai tried and failed")
            before = _counts(rb)
            backup = tmp_path / "backup"
            printed = rb.cli("backup", str(backup)).stdout
            assert "spool manifest:" in printed, printed
            spool_copy = tmp_path / "spool-copy"  # what the hospital's backup tool holds
            shutil.copytree(rb.spool, spool_copy)
        finally:
            rb.kill9()
    shutil.rmtree(tmp_path / "old")  # the machine is gone
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["config"] == "radbridge.yaml" and (backup / "radbridge.yaml").is_file()
    assert len([f for f in manifest["spool_files"] if f["path"].startswith("studies/")]) == 6
    assert all(len(f["sha256"]) == 64 for f in manifest["spool_files"])
    listed = {f["path"] for f in manifest["spool_files"]}
    assert {f"rendered/{p}" for p in rendered} <= listed

    with (
        StoreSCP(tmp_path / "lungai2", ae_title="LUNGAI") as lungai2,
        StoreSCP(tmp_path / "ichai", ae_title="ICHAI", port=down_port) as ichai,
    ):
        new_config = _config(tmp_path / "new", lungai2.port, down_port, free_port())
        new = Radbridge(tmp_path / "new", new_config)
        restored = new.cli("restore", str(backup), "--spool", str(spool_copy))
        count = len(manifest["spool_files"])
        assert f"{count} of {count} files in place" in restored.stdout, restored.stderr
        assert _files(new.spool / "rendered") == rendered
        for folder in (new.spool / "rendered").rglob("*"):
            if folder.is_dir():  # RESULT/ and RESULT/TARGET.…/: private, as they were made
                assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        again = new.cli("restore", str(backup), check=False)
        assert again.returncode == 1 and "not empty" in again.stderr + again.stdout
        after = _counts(new)
        assert after == before | {"audit": before["audit"] + 1}  # + the restore's own row
        assert _actions(new)[-1] == "store.restore"
        new.start()
        try:
            wait_until(
                lambda: len(ichai.files()) == len(files), "the down vendor receives the study"
            )
            study = new.study(source.study_uid)
            assert study["instances"] == 6 and study["accession_number"] == order.accession_number
            path = str(new.config["storage"]["database"]).removeprefix("sqlite:///")
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                paths = [row[0] for row in conn.execute("SELECT path FROM instances")]
            assert paths and all(p.startswith(str(new.spool) + "/") for p in paths)
            assert all(Path(p).is_file() for p in paths)
            running = new.cli("restore", str(backup), "--force", check=False)
            assert running.returncode == 1 and "in use" in running.stderr + running.stdout
            assert _jobs(new)["lungai"]["state"] != "pending"  # not sent a second time
            assert len(lungai2.files()) == 0
        finally:
            new.close()


def _pg_counts(url: str) -> dict[str, int]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_backup_and_restore_on_postgresql(tmp_path: Path) -> None:
    """On PostgreSQL, a backup (pg_dump) of a running service holding an order, a study and
    a job restores (pg_restore) into a new database with every row; a second restore is
    refused without --force and replaces the store with it."""
    with fresh_postgres_database() as source_url, fresh_postgres_database() as target_url:
        config = _config(tmp_path / "old", free_port(), free_port(), free_port())
        config["storage"]["database"] = source_url
        rb = Radbridge(tmp_path / "old", config)
        rb.start()
        try:
            order = sample_order(4343, study_uid=None)
            with MLLPClient(LOOPBACK, rb.config["hl7"]["listen"]["port"]) as client:
                ack = hl7.parse(client.send_message(orm_o01(order)).decode())
            assert str(ack.segment("MSA")[1]) == "AA"
            files = generate_study("ct_head", tmp_path / "study", instances=2, rows=32, columns=32)
            storescu(files, rb.port)
            wait_until(lambda: len(_jobs(rb)) == 2, "two jobs")
            before = _pg_counts(source_url)
            rb.cli("backup", str(tmp_path / "backup"), "--sizes-only")
            assert _pg_counts(source_url)["audit"] == before["audit"] + 1  # store.backup
        finally:
            rb.kill9()
        new_config = _config(tmp_path / "new", free_port(), free_port(), free_port())
        new_config["storage"]["database"] = target_url
        new = Radbridge(tmp_path / "new", new_config)
        new.cli("restore", str(tmp_path / "backup"), "--spool", str(rb.spool))
        restored = before | {"audit": before["audit"] + 1}  # + the restore's own row
        assert _pg_counts(target_url) == restored
        assert before["orders"] == 1 and before["instances"] == 2 and before["jobs"] == 2
        again = new.cli("restore", str(tmp_path / "backup"), check=False)
        assert again.returncode == 1 and "not empty" in again.stderr + again.stdout
        new.cli("restore", str(tmp_path / "backup"), "--force")
        assert _pg_counts(target_url) == restored


def test_a_backup_keeps_the_canary_studies_for_a_restore(tmp_path: Path) -> None:
    """The canary study a running service made (``SPOOL/canary/``, indexed) is in the
    backup's manifest with its SHA-256, and a restore with --spool copies it byte for byte
    into the new spool, where the restored index's paths of its instances point."""
    with StoreSCP(tmp_path / "vendor", ae_title="CANARYAI") as vendor:
        config = base_config(tmp_path / "old", free_port(), study_stable_seconds=0.5)
        config["vendors"] = {
            "canaryai": {
                "product": "CT head bleed",
                "transport": dicom_block("CANARYAI", vendor.port),
                "canary": {"every": "1d", "deadline": "1h", "instances": 3},
            }
        }
        rb = Radbridge(tmp_path / "old", config)
        rb.start()
        try:
            wait_until(
                lambda: _jobs(rb).get("canaryai", {}).get("state") == "awaiting_result",
                "the canary sent",
            )
            made = _files(rb.spool / "canary")
            assert len(made) == 3 and all(p.endswith(".dcm") for p in made), sorted(made)
            rb.cli("backup", str(tmp_path / "backup"))
            spool_copy = tmp_path / "spool-copy"  # what the hospital's backup tool holds
            shutil.copytree(rb.spool, spool_copy)
        finally:
            rb.kill9()
    shutil.rmtree(tmp_path / "old")  # the machine is gone
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    listed = {f["path"]: f["sha256"] for f in manifest["spool_files"]}
    canary = {p: hashlib.sha256(data).hexdigest() for p, data in made.items()}
    assert {f"canary/{p}": digest for p, digest in canary.items()}.items() <= listed.items()

    new = Radbridge(tmp_path / "new", base_config(tmp_path / "new", free_port()))
    restored = new.cli("restore", str(tmp_path / "backup"), "--spool", str(spool_copy))
    assert f"{len(listed)} of {len(listed)} files in place" in restored.stdout, restored.stderr
    assert _files(new.spool / "canary") == made
    path = str(new.config["storage"]["database"]).removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        paths = [row[0] for row in conn.execute("SELECT path FROM instances")]
    assert sorted(paths) == sorted(str(new.spool / "canary" / p) for p in made)
