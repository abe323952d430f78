"""Ingest benchmark: radbridge against Orthanc and dcmtk storescp, in one run.

    .venv/bin/python -m tests.bench.ingest [--quick | --memory] [--json FILE]

Generates a 200-instance chest CT (about 105 MB) once, then sends it with
dcmtk ``storescu`` (TCP_NODELAY=1, each file in its own transfer syntax) over
one association and over four concurrent associations (four storescu
processes, a quarter of the files each) to radbridge, Orthanc and storescp
(writing to disk). Every measurement starts a fresh receiver with an empty
folder, so each run is a first receipt, and waits until the receiver is idle
(:func:`settle`: its start-up is not its receiving); it is repeated (3 times by default)
and the median reported in MB/s (10^6 bytes of files per second) with the
ratios radbridge/Orthanc and radbridge/storescp.

Then the same for small instances (``--small``, default 1,000 CT slices of
160x160, about 52 KB each, as from a DX/CR or a health-check chain), reported in
instances per second.

The memory run (default, skipped with ``--quick``, alone with ``--memory``)
streams a ~2 GiB study of large multi-frame instances to radbridge with one
storescu and samples the RSS of radbridge's process tree (the service and
every child) every 50 ms; it prints the peak.

Each receiver keeps its own defaults (storescp and Orthanc advertise a
16 KiB maximum PDU, radbridge its configured ``max_pdu_size``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from adapters.dicom.synthetic import generate_large_study, generate_study
from tests.peers import (
    ManagedProcess,
    Orthanc,
    StoreSCP,
    dcmtk_env,
    echoscu,
    ensure_debian_packages,
    free_port,
    own_syntax_config,
    storescu_command,
    wait_for_port,
)

RADBRIDGE = Path(sys.executable).parent / "radbridge"
MB = 1_000_000
GIB = 1024**3
PEERS = ("radbridge", "orthanc", "storescp")
MODES = (1, 4)

RADBRIDGE_CONFIG = """\
storage: {{spool: ./spool, database: "sqlite:///./radbridge.db"}}
dicom:
  listen: {{host: 127.0.0.1, port: {port}}}
  ae_titles: {{RADBRIDGE: ingest}}
  allow_any_peer: true
  study_stable_seconds: 2
logging: {{level: WARNING, format: json}}
"""


class Receiver(Protocol):
    """A peer under test: started fresh in its own folder, counted, stopped."""

    @property
    def called_ae(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def pid(self) -> int: ...

    def start(self) -> Any: ...

    def received(self) -> int: ...

    def stop(self) -> None: ...


class RadbridgeServe(ManagedProcess):
    """``radbridge serve -c CFG`` in ``folder`` with the benchmark's configuration."""

    called_ae = "RADBRIDGE"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.log_path = folder / "radbridge.log"

    def start(self, timeout: float = 120.0) -> RadbridgeServe:
        """Start and wait until the port takes connections and echoscu gets an answer."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "radbridge.yaml"
        config.write_text(RADBRIDGE_CONFIG.format(port=self.port))
        self._start([str(RADBRIDGE), "serve", "-c", str(config)], cwd=self.folder)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                wait_for_port(self.port, timeout=0.5)
                if echoscu(self.port, called_ae=self.called_ae, check=False).returncode == 0:
                    return self
            except (TimeoutError, subprocess.TimeoutExpired):  # a loaded machine starts slowly
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"radbridge did not answer C-ECHO in {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def received(self) -> int:
        return sum(1 for _ in (self.folder / "spool" / "studies").rglob("*.dcm"))


class StoreSCPReceiver(StoreSCP):
    called_ae = "STORESCP"

    def received(self) -> int:
        return len(self.files())


class OrthancReceiver(Orthanc):
    called_ae = "ORTHANC"

    @property
    def port(self) -> int:
        return self.dicom_port

    def received(self) -> int:
        return int(self.statistics()["CountInstances"])


FACTORIES: dict[str, Callable[[Path], Receiver]] = {
    "radbridge": RadbridgeServe,
    "orthanc": OrthancReceiver,
    "storescp": lambda folder: StoreSCPReceiver(folder / "in"),
}


@dataclass
class Results:
    """Everything one run measured; printed as a table and written as JSON."""

    study: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    small_study: dict[str, Any] = field(default_factory=dict)
    small: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Instances per second of the small-instance study, per peer and mode."""
    errors: dict[str, str] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def median(self, peer: str, mode: int, *, small: bool = False) -> float | None:
        values = (self.small if small else self.runs).get(peer, {}).get(str(mode), [])
        return statistics.median(values) if values else None

    def ratio(self, peer: str, other: str, mode: int, *, small: bool = False) -> float | None:
        a, b = self.median(peer, mode, small=small), self.median(other, mode, small=small)
        return a / b if a is not None and b else None

    def as_json(self) -> dict[str, Any]:
        medians = {p: {str(m): self.median(p, m) for m in MODES} for p in self.runs}
        ratios = {
            f"radbridge/{other}": {str(m): self.ratio("radbridge", other, m) for m in MODES}
            for other in ("orthanc", "storescp")
        }
        small = {p: {str(m): self.median(p, m, small=True) for m in MODES} for p in self.small}
        small_ratios = {
            f"radbridge/{other}": {
                str(m): self.ratio("radbridge", other, m, small=True) for m in MODES
            }
            for other in ("orthanc", "storescp")
        }
        return {
            "study": self.study,
            "unit": "MB/s (10^6 bytes of DICOM files per second)",
            "runs": self.runs,
            "median": medians,
            "ratios": ratios,
            "small_study": self.small_study,
            "small_unit": "instances per second",
            "small_runs": self.small,
            "small_median": small,
            "small_ratios": small_ratios,
            "errors": self.errors,
            "memory": self.memory,
            "environment": self.environment,
        }


def send(groups: list[list[Path]], receiver: Receiver, config_args: list[str], log: Path) -> float:
    """Run one storescu per group, all at once; seconds until the last one exits."""
    with log.open("ab") as out:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                storescu_command(
                    group, receiver.port, called_ae=receiver.called_ae, extra_args=config_args
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dcmtk_env(),
            )
            for group in groups
        ]
        codes = [p.wait() for p in procs]
        elapsed = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(
            f"storescu exit codes {codes}:\n{log.read_text(errors='replace')[-3000:]}"
        )
    return elapsed


def split(files: list[Path], parts: int) -> list[list[Path]]:
    """``parts`` contiguous groups of nearly equal size."""
    size, extra = divmod(len(files), parts)
    groups, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        groups.append(files[start:end])
        start = end
    return groups


def settle(pid: int, *, quiet: float = 0.05, window: float = 0.5, limit: float = 10.0) -> None:
    """Wait until the process tree of ``pid`` uses less than ``quiet`` of a core over
    ``window`` seconds (``limit`` at most): what a receiver still does after it first answers
    (radbridge's first timer sweeps and lazy imports, about 0.25 CPU-s) is its start, not
    its receiving."""
    root = psutil.Process(pid)

    def used() -> float:
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    deadline = time.monotonic() + limit
    before = used()
    while time.monotonic() < deadline:
        time.sleep(window)
        now = used()
        if now - before < quiet * window:
            return
        before = now


def measure(peer: str, files: list[Path], mode: int, config_args: list[str], work: Path) -> float:
    """One first-receipt measurement against a freshly started and settled ``peer``: seconds."""
    folder = Path(tempfile.mkdtemp(prefix=f"{peer}-{mode}-", dir=work))
    receiver = FACTORIES[peer](folder)
    try:
        receiver.start()
        settle(receiver.pid)
        seconds = send(split(files, mode), receiver, config_args, folder / "storescu.log")
        got = receiver.received()
        if got != len(files):
            raise RuntimeError(f"{peer} holds {got} instances after sending {len(files)}")
    finally:
        receiver.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return seconds


class RssSampler(threading.Thread):
    """Samples the memory of a process and all its descendants every ``interval`` seconds.

    RSS (cheap) every sample; PSS, which splits shared pages between the
    processes that share them, every ``pss_every`` samples (reading smaps
    costs a few ms per process).
    """

    def __init__(self, pid: int, interval: float = 0.05, pss_every: int = 20) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.pss_every = pss_every
        self.stopped = threading.Event()
        self.peak_tree = 0
        self.peak_tree_pss = 0
        self.peak_process = 0
        self.processes = 0
        self.samples = 0

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        with_pss = self.samples % self.pss_every == 0
        total = total_pss = 0
        for proc in procs:
            try:
                if with_pss:
                    full = proc.memory_full_info()
                    rss, total_pss = full.rss, total_pss + full.pss
                else:
                    rss = proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            total += rss
            self.peak_process = max(self.peak_process, rss)
        self.peak_tree = max(self.peak_tree, total)
        self.peak_tree_pss = max(self.peak_tree_pss, total_pss)
        self.processes = max(self.processes, len(procs))
        self.samples += 1

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def measure_memory(work: Path, total_bytes: int) -> dict[str, Any]:
    """Send a large study to radbridge with one storescu; the peak RSS of its process tree."""
    started = time.perf_counter()
    files = generate_large_study(work / "large", total_bytes)
    generated = time.perf_counter() - started
    size = sum(f.stat().st_size for f in files)
    instance_bytes = files[0].stat().st_size
    config_args = own_syntax_config(files, work / "large.cfg")
    radbridge = RadbridgeServe(work / "memory")
    try:
        radbridge.start()
        sampler = RssSampler(radbridge.pid)
        sampler.sample()
        idle = sampler.peak_tree
        sampler.start()
        try:
            seconds = send([files], radbridge, config_args, work / "memory-storescu.log")
        finally:
            sampler.stop()
        if radbridge.received() != len(files):
            raise RuntimeError(f"radbridge holds {radbridge.received()} of {len(files)} instances")
    finally:
        radbridge.stop()
        shutil.rmtree(work / "memory", ignore_errors=True)
        shutil.rmtree(work / "large", ignore_errors=True)
    return {
        "study_bytes": size,
        "instances": len(files),
        "instance_bytes": instance_bytes,
        "generate_seconds": round(generated, 2),
        "send_seconds": round(seconds, 2),
        "mb_per_s": round(size / MB / seconds, 1),
        "idle_tree_rss_mb": round(idle / MB, 1),
        "peak_tree_rss_mb": round(sampler.peak_tree / MB, 1),
        "peak_tree_pss_mb": round(sampler.peak_tree_pss / MB, 1),
        "peak_single_process_rss_mb": round(sampler.peak_process / MB, 1),
        "processes": sampler.processes,
        "samples": sampler.samples,
    }


def _fmt(value: float | None, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.2f}{suffix}" if suffix else f"{value:.1f}"


def _table(results: Results, title: str, *, small: bool) -> list[str]:
    """One study's medians per receiver and mode, and radbridge's ratios."""
    lines = [title, f"{'receiver':<24}{'1 association':>16}{'4 associations':>16}"]
    for peer in results.small if small else results.runs:
        cells = "".join(f"{_fmt(results.median(peer, m, small=small)):>16}" for m in MODES)
        lines.append(f"{peer:<24}{cells}")
    for other in ("orthanc", "storescp"):
        ratios = (results.ratio("radbridge", other, m, small=small) for m in MODES)
        lines.append(f"{'radbridge/' + other:<24}" + "".join(f"{_fmt(r, 'x'):>16}" for r in ratios))
    return lines


def report(results: Results) -> str:
    """The human-readable tables."""
    lines = []
    for small, s in ((False, results.study), (True, results.small_study)):
        if not s:
            continue
        if small:
            size = s["bytes"] / s["instances"] / 1000
            what, unit = f"{s['instances']} small instances ({size:.0f} KB)", "instances/s"
        else:
            what, unit = f"a {s['instances']}-instance CT ({s['bytes'] / MB:.1f} MB)", "MB/s"
        title = (
            f"ingest of {what}, storescu with TCP_NODELAY=1, median of {s['repeats']} first "
            f"receipts, {unit}"
        )
        lines += _table(results, title, small=small)
    for peer, error in results.errors.items():
        lines.append(f"{peer}: not measured: {error.splitlines()[0] if error else '?'}")
    if results.memory:
        m = results.memory
        lines.append(
            f"memory: {m['study_bytes'] / GIB:.2f} GiB in {m['instances']} instances to "
            f"radbridge, one storescu, {m['mb_per_s']} MB/s: peak RSS of the process tree "
            f"{m['peak_tree_rss_mb']} MB in {m['processes']} processes (idle "
            f"{m['idle_tree_rss_mb']} MB; PSS peak {m['peak_tree_pss_mb']} MB; largest single "
            f"process {m['peak_single_process_rss_mb']} MB; {m['samples']} samples at 50 ms)"
        )
    return "\n".join(lines)


def _load() -> float:
    """The one-minute load average: other work on the machine moves every figure."""
    return round(os.getloadavg()[0], 2)


def environment() -> dict[str, Any]:
    dcmtk = subprocess.run(["storescu", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "dcmtk": dcmtk.stdout.splitlines()[0] if dcmtk.stdout else None,
        "platform": platform.platform(),
    }


def throughput(args: argparse.Namespace, work: Path, results: Results) -> None:
    """The CT in MB/s, then the small instances in instances/s, against every peer."""
    files = generate_study("ct_chest", work / "ct", instances=args.instances)
    size = sum(f.stat().st_size for f in files)
    results.study = {"instances": len(files), "bytes": size, "repeats": args.repeats}
    _runs(args, files, work, results, results.runs, lambda s: size / MB / s, "MB/s")
    if args.small:
        small = generate_study(
            "ct_chest", work / "small", instances=args.small, rows=160, columns=160
        )
        small_size = sum(f.stat().st_size for f in small)
        results.small_study = {
            "instances": len(small),
            "bytes": small_size,
            "repeats": args.repeats,
        }
        _runs(args, small, work, results, results.small, lambda s: len(small) / s, "inst/s")


def _runs(
    args: argparse.Namespace,
    files: list[Path],
    work: Path,
    results: Results,
    runs: dict[str, dict[str, list[float]]],
    rate: Callable[[float], float],
    unit: str,
) -> None:
    config_args = own_syntax_config(files, work / f"{files[0].parent.parent.name}.cfg")
    peers = [p for p in args.peers.split(",") if p]
    for peer in peers:
        runs[peer] = {str(m): [] for m in MODES}
    for repeat in range(args.repeats):
        for mode in MODES:
            for peer in peers:
                if peer in results.errors:
                    continue
                try:
                    value = rate(measure(peer, files, mode, config_args, work))
                except (RuntimeError, TimeoutError, OSError) as exc:
                    results.errors[peer] = str(exc)
                    runs.pop(peer, None)
                    print(f"{peer}: {exc}", file=sys.stderr)
                    continue
                runs[peer][str(mode)].append(round(value, 1))
                print(f"run {repeat + 1} {peer:<10} {mode} assoc: {value:7.1f} {unit}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.ingest", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="throughput only, no memory run")
    group.add_argument("--memory", action="store_true", help="the memory run only")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument(
        "--small", type=int, default=1000, help="small-instance study size (0: none)"
    )
    parser.add_argument("--large-gib", type=float, default=2.0, help="memory run study size")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated receivers")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder)")
    args = parser.parse_args(argv)

    ensure_debian_packages("storescu", "storescp", "echoscu", "Orthanc")
    results = Results(environment=environment())
    load_at_start = _load()
    with tempfile.TemporaryDirectory(prefix="radbridge-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        if not args.memory:
            throughput(args, work, results)
        if not args.quick:
            try:
                results.memory = measure_memory(work, int(args.large_gib * GIB))
            except (RuntimeError, TimeoutError, OSError) as exc:
                results.errors["radbridge memory"] = str(exc)
    results.environment["load_average"] = {"start": load_at_start, "end": _load()}
    print(report(results))
    print(f"load average: {load_at_start} at the start, {_load()} at the end")
    if args.json:
        args.json.write_text(json.dumps(results.as_json(), indent=2))
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
