"""Last image of a stroke study → the vendor holds its first instance: evidence vs quiet time.

    .venv/bin/python -m tests.bench.completion [--repeats 3] [--quiet 10] [--workdir DIR]

A stroke CT study of three series (non-contrast head, CTA, perfusion; synthetic,
256x256) is sent with one dcmtk ``storescu`` to ``radbridge serve``, whose
stroke route sends it to a dcmtk ``storescp`` vendor on loopback. Measured:
from ``storescu`` exiting (the last instance acknowledged, the association
released) to the vendor's folder holding a file, medians of ``--repeats``
studies, for three configurations, each its own fresh radbridge:

* ``expected``: the route lists the three series (``expect``);
* ``mpps``: no expected series; the modality's MPPS N-SET COMPLETED, listing
  every instance, follows the images (pynetdicom SCU; measured from its answer);
* ``quiet``: no evidence; the quiet time (``--quiet`` seconds, radbridge's
  default 10; mercure and Orthanc wait 60 s by default) decides.

The goal (DESIGN.md) is at most 1 s with evidence.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom

from adapters.dicom.synthetic import generate_study
from adapters.harness.mpps import ProcedureStep, references, step_dataset
from tests.peers import StoreSCP, dcmtk_env, free_port, storescu_command
from tests.service import Radbridge, base_config


def _study(folder: Path, accession: str) -> list[Path]:
    """The stroke protocol: 32 head slices, 64 CTA slices, 4 perfusion time points."""
    return generate_study(
        "ct_stroke", folder, instances=32, rows=256, columns=256, accession=accession
    )


def _config(folder: Path, vendor_port: int, mode: str, quiet: float) -> dict[str, Any]:
    config = base_config(folder, free_port(), study_stable_seconds=quiet)
    config["vendors"] = {
        "strokeai": {
            "product": "CT stroke",
            "transport": {
                "type": "dicom",
                "ae_title": "STROKEAI",
                "host": "127.0.0.1",
                "port": vendor_port,
            },
        }
    }
    route: dict[str, Any] = {
        "name": "stroke",
        "when": {"modality": "CT", "body_part": "HEAD"},
        "send": ["strokeai"],
        "priority": "stat",
    }
    if mode == "expected":
        route["expect"] = {
            "series": {
                "ncct": {"description": {"regex": "head"}, "contrast_agent": {"exists": False}},
                "cta": {"description": {"regex": "cta"}},
                "perfusion": {"description": {"regex": "perfusion"}},
            },
            "deadline": "10m",
        }
    config["routes"] = [route]
    return config


def _first_file(folder: Path, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.is_file() for p in folder.rglob("*")):
            return time.monotonic()
        time.sleep(0.002)
    raise TimeoutError(f"the vendor received nothing in {timeout} s")


def measure(mode: str, work: Path, repeats: int, quiet: float) -> list[float]:
    """Seconds from the last instance (or the MPPS N-SET) to the vendor's first file."""
    latencies = []
    with StoreSCP(work / f"{mode}-vendor", ae_title="STROKEAI") as vendor:
        rb = Radbridge(work / f"{mode}-rb", _config(work / f"{mode}-rb", vendor.port, mode, quiet))
        rb.start()
        try:
            for n in range(repeats):
                paths = _study(work / f"{mode}-study-{n}", f"B{n}")
                study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
                shutil.rmtree(vendor.folder, ignore_errors=True)
                vendor.folder.mkdir(parents=True)
                step = None
                if mode == "mpps":
                    step = ProcedureStep("127.0.0.1", rb.port)
                    step.create(step_dataset(study_uid, "IN PROGRESS"))
                command = storescu_command(paths, rb.port, extra_args=["-R"])
                subprocess.run(command, env=dcmtk_env(), check=True, capture_output=True)
                done = time.monotonic()
                if step is not None:
                    step.set(step_dataset(study_uid, "COMPLETED", references(paths)))
                    done = time.monotonic()
                latencies.append(_first_file(vendor.folder, quiet * 3 + 30) - done)
                print(f"  {mode} #{n + 1}: {latencies[-1]:.3f} s", flush=True)
        finally:
            rb.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet", type=float, default=10.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-completion-", dir=args.workdir))
    try:
        results = {
            mode: statistics.median(measure(mode, work, args.repeats, args.quiet))
            for mode in ("expected", "mpps", "quiet")
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nstroke study: 3 series, 160 instances at 256x256; medians of {args.repeats}")
    print("last instance -> vendor holds the first instance:")
    for mode, seconds in results.items():
        print(f"  {mode:9s} {seconds:7.3f} s")
    print(f"quiet / expected series: {results['quiet'] / results['expected']:.1f}x")
    verdict = {mode: "met" if results[mode] <= 1 else "NOT met" for mode in ("expected", "mpps")}
    print(f"goal with evidence <= 1 s: expected {verdict['expected']}, mpps {verdict['mpps']}")


if __name__ == "__main__":
    main()
