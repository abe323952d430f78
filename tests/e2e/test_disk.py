"""Keeping the disk: free-space watermark on a small file system mounted by the test."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom

from adapters.dicom.synthetic import generate_study
from adapters.hl7.ack import AckCode, read_ack
from adapters.hl7.framing import frame
from broker.store.spool import Spool
from tests import cli_fork
from tests.disk import MiB, fill, small_filesystem
from tests.hl7_messages import orm_o01, sample_order
from tests.peers import LOOPBACK, echoscu, free_port, storescu, wait_until
from tests.service import Radbridge, arriving, base_config

MLLP_SEND = str(Path(sys.executable).parent / "mllp_send")
AUDIT_ALL = ("--from", "2000-01-01", "--to", "2100-01-01")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _order(tmp_path: Path, port: int, control_id: str) -> AckCode:
    path = tmp_path / f"{control_id}.hl7"
    path.write_bytes(frame(orm_o01(sample_order(1), control_id=control_id).encode()))
    sent = subprocess.run(
        [MLLP_SEND, "--file", str(path), "--port", str(port), LOOPBACK],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return read_ack(sent.stdout.split(b"\x1c")[0].strip(b"\x0b\r\n")).code


def test_low_free_space_stops_dicom_intake_keeps_orders_and_resumes(tmp_path: Path) -> None:
    """Below storage.min_free_space (a 16 MiB tmpfs spool, 4 MiB minimum) storescu's C-STORE
    gets 0xA700 and nothing is written, an HL7 order is still ACKed AA, /readyz says 503
    (disk low), /metrics shows the alarm and the sizes, the console a banner, and the log
    says so; once space is back the next C-STORE succeeds without a restart and the
    earlier instance is intact."""
    folder = tmp_path / "rb"
    with small_filesystem(folder / "spool", "16m") as spool:
        config = base_config(folder, free_port())
        config["storage"]["min_free_space"] = "4MiB"
        http_port, hl7_port = free_port(), free_port()
        config["http"] = {"listen": {"host": LOOPBACK, "port": http_port}}
        config["hl7"] = {"listen": {"host": LOOPBACK, "port": hl7_port}}
        rb = Radbridge(folder, config)
        before, after = (
            generate_study("ct_head", tmp_path / name, instances=1, rows=64, columns=64)
            for name in ("before", "after")
        )
        base = f"http://{LOOPBACK}:{http_port}"
        try:
            rb.start()
            storescu(before, rb.port)
            assert httpx.get(f"{base}/readyz").status_code == 200

            filler = fill(spool, leave=2 * MiB)
            refused = storescu(after, rb.port, extra_args=["-v"], check=False)
            answer = refused.stdout + refused.stderr
            assert "Received Store Response (Refused: OutOfResources)" in answer, answer
            assert arriving(spool) == []
            assert _order(tmp_path, hl7_port, "LOW1") is AckCode.AA
            low = lambda: httpx.get(f"{base}/readyz").status_code == 503  # noqa: E731
            wait_until(low, "/readyz is not 503", timeout=5)  # /readyz measures every 0.5 s
            assert httpx.get(f"{base}/readyz").json()["checks"]["disk"].startswith("low")
            banner = httpx.get(f"{base}/console/login").text  # every console page has it
            assert 'id="disk-alarm"' in banner and "DICOM intake stopped" in banner
            metrics = httpx.get(f"{base}/metrics").text
            assert _metric(metrics, "radbridge_free_space_low") == 1
            assert _metric(metrics, "radbridge_min_free_space_bytes") == 4 * MiB
            stored = sum(f.stat().st_size for f in (spool / "studies").rglob("*.dcm"))
            assert _metric(metrics, "radbridge_spool_bytes") == stored
            assert _metric(metrics, "radbridge_database_bytes") > 0
            deadline = time.monotonic() + 30
            while "free space low" not in rb.log_path.read_text():
                assert time.monotonic() < deadline, "no alarm in the log"
                time.sleep(0.1)

            filler.unlink()
            storescu(after, rb.port)
            ready = lambda: httpx.get(f"{base}/readyz").status_code == 200  # noqa: E731
            wait_until(ready, "not ready again", timeout=5)  # /readyz measures every 0.5 s
            studies = {s["study_uid"]: s for s in rb.studies()}
            assert len(studies) == 2 and all(s["instances"] == 1 for s in studies.values())
            assert "free space is back" in rb.log_path.read_text()
        finally:
            rb.close()


def _start_logging_to(rb: Radbridge, log_file: Path) -> None:
    """``radbridge serve`` with its output apart, started once its log file says so."""
    rb.process = cli_fork.start(["serve", "-c", str(rb.config_path)], env=rb.env, log=rb.log_path)
    wait_until(
        lambda: log_file.exists() and "radbridge started" in log_file.read_text(),
        "radbridge did not start",
        timeout=120,
    )


def test_purge_dry_run_then_purge_and_a_rotated_log_file(tmp_path: Path) -> None:
    """radbridge purge --dry-run lists a study past retention.studies_after_done with its
    bytes, and an old HL7 message (retention.messages), and removes nothing; radbridge purge
    removes the study's files and the message, the study stays listed as purged, the purge
    is audited; sent again, the study is stored again (the service's own purge runs hourly
    here). With logging.file, the service, its listener process and the
    command write one file, rotated at logging.max_bytes keeping logging.backups old files;
    nothing goes to standard output or error."""
    folder = tmp_path / "rb"
    config = base_config(folder, free_port())
    config["retention"] = {"studies_after_done": "1s", "messages": "1s", "interval": "1h"}
    hl7_port = free_port()
    config["hl7"] = {"listen": {"host": LOOPBACK, "port": hl7_port}}
    log_file = folder / "logs" / "radbridge.log"
    config["logging"] = {
        "format": "json",
        "file": str(log_file),
        "max_bytes": 2048,
        "backups": 2,
        "rotate_every": None,
    }
    rb = Radbridge(folder, config)
    files = generate_study("ct_head", tmp_path / "study", instances=2, rows=64, columns=64)
    try:
        _start_logging_to(rb, log_file)
        assert _order(tmp_path, hl7_port, "OLD1") is AckCode.AA
        storescu(files, rb.port)
        [study] = rb.studies()
        uid = study["study_uid"]
        rb.wait_state(uid, "stable")
        time.sleep(1.1)  # past studies_after_done
        stored = list((rb.spool / "studies").rglob("*.dcm"))
        assert len(stored) == 2
        plan = json.loads(rb.cli("purge", "--dry-run", "--json").stdout)
        item, messages = plan["items"]
        assert (item["kind"], item["target"], item["count"]) == ("study", uid, 2)
        assert item["bytes"] == plan["bytes"] == sum(f.stat().st_size for f in stored)
        assert (messages["kind"], messages["count"]) == ("messages", 1)  # the HL7 order's
        assert all(f.exists() for f in stored)

        purged = json.loads(rb.cli("purge", "--json").stdout)
        # the study's events (what decided it complete) go with it
        assert [i["target"] for i in purged["items"]] == [uid, "order_messages", "study_events"]
        assert list((rb.spool / "studies").rglob("*.dcm")) == []
        shown = rb.study(uid)
        assert shown["purged_at"] is not None and shown["instances"] == 0
        assert "(purged)" in rb.cli("studies", "list").stdout
        audit = rb.cli("audit", "export", *AUDIT_ALL, "--action", "spool.purge")
        trail = [(e["target"], e["actor"]) for e in json.loads(audit.stdout)]
        assert [t for t, _ in trail] == [f"study:{uid}", "order_messages", "study_events"]
        assert all(actor.startswith("cli:") for _, actor in trail)
        assert json.loads(rb.cli("purge", "--dry-run", "--json").stdout)["items"] == []

        storescu(files, rb.port)
        again = rb.study(uid)
        assert again["purged_at"] is None and again["instances"] == 2
        assert len(list((rb.spool / "studies").rglob("*.dcm"))) == 2

        echoscu(rb.port, extra_args=["--repeat", "60"])  # a line each, from the listener
        logs = sorted(log_file.parent.glob("radbridge.log*"))
        rotated = [f for f in logs if f.name.startswith("radbridge.log.")]
        assert 1 <= len(rotated) <= 2, [f.name for f in logs]
        assert all(f.stat().st_size <= 2048 + 2048 for f in logs)
        lines = [json.loads(x) for f in logs for x in f.read_text().splitlines() if x]
        assert "c-echo" in {line["event"] for line in lines}  # the listener process's lines
        assert sum(line["event"] == "c-echo" for line in lines) < 60  # the oldest went
    finally:
        rb.close()
    assert b'"event"' not in rb.log_path.read_bytes()  # standard output and error


def test_service_purges_on_its_timer_and_start_indexes_only_unfinished(tmp_path: Path) -> None:
    """The service purges a done study by itself every retention.interval, and its events
    with it; at start it
    indexes the files a crash left in a study folder the index does not know, reading only
    such folders (its log says how many)."""
    folder = tmp_path / "rb"
    config = base_config(folder, free_port())
    config["retention"] = {"studies_after_done": "1s", "interval": "1s"}
    rb = Radbridge(folder, config)
    left = generate_study("ct_head", tmp_path / "left", instances=2, rows=64, columns=64)
    spool = Spool(rb.spool)
    for path in left:  # as a crash between the rename and the index commit leaves them
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        final = spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, final)
    try:
        rb.start()
        [line] = [x for x in rb.log_lines() if x["event"] == "spool reconciled"]
        assert (line["studies"], line["added"]) == (1, 2)
        [study] = rb.studies()
        wait_until(lambda: rb.study(study["study_uid"])["purged_at"] is not None, "never purged")
        assert list((rb.spool / "studies").rglob("*.dcm")) == []

        def purges() -> list[dict[str, Any]]:
            audit = rb.cli("audit", "export", *AUDIT_ALL, "--action", "spool.purge")
            found: list[dict[str, Any]] = json.loads(audit.stdout)
            return found if len(found) == 2 else []

        entry, events = wait_until(purges, "the study's events purged", interval=0.5)
        assert entry["actor"] == "radbridge" and entry["detail"]["instances"] == 2
        assert (events["target"], events["actor"]) == ("study_events", "radbridge")
    finally:
        rb.close()
