"""Regional hub benchmark: many sites send studies to one hub; each AI result goes back to
the site that sent the study, and to no other.

    .venv/bin/python -m tests.bench.regional [--sites 200] [--studies 10] [--senders 8]
        [--instances 3] [--stable 1.5] [--json FILE]

All on 127.0.0.1, one run:

* the hub: one ``radbridge serve`` (SQLite store, one spool, one DICOM listener process,
  its worker in the service) with ``--sites`` sites ``s001``…, each with its sender
  ``SNNN_CT`` and its own PACS target ``SNNN_PACS``; two routes, chest CT to the
  simulated lung nodule product ``lungai`` and head CT to the bleed product ``ichai``
  (each ``concurrency: 4``), both writing back to ``site.pacs``;
* the two vendors: ``radbridge harness vendor run`` processes (an SR by C-STORE to the
  hub's results AE title after ``--vendor-delay`` seconds);
* the sites: the harness modality (:func:`adapters.harness.modality.send_files`) in this
  process, ``--senders`` associations at once, each site's studies sent with its own
  calling AE title, the sites taken in turn (every site's first study, then every
  site's second, …), as fast as they go or ``--rate`` studies a minute (the latency
  is the hub's only below its capacity; above it, it is the queue's); studies alternate
  chest and head CT of ``--instances`` slices
  (64x64), every patient of its own;
* every site's PACS: one recording storage SCP in this process (the harness's
  :class:`adapters.harness.pacs.BuiltinPacs`) that accepts any called AE title and
  records it, so the sites' PACS are told apart by the AE title the hub called.

It reports studies per minute (from the first instance sent to the last result held),
the time from a study's last instance acknowledged at the hub to its site's PACS
holding the SR (p50, p95, max; the study's quiet time ``--stable`` is part of it), the
hub's memory (the RSS of its process tree, sampled every second) at each quarter of
the results and at its peak, and checks that every study's result reached its own
site's PACS and no other. Exits 1 when a result is missing or went astray.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pydicom

from adapters.dicom.synthetic import generate_study
from adapters.harness.modality import send_files
from adapters.harness.pacs import BuiltinPacs
from tests.peers import LOOPBACK, free_port
from tests.service import Radbridge, base_config, dicom_block


@dataclass(frozen=True)
class Study:
    site: int
    number: int
    files: list[Path]
    study_uid: str

    @property
    def sender(self) -> str:
        return f"S{self.site:03d}_CT"

    @property
    def pacs(self) -> str:
        return f"S{self.site:03d}_PACS"


def hub_config(
    folder: Path, port: int, pacs_port: int, vendors: dict[str, int], args: Any
) -> dict[str, Any]:
    """The hub's configuration: the sites, two vendors, two routes to ``site.pacs``."""
    config = base_config(folder, port)
    config["dicom"]["study_stable_seconds"] = args.stable
    # every site connects from 127.0.0.1 here (in the field each from its own address)
    config["dicom"]["max_connections_per_peer"] = 4 * args.senders + 16
    config["sites"] = {
        f"s{n:03d}": {
            "name": f"Site {n:03d}",
            "senders": [{"ae_title": f"S{n:03d}_CT", "host": LOOPBACK}],
            "targets": {"pacs": dicom_block(f"S{n:03d}_PACS", pacs_port, calling_ae="HUB")},
        }
        for n in range(1, args.sites + 1)
    }
    config["vendors"] = {
        name: {
            "product": product,
            "transport": dicom_block(name.upper(), vendors[name]),
            "concurrency": 4,
            "results": {"quiet_seconds": 0.3},
        }
        for name, product in (("lungai", "CT lung nodule"), ("ichai", "Head CT bleed"))
    }
    config["routes"] = [
        {"name": "chest-ct", "when": {"modality": "CT", "body_part": "CHEST"}}
        | {"send": ["lungai"], "write_back": ["site.pacs"]},
        {"name": "head-ct", "when": {"modality": "CT", "body_part": "HEAD"}}
        | {"send": ["ichai"], "write_back": ["site.pacs"]},
    ]
    return config


def vendor_process(
    product: str, ae_title: str, port: int, hub_port: int, delay: float, log: Path
) -> subprocess.Popen[bytes]:
    """A simulated vendor (``radbridge harness vendor run``) in a process of its own."""
    command = [
        str(Path(sys.executable).with_name("radbridge")),
        "harness", "vendor", "run", "--product", product, "--port", str(port),
        "--ae-title", ae_title, "--delay", str(delay), "--results-ae", "RADBRIDGE_RES",
        "--results-port", str(hub_port),
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
            start_new_session=True,
        )


def make_studies(folder: Path, args: Any) -> list[Study]:
    """Every site's studies, in the order they are sent (site by site, round after round)."""
    studies = []
    for number in range(args.studies):
        for site in range(1, args.sites + 1):
            kind = "ct_chest" if (site + number) % 2 else "ct_head"
            files = generate_study(
                kind,  # type: ignore[arg-type]
                folder / f"s{site:03d}" / str(number),
                instances=args.instances,
                rows=64,
                columns=64,
                patient_id=f"S{site:03d}P{number:03d}",
                accession=f"S{site:03d}A{number:03d}",
            )
            uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            studies.append(Study(site, number, files, uid))
    return studies


class Memory:
    """The RSS of a process and its children, sampled every second in a thread."""

    def __init__(self, pid: int, progress: Any) -> None:
        self.root = psutil.Process(pid)
        self.progress = progress
        self.samples: list[tuple[float, int, int]] = []
        """(time, results held so far, RSS bytes)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = 0
        for process in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.progress(), self.rss()))
            self._stop.wait(1.0)

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(args: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-regional-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        if args.keep:
            folder = Path(tempfile.mkdtemp(prefix="bench-regional-kept-", dir=args.workdir))
            print(f"kept in {folder}")
        started = time.perf_counter()
        studies = make_studies(folder / "studies", args)
        print(f"{len(studies)} studies generated in {time.perf_counter() - started:.1f} s")
        by_uid = {s.study_uid: s for s in studies}
        hub_port = free_port()
        vendors = {"lungai": free_port(), "ichai": free_port()}
        recorder = BuiltinPacs(folder / "pacs", ae_title="ANY_PACS", max_associations=64)
        with recorder as pacs:
            procs = [
                vendor_process(
                    kind, name.upper(), vendors[name], hub_port, args.vendor_delay, folder / name
                )
                for name, kind in (("lungai", "lung-nodule-ct"), ("ichai", "head-ct-bleed"))
            ]
            hub = Radbridge(
                folder / "hub", hub_config(folder / "hub", hub_port, pacs.port, vendors, args)
            )
            try:
                hub.start()
                assert hub.process is not None
                return measure(hub, pacs, studies, by_uid, args)
            finally:
                hub.close()
                for proc in procs:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(10)


def measure(
    hub: Radbridge,
    pacs: BuiltinPacs,
    studies: list[Study],
    by_uid: dict[str, Study],
    args: Any,
) -> dict[str, Any]:
    """Send every study, wait for every result, and the figures."""
    sent_at: dict[str, float] = {}
    failures: list[str] = []
    retries: list[str] = []

    def send(study: Study) -> None:
        """Send as a modality does: a refused or failed send again, up to three times."""
        for attempt in range(3):
            report = send_files(
                study.files,
                host=LOOPBACK,
                port=hub.port,
                called_ae="RADBRIDGE",
                calling_ae=study.sender,
            )
            sent_at[study.study_uid] = time.time()
            if report.ok:
                return
            retries.append(study.study_uid)
            time.sleep(1 + attempt)
        failures.append(f"{study.sender} study {study.number}: {report.failures[0].reason}")

    def results_held() -> int:
        return len({r.study_uid for r in list(pacs.received)})

    assert hub.process is not None
    with Memory(hub.process.pid, results_held) as memory:
        first = time.time()
        with ThreadPoolExecutor(args.senders) as pool:
            for n, study in enumerate(studies):
                if args.rate:  # the offered load: study n at its time
                    time.sleep(max(0.0, first + n * 60 / args.rate - time.time()))
                pool.submit(send, study)
        print(f"sent in {time.time() - first:.1f} s; waiting for the results")
        deadline = time.time() + args.wait
        while results_held() < len(studies) and time.time() < deadline:
            time.sleep(0.5)
        last = max((r.at for r in list(pacs.received)), default=time.time())
    received = list(pacs.received)
    first_held: dict[str, float] = {}
    astray = []
    for r in received:
        study = by_uid.get(r.study_uid)
        if study is None or r.called_ae != study.pacs:
            astray.append(
                f"{r.study_uid} at {r.called_ae} (sent by {study.sender if study else '?'})"
            )
            continue
        first_held[r.study_uid] = min(first_held.get(r.study_uid, r.at), r.at)
    missing = [s for s in studies if s.study_uid not in first_held]
    latencies = [first_held[u] - sent_at[u] for u in first_held if u in sent_at]
    rss = [(n, b) for _t, n, b in memory.samples]
    quarters = {}
    for q in (0, 25, 50, 75, 100):
        want = len(studies) * q / 100
        at = [b for n, b in rss if n >= want]
        quarters[f"{q}%"] = round((at[0] if at else rss[-1][1]) / 2**20, 1)
    figures = {
        "sites": args.sites,
        "studies_per_site": args.studies,
        "studies": len(studies),
        "instances_per_study": args.instances,
        "senders": args.senders,
        "offered_per_minute": args.rate or None,
        "stable_seconds": args.stable,
        "vendor_delay": args.vendor_delay,
        "minutes": round((last - first) / 60, 2),
        "studies_per_minute": round(len(studies) / ((last - first) / 60), 1),
        "latency_p50": round(percentile(latencies, 0.5), 2) if latencies else None,
        "latency_p95": round(percentile(latencies, 0.95), 2) if latencies else None,
        "latency_max": round(max(latencies), 2) if latencies else None,
        "hub_rss_mib_at_results": quarters,
        "hub_rss_mib_peak": round(max(b for _n, b in rss) / 2**20, 1),
        "results_at_own_site": len(first_held),
        "results_astray": len(astray),
        "studies_without_result": len(missing),
        "send_retries": len(retries),
        "send_failures": len(failures),
    }
    for text in (failures + astray)[:10]:
        print("  !", text)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--studies", type=int, default=10, help="studies per site")
    parser.add_argument("--instances", type=int, default=3, help="slices per study")
    parser.add_argument("--senders", type=int, default=8, help="associations at once")
    parser.add_argument("--stable", type=float, default=1.5, help="study_stable_seconds")
    parser.add_argument("--vendor-delay", type=float, default=0.2)
    parser.add_argument(
        "--rate", type=float, default=0, help="studies a minute offered (0: as fast as they go)"
    )
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for results")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="scratch space (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the hub's folder and logs")
    args = parser.parse_args()
    os.environ.setdefault("TCP_NODELAY", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the hub and vendors too
    figures = run(args)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    bad = figures["results_astray"] or figures["studies_without_result"] or figures["send_failures"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
