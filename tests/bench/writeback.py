"""Write-back benchmark: from a result being complete to the PACS holding it and the RIS's ACK.

    .venv/bin/python -m tests.bench.writeback [--repeats N]

One run, all on 127.0.0.1: a fresh SQLite store and spool, Orthanc as the
PACS (C-STORE target ``pacs``, TCP_NODELAY=1) and python hl7's MLLP server as
the RIS (target ``ris``, answering AA), and the write-back stage running as
in the service (a worker thread per target). Each repeat makes a small head
CT study, its job and a completed result with JSON findings and their SR
(as the intake does), then calls the stage's ``on_complete`` hook and times:

* ``pacs``: until Orthanc's REST API finds the SR's SOP Instance UID
  (polled every 2 ms; the poll adds up to that much);
* ``ris``: until the RIS has sent its AA for the ORU^R01.

Prints the medians (goal: under 1 s each) and the slowest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from broker.engine.plan import FixedPlan, FixedPlans
from broker.engine.writeback_stage import WritebackStage
from broker.model.writeback import TargetSpec
from broker.runtime.snapshot import build_targets
from broker.store import make_engine
from broker.store.migrate import migrate
from broker.store.results import ResultStore
from tests.peers import LOOPBACK, Orthanc
from tests.ris import Ris
from tests.writeback_data import Scene


def _held(orthanc: Orthanc, sop_instance_uid: str) -> bool:
    query = {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
    return bool(orthanc.request("POST", "/tools/find", json.dumps(query).encode()))


def run(repeats: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"pacs": [], "ris": []}
    with (
        tempfile.TemporaryDirectory(prefix="bench-writeback-") as tmp,
        Orthanc() as pacs,
        Ris() as ris,
    ):
        folder = Path(tmp)
        engine = make_engine(f"sqlite:///{folder / 'radbridge.db'}")
        migrate(engine)
        specs = {
            "pacs": TargetSpec(
                "pacs", "dicom", {"ae_title": "ORTHANC", "host": LOOPBACK, "port": pacs.dicom_port}
            ),
            "ris": TargetSpec("ris", "hl7", {"host": LOOPBACK, "port": ris.port}),
        }
        plan = FixedPlan(
            targets=specs, writers=build_targets(specs), routes={"head-ct": ("pacs", "ris")}
        )
        stage = WritebackStage(engine, FixedPlans(plan), results=ResultStore(engine).get).start()
        try:
            for n in range(repeats + 1):  # the first one warms up
                scene = Scene.make(engine, folder, f"-{n}")
                result_id = scene.result(scene.job())
                sop = ResultStore(engine).get(result_id).objects[0].sop_instance_uid
                acks = len(ris.acked_at)
                started = time.monotonic()
                stage.schedule(result_id)
                pacs_at = ris_at = None
                deadline = started + 30
                while (pacs_at is None or ris_at is None) and time.monotonic() < deadline:
                    if ris_at is None and len(ris.acked_at) > acks:
                        ris_at = ris.acked_at[acks]
                    if pacs_at is None and _held(pacs, sop):
                        pacs_at = time.monotonic()
                    time.sleep(0.002)
                if pacs_at is None or ris_at is None:
                    raise RuntimeError(f"repeat {n}: not written back within 30 s")
                if n:
                    timings["pacs"].append(pacs_at - started)
                    timings["ris"].append(ris_at - started)
        finally:
            stage.stop()
            engine.dispose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    timings = run(args.repeats)
    print(f"write-back latency from result complete, {args.repeats} results (goal < 1 s):")
    for name, what in (
        ("pacs", "PACS (Orthanc) holds the SR"),
        ("ris", "RIS acknowledged the ORU"),
    ):
        values = timings[name]
        print(
            f"  {what:30s} median {statistics.median(values) * 1000:7.1f} ms"
            f"   max {max(values) * 1000:7.1f} ms"
        )


if __name__ == "__main__":
    main()
