"""The simulated PACS: `harness pacs run` with Orthanc, the built-in SCP, and `pacs query`."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from adapters.harness.modality import SendReport
from adapters.harness.pacs import BuiltinPacs
from tests import cli_fork
from tests.peers import ensure_debian_packages, free_port, wait_for_port


def _query(*args: str) -> list[dict[str, object]]:
    done = cli_fork.run(
        ["harness", "pacs", "query", *args, "--json"],
        timeout=60,
        check=True,
    )
    result: list[dict[str, object]] = json.loads(done.stdout)
    return result


def test_pacs_run_starts_orthanc_and_pacs_query_lists_what_it_holds(
    tmp_path: Path, modality_sender: Callable[..., SendReport]
) -> None:
    """`pacs run` (Orthanc) takes a C-STORE'd study; `pacs query --orthanc` counts it.

    The folder is given relative to the working directory, as a user types it
    (Orthanc once got a relative configuration path from another directory and
    did not start)."""
    ensure_debian_packages("Orthanc")
    dicom_port, http_port = free_port(), free_port()
    log = tmp_path / "pacs.log"
    pacs = cli_fork.start(
        ["harness", "pacs", "run", "--port", str(dicom_port), "--http-port", str(http_port),
         "--folder", "orthanc"],
        env=dict(os.environ), log=log, cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for_port(dicom_port)
        wait_for_port(http_port)
        report = modality_sender("mr_brain", dicom_port, called_ae="PACS", instances=2)
        assert report.ok
        [study] = _query("--orthanc", f"http://127.0.0.1:{http_port}")
    finally:
        pacs.send_signal(signal.SIGTERM)
        pacs.wait(30)
    output = log.read_text()
    assert "Orthanc PACS@127.0.0.1" in output
    assert (tmp_path / "orthanc" / "orthanc.json").is_file()
    assert study["accession_number"] == "ACC0001" and study["instances"] == 8
    assert len(study["series"]) == 4  # type: ignore[arg-type]


def test_builtin_pacs_files_instances_and_pacs_query_reads_its_folder(
    tmp_path: Path, modality_sender: Callable[..., SendReport]
) -> None:
    """The built-in PACS files each instance as received, recording the AE title it was
    called by (one receiver standing for many PACS); `pacs query --folder` counts them."""
    with BuiltinPacs(tmp_path / "pacs") as pacs:
        report = modality_sender("dx_chest", pacs.port, called_ae="SITE7_PACS", instances=3)
        time.sleep(0.1)
    assert report.ok and len(pacs.received) == 3
    assert {r.called_ae for r in pacs.received} == {"SITE7_PACS"}
    [study] = _query("--folder", str(tmp_path / "pacs"))
    assert study["instances"] == 3 and study["patient_id"] == "PAT0001"
    assert {s["modality"] for s in study["series"]} == {"DX"}  # type: ignore[attr-defined]
