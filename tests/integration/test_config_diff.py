"""Reload rules against a real store (SQLite, PostgreSQL) and `radbridge config diff` against
the snapshot recorded in force: restart required, removals with unfinished jobs, drain,
audit, workers following the service."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine

from broker.model.jobs import JobState
from broker.model.writeback import DeliveryKind
from broker.runtime.reload import Reloader
from broker.runtime.snapshot import SnapshotHolder, build_snapshot
from broker.store import make_engine
from broker.store.audit import AuditLog
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.jobs import JobStore
from broker.store.migrate import migrate
from broker.store.snapshots import SnapshotLog
from config.loader import load_settings
from tests import cli_fork
from tests.databases import DATABASES, fresh_postgres_database

TOKEN = "results-token-" + "x" * 24


def _config(database: str, folder: Path) -> dict[str, Any]:
    vendor = {"product": "P", "transport": {"type": "dicom", "host": "127.0.0.1", "port": 11104}}
    return {
        "storage": {"spool": str(folder / "spool"), "database": database},
        "dicom": {"listen": {"host": "127.0.0.1", "port": 11112}, "allow_any_peer": True},
        "vendors": {
            "lungai": {**vendor, "transport": {**vendor["transport"], "ae_title": "LUNGAI"}},
            "ichai": {**vendor, "transport": {**vendor["transport"], "ae_title": "ICHAI"}},
        },
        "routes": [
            {
                "name": "chest-ct",
                "when": {"modality": "CT", "body_part": "CHEST"},
                "send": ["lungai"],
            },
            {"name": "head-ct", "when": {"modality": "CT", "body_part": "HEAD"}, "send": ["ichai"]},
        ],
    }


@dataclass
class Installation:
    """A configuration file, its store and the reloader a running service would have."""

    path: Path
    config: dict[str, Any]
    engine: Engine
    holder: SnapshotHolder
    reloader: Reloader

    def write(self, edit: Any = None) -> dict[str, Any]:
        config = copy.deepcopy(self.config)
        if edit is not None:
            edit(config)
        self.path.write_text(yaml.safe_dump(config))
        return config

    def diff(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli_fork.run(["config", "diff", "-c", str(self.path), *args], timeout=120)

    def reloads(self) -> list[dict[str, Any]]:
        entries = AuditLog(self.engine).list(action="config.reload")
        return [{"actor": e.actor, **e.detail} for e in entries]


@pytest.fixture(params=DATABASES)
def installed(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Installation]:
    """A service's configuration put in force at start (recorded in the store)."""
    monkeypatch.setenv("RADBRIDGE_VENDORS__LUNGAI__RESULTS__TOKEN", TOKEN)

    def make(database: str) -> Installation:
        path = tmp_path / "radbridge.yaml"
        config = _config(database, tmp_path)
        path.write_text(yaml.safe_dump(config))
        settings = load_settings(path)
        engine = make_engine(settings.database_url())
        migrate(engine)
        holder = SnapshotHolder(build_snapshot(settings, path))
        reloader = Reloader(holder, path, engine=engine)
        reloader.put_in_force_at_start()
        return Installation(path, config, engine, holder, reloader)

    if request.param == "sqlite":
        found = make(f"sqlite:///{tmp_path / 'radbridge.db'}")
        yield found
        found.engine.dispose()
    else:
        with fresh_postgres_database() as url:
            found = make(url)
            yield found
            found.engine.dispose()


def _move_lungai(config: dict[str, Any]) -> None:
    config["vendors"]["lungai"]["transport"]["port"] = 11105


def _add_boneai(config: dict[str, Any]) -> None:
    config["vendors"]["boneai"] = {
        "product": "bone age",
        "transport": {"type": "dicom", "ae_title": "BONEAI", "host": "127.0.0.1", "port": 11106},
    }
    config["routes"].append({"name": "bone", "when": {"modality": "DX"}, "send": ["boneai"]})


def _remove_ichai(config: dict[str, Any]) -> None:
    del config["vendors"]["ichai"]
    config["routes"] = [r for r in config["routes"] if r["name"] != "head-ct"]


def test_diff_compares_the_file_with_the_snapshot_in_force(installed: Installation) -> None:
    """config diff names the snapshot in force and lists what a reload would change (exit 0);
    after the reload it says "no changes"; secrets never show."""
    in_force = installed.holder.current.id
    installed.write(lambda c: (_move_lungai(c), _add_boneai(c)))
    shown = installed.diff()
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"in force: {in_force} since ")
    assert lines[1:] == [
        "vendors:",
        "  ~ vendors.lungai.transport.port: 11104 → 11105",
        "  + vendors.boneai: added",
        "routes:",
        "  + routes.bone: added",
        "a reload would be accepted",
    ]
    as_json = json.loads(installed.diff("--json").stdout)
    assert as_json["in_force"]["snapshot"] == in_force and as_json["accepted"] is True
    assert {c["path"] for c in as_json["changes"]} == {
        "vendors.lungai.transport.port",
        "vendors.boneai",
        "routes.bone",
    }
    assert TOKEN not in shown.stdout + json.dumps(as_json)

    outcome = installed.reloader.reload(trigger="sighup")
    assert outcome.reloaded and outcome.changed and outcome.previous == in_force
    assert SnapshotLog(installed.engine).in_force().snapshot == outcome.snapshot  # type: ignore[union-attr]
    again = installed.diff()
    assert again.returncode == 0 and "no changes" in again.stdout
    assert installed.reloads()[0]["actor"] == "radbridge"
    assert installed.reloads()[0]["trigger"] == "sighup"


def test_restart_required_is_refused_as_a_whole(installed: Installation) -> None:
    """A listen port changed with a vendor moved: config diff exits 1; the reload is refused,
    the snapshot in force and its record stay, the refusal is audited."""
    before = installed.holder.current
    installed.write(lambda c: (_move_lungai(c), c["dicom"]["listen"].update(port=11113)))
    shown = installed.diff()
    assert shown.returncode == 1
    assert "restart required: dicom.listen.port changed" in shown.stdout.splitlines()
    outcome = installed.reloader.reload(trigger="file")
    assert not outcome.reloaded and outcome.refusal == "restart_required"
    assert outcome.problems == ("restart required: dicom.listen.port changed",)
    assert installed.holder.current is before
    assert installed.holder.current.vendor("lungai").params["port"] == 11104
    assert SnapshotLog(installed.engine).in_force().snapshot == before.id  # type: ignore[union-attr]
    [audited] = installed.reloads()
    assert audited["reloaded"] is False and audited["problems"] == list(outcome.problems)


def test_removing_a_vendor_with_jobs_is_refused_unless_drained(installed: Installation) -> None:
    """ichai removed with a pending and a dead job: refused naming both (diff exit 3); with
    drain it stays only to finish them (no route), and leaves once none is in progress,
    the dead one named in the audit."""
    jobs = JobStore(installed.engine)
    pending = jobs.create("1.2.3", "ichai", route="head-ct").job
    dead = jobs.create("1.2.4", "ichai", route="head-ct").job
    jobs.move(dead.id, [JobState.SENDING, JobState.DEAD], error="vendor down")
    installed.write(_remove_ichai)

    shown = installed.diff()
    assert shown.returncode == 3, shown.stdout + shown.stderr
    assert (
        f"unfinished work: vendors.ichai is removed but has job(s) {pending.id} (pending), "
        f"{dead.id} (dead)" in shown.stdout
    )
    refused = installed.reloader.reload()
    assert refused.refusal == "unfinished_work"
    assert refused.unfinished == {"vendors.ichai": [pending.id, dead.id]}
    assert refused.problems[0].startswith(
        f"vendors.ichai removed while it has 2 unfinished job(s): {pending.id} (pending), "
        f"{dead.id} (dead); valid: "
    )

    drained = installed.reloader.reload(drain=True, actor="token:1 (admin)")
    assert drained.reloaded and drained.draining == ("ichai",)
    current = installed.holder.current
    assert current.draining_vendors == {"ichai"} and "ichai" in current.vendors
    assert [r.name for r in current.settings.routes] == ["chest-ct"]
    assert current.write_back("head-ct") == ()  # its jobs still write back as it said
    record = SnapshotLog(installed.engine).in_force()
    assert record is not None and record.draining_vendors == ("ichai",)
    assert installed.diff().returncode == 0  # the removal is under way: nothing blocks it
    assert installed.reloader.reload().draining == ("ichai",)  # a later reload keeps draining
    assert installed.reloader.finish_draining() is None  # the pending job is in progress

    jobs.cancel(pending.id, reason="operator")
    done = installed.reloader.finish_draining()
    assert done is not None and done.changes == ("drained: ichai",)
    assert "ichai" not in installed.holder.current.vendors
    assert installed.holder.current.draining_vendors == frozenset()
    audited = installed.reloads()
    assert audited[0]["trigger"] == "drained" and audited[0]["unfinished"] == {
        "vendors.ichai": [dead.id]
    }
    assert any(a.get("drain") and a["actor"] == "token:1 (admin)" for a in audited)


def test_invalid_file_is_refused_with_file_and_line(installed: Installation) -> None:
    """A route naming an unknown vendor: config diff exits 2 with FILE:LINE; reload refuses."""
    installed.write(lambda c: c["routes"][0].update(send=["nosuch"]))
    shown = installed.diff()
    assert shown.returncode == 2 and f"{installed.path}:" in shown.stderr
    assert "nosuch" in shown.stderr
    outcome = installed.reloader.reload()
    assert outcome.refusal == "invalid" and any("nosuch" in p for p in outcome.problems)


def test_reloading_the_same_file_changes_nothing(installed: Installation) -> None:
    """The same configuration again: accepted, the same snapshot id, no new record."""
    before = installed.holder.current
    outcome = installed.reloader.reload()
    assert outcome.reloaded and not outcome.changed and installed.holder.current is before
    assert SnapshotLog(installed.engine).in_force().trigger == "start"  # type: ignore[union-attr]


def test_diff_against_another_file_needs_no_service(
    installed: Installation, tmp_path: Path
) -> None:
    """--against OLD compares two files (for a review before the change)."""
    old = tmp_path / "old.yaml"
    old.write_text(installed.path.read_text())
    installed.write(_add_boneai)
    shown = installed.diff("--against", str(old))
    assert shown.returncode == 0
    assert shown.stdout.splitlines()[0] == f"compared with: {old}"
    assert "  + vendors.boneai: added" in shown.stdout.splitlines()


def test_a_worker_drains_what_the_service_drains_and_waits_for_agreement(
    installed: Installation, tmp_path: Path
) -> None:
    """A worker on the same file keeps the vendor the service drains, and does not put in
    force a file whose vendors differ from the service's snapshot in force."""
    worker_holder = SnapshotHolder(build_snapshot(load_settings(installed.path), installed.path))
    worker = Reloader(worker_holder, installed.path, engine=installed.engine, role="worker")
    JobStore(installed.engine).create("1.2.3", "ichai", route="head-ct")
    installed.write(_remove_ichai)
    assert installed.reloader.reload(drain=True).reloaded
    followed = worker.reload(trigger="service")
    assert followed.reloaded and followed.draining == ("ichai",)
    assert "ichai" in worker_holder.current.vendors

    installed.write(
        lambda c: (_remove_ichai(c), _move_lungai(c), c["dicom"]["listen"].update(port=1))
    )
    assert installed.reloader.reload().refusal == "restart_required"
    installed.write(lambda c: (_remove_ichai(c), _move_lungai(c)))
    other = worker.reload(trigger="file")  # only the worker sees this file, not the service
    assert other.refusal == "service_differs" and "vendors" in other.problems[0]
    assert worker_holder.current.vendor("lungai").params["port"] == 11104


def test_removing_a_target_with_write_backs_is_refused_unless_drained(
    installed: Installation,
) -> None:
    """A write-back target removed with a pending write-back: refused naming it; with drain
    it stays until the write-back is no longer in progress."""
    with_pacs = installed.write(
        lambda c: (
            c.setdefault("targets", {}).update(
                pacs={"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}
            ),
            c["routes"][0].update(write_back=["pacs"]),
        )
    )
    assert installed.reloader.reload().reloaded
    [made] = DeliveryStore(installed.engine).create(
        [NewDelivery("1.2.3", "pacs", "dicom", DeliveryKind.RESULT, max_attempts=3)]
    )
    installed.config = with_pacs
    installed.write(lambda c: (c.pop("targets"), c["routes"][0].pop("write_back")))
    refused = installed.reloader.reload()
    assert refused.unfinished == {"targets.pacs": [made.id]}
    assert refused.problems[0].startswith(
        f"targets.pacs removed while it has 1 unfinished write-back(s): {made.id} (pending)"
    )
    shown = installed.diff()
    assert shown.returncode == 3 and f"targets.pacs is removed but has write-back(s) {made.id}" in (
        shown.stdout
    )
    drained = installed.reloader.reload(drain=True)
    assert drained.draining == ("target:pacs",) and "pacs" in installed.holder.current.writers
    assert installed.reloader.finish_draining() is None


def test_a_removed_route_still_deidentifies_the_jobs_it_made(
    installed: Installation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that removes a route with ``deidentify`` (its vendor stays, without one) keeps
    the route's profile for the jobs it made: they are never sent as received."""
    monkeypatch.setenv("RADBRIDGE_PRIVACY__PSEUDONYM_SECRET", "reload-test-secret-0123456789")

    def deidentified(config: dict[str, Any]) -> None:
        config["routes"][1]["deidentify"] = {"profile": "basic"}

    installed.write(deidentified)
    assert installed.reloader.reload().reloaded
    assert installed.holder.current.deidentify("ichai", "head-ct") is not None

    def removed(config: dict[str, Any]) -> None:
        config["routes"] = config["routes"][:1]

    installed.write(removed)
    assert installed.reloader.reload().reloaded
    profile = installed.holder.current.deidentify("ichai", "head-ct")
    assert profile is not None and profile.describe() == "basic"
    assert installed.holder.current.deidentify("ichai", "other") is None
