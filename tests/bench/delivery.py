"""Delivery benchmark: radbridge's DICOM push against dcmtk storescu, in one run.

    .venv/bin/python -m tests.bench.delivery [--repeats N] [--instances N] [--small N]
        [--vendor-pdu BYTES] [--bus URL] [--deidentify] [--memory [--large-gib G]]

Generates a 200-instance chest CT (about 105 MB) into a spool indexed in a
SQLite store, then sends it to a fresh dcmtk ``storescp`` (``+B --fork``,
TCP_NODELAY=1; its maximum PDU 16 KiB, or ``--vendor-pdu``) each time:

* ``storescu``: dcmtk sending the same files (each in its own transfer syntax);
* ``transport``: :class:`adapters.vendors.dicom.DicomTransport` alone, with
  the CPU time this process spent on each send (all its threads);
* ``job``: the whole path, dispatch → bus → worker → transport → state
  ``awaiting_result``, with the latency from dispatch to the first instance
  appearing in storescp's folder;
* ``job-deid`` (``--deidentify``): the same with the vendor's ``deidentify:
  {profile: basic}`` (copies made, pseudonyms recorded, then sent).

The same three again with ``--small`` (1,000 by default) CT slices of 160x160,
about 52 KB each, as the ingest benchmark sends, in instances per second too.
Then the ``stat`` wait: 50 routine one-instance jobs are queued for a vendor
with concurrency 1 and a stat job after them; the time from publishing the
stat job to its claim is reported. Medians; MB/s are 10^6 bytes of files per
second. The load average is printed at the start of each study and at the end:
other work on the machine moves every figure, so compare ratios within a run.

``--memory`` runs the memory check alone: a study of about ``--large-gib`` GiB
(2 by default) of 64 MiB multi-frame instances is generated into the spool and
indexed, and the whole job path pushes it to a storescp that receives and
discards (``--ignore``, so its disk is not the limit); the peak RSS of this
process (dispatcher, bus, worker and transport all run in it), sampled every
5 ms, less its RSS before the job, is the growth reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.synthetic import generate_large_study, generate_study
from adapters.vendors.dicom import DicomPushSettings, DicomTransport
from broker.engine.bus import Bus
from broker.engine.dispatch import Dispatcher, JobRequest, JobWorker
from broker.engine.plan import FixedPlan, FixedPlans, VendorSpec
from broker.model.deid import Deidentify
from broker.model.domain import Priority
from broker.model.jobs import JobState
from broker.store import JobStore, StudyStore, make_engine
from broker.store.migrate import migrate
from broker.store.spool import Spool
from tests.memory import PeakRss
from tests.peers import LOOPBACK, StoreSCP, storescu

MB = 1_000_000
MIB = 1024 * 1024


def _index(
    engine_url: str, spool: Spool, generate: Callable[[Path], list[Path]]
) -> tuple[str, list[Path]]:
    """The files ``generate`` writes into a scratch folder, moved into the spool and indexed."""
    engine = make_engine(engine_url)
    studies = StudyStore(engine)
    placed = []
    out = spool.root / f"gen-{uuid.uuid4().hex[:8]}"
    study_uid = ""
    for path in generate(out):
        meta = read_file_meta_info(path)
        rec = instance_record_from_spooled_file(path)
        final = spool.path_for(rec.study_uid, rec.series_uid, str(meta.MediaStorageSOPInstanceUID))
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, final)
        studies.record_instance(instance_record_from_spooled_file(final), 0.0)
        placed.append(final)
        study_uid = rec.study_uid
    shutil.rmtree(out, ignore_errors=True)
    engine.dispose()
    return study_uid, placed


def _study(kind: str, **options: object) -> Callable[[Path], list[Path]]:
    return lambda out: generate_study(kind, out, **options)  # type: ignore[arg-type]


def _timed(
    work: Path, name: str, send: Callable[[StoreSCP], None], vendor_args: Sequence[str] = ()
) -> float:
    folder = work / f"{name}-{uuid.uuid4().hex[:6]}"
    with StoreSCP(folder, ae_title="VENDOR", extra_args=vendor_args) as scp:
        started = time.perf_counter()
        send(scp)
        seconds = time.perf_counter() - started
        shutil.rmtree(scp.folder, ignore_errors=True)
    return seconds


def _spec(name: str, port: int, concurrency: int = 1) -> VendorSpec:
    params = {"ae_title": "VENDOR", "host": LOOPBACK, "port": port, "timeout": 60}
    return VendorSpec(name=name, transport="dicom", params=params, concurrency=concurrency)


def _wait(predicate: Callable[[], bool], timeout: float = 300.0, poll: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark timed out")
        time.sleep(poll)


@dataclass(frozen=True)
class JobRun:
    seconds: float
    """From dispatch to ``awaiting_result``."""
    first: float | None
    """From dispatch to the first instance in the vendor's folder (None: it discards)."""
    rss_growth: int | None = None
    """Peak RSS of this process while the job ran, less its RSS at dispatch (``memory``)."""


def _job_run(
    url: str,
    bus_url: str,
    work: Path,
    study_uid: str,
    profile: Deidentify | None = None,
    *,
    memory: bool = False,
    vendor_args: Sequence[str] = (),
) -> JobRun:
    """One job through dispatch, bus, worker and push; with ``profile`` the vendor gets
    de-identified copies; with ``memory`` the vendor discards what it receives (storescp
    ``--ignore``) and this process's RSS is sampled from dispatch on; ``vendor_args`` go
    to storescp."""
    engine = make_engine(url)
    jobs = JobStore(engine)
    bus = Bus(bus_url, prefix=f"rbbench-{uuid.uuid4().hex[:8]}")
    folder = work / f"job-{uuid.uuid4().hex[:6]}"
    if memory:
        vendor_args = [*vendor_args, "--ignore"]
    with StoreSCP(folder, ae_title="VENDOR", extra_args=vendor_args) as scp:
        vendor = f"v{uuid.uuid4().hex[:6]}"
        specs = {vendor: _spec(vendor, scp.port)}
        transports = {vendor: DicomPushSettings.from_params(vendor, specs[vendor].params)}
        plans = FixedPlans(
            FixedPlan(
                vendors=specs,
                transports=transports,
                deidentified={vendor: profile} if profile is not None else {},
                pseudonym_secret=f"bench-{uuid.uuid4().hex}" if profile is not None else None,
            )
        )
        worker = JobWorker(engine, bus, plans, scratch=work / "scratch").start()
        rss = PeakRss()
        first = None
        try:
            with rss if memory else contextlib.nullcontext():
                started = time.perf_counter()
                [created] = Dispatcher(jobs, bus, plans).dispatch(
                    [JobRequest(study_uid, vendor, route="bench")]
                )
                if not memory:
                    _wait(lambda: any(p.is_file() for p in scp.folder.iterdir()))
                    first = time.perf_counter() - started
                _wait(
                    lambda: jobs.get(created.job.id).state is JobState.AWAITING_RESULT,
                    timeout=3600,
                    poll=0.01,
                )
                seconds = time.perf_counter() - started
        finally:
            worker.stop()
            bus.delete(specs)
            bus.close()
            engine.dispose()
        shutil.rmtree(scp.folder, ignore_errors=True)
    return JobRun(seconds, first, rss.growth if memory else None)


def _stat_wait(url: str, bus_url: str, work: Path, spool: Spool, routine: int) -> float:
    uids = [
        _index(url, spool, _study("ct_head", instances=1, rows=64, columns=64))[0]
        for _ in range(routine + 1)
    ]
    engine = make_engine(url)
    jobs = JobStore(engine)
    bus = Bus(bus_url, prefix=f"rbbench-{uuid.uuid4().hex[:8]}")
    with StoreSCP(work / f"stat-{uuid.uuid4().hex[:6]}", ae_title="VENDOR") as scp:
        vendor = "ichai"
        specs = {vendor: _spec(vendor, scp.port, concurrency=1)}
        transports = {vendor: DicomPushSettings.from_params(vendor, specs[vendor].params)}
        plans = FixedPlans(FixedPlan(vendors=specs, transports=transports))
        dispatcher = Dispatcher(jobs, bus, plans)
        worker = JobWorker(engine, bus, plans).start()
        try:
            dispatcher.dispatch([JobRequest(uid, vendor, route="r") for uid in uids[:routine]])
            started = time.perf_counter()
            [stat] = dispatcher.dispatch(
                [JobRequest(uids[routine], vendor, route="stat", priority=Priority.STAT)]
            )
            _wait(lambda: jobs.get(stat.job.id).attempts > 0)
            waited = time.perf_counter() - started
            before = sum(
                1
                for j in jobs.list(vendor=vendor)
                if j.id != stat.job.id and j.state is not JobState.PENDING
            )
            print(f"  stat claimed after {before} of {routine} routine jobs had started")
            _wait(lambda: not jobs.list(state=JobState.PENDING, vendor=vendor), 600)
        finally:
            worker.stop()
            bus.delete(specs)
            bus.close()
            engine.dispose()
    return waited


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _compare(
    args: argparse.Namespace, url: str, work: Path, study_uid: str, files: list[Path]
) -> None:
    """storescu, the transport and the job path sending ``files``, interleaved, each to a
    fresh storescp; medians, ratios and the transport's CPU printed."""
    size = sum(p.stat().st_size for p in files)
    print(f"{len(files)} instances, {size / MB:.1f} MB; {_load()}")
    vendor = ["-pdu", str(args.vendor_pdu)] if args.vendor_pdu else []
    _job_run(url, args.bus, work, study_uid, vendor_args=vendor)  # warm-up
    results: dict[str, list[float]] = {"storescu": [], "transport": [], "job": []}
    if args.deidentify:
        results["job-deid"] = []
    firsts: list[float] = []
    cpu: list[float] = []
    transport = DicomTransport(
        "bench", DicomPushSettings(ae_title="VENDOR", host=LOOPBACK, port=1, timeout=60)
    )

    def push(scp: StoreSCP) -> None:
        transport.settings = transport.settings.model_copy(update={"port": scp.port})
        started = time.process_time()
        transport.send(None, files)  # type: ignore[arg-type]
        cpu.append(time.process_time() - started)

    def dcmtk(scp: StoreSCP) -> None:
        storescu(files, scp.port, called_ae="VENDOR", calling_ae="RADBRIDGE")

    for _ in range(args.repeats):
        results["storescu"].append(_timed(work, "storescu", dcmtk, vendor))
        results["transport"].append(_timed(work, "transport", push, vendor))
        job = _job_run(url, args.bus, work, study_uid, vendor_args=vendor)
        results["job"].append(job.seconds)
        firsts.append(job.first or 0.0)
        if args.deidentify:
            results["job-deid"].append(
                _job_run(url, args.bus, work, study_uid, Deidentify(), vendor_args=vendor).seconds
            )
    base = statistics.median(results["storescu"])
    for name, seconds in results.items():
        median = statistics.median(seconds)
        print(
            f"{name:10s} {size / MB / median:7.1f} MB/s  {len(files) / median:6.0f} inst/s"
            f"  {median:6.3f} s  ratio to storescu {base / median:4.2f}"
        )
    per_instance = statistics.median(cpu) / len(files) * 1e6
    print(
        f"transport CPU (this process, all threads): median {statistics.median(cpu) * 1000:.0f}"
        f" ms a send, {per_instance:.0f} us an instance"
    )
    first_ms = statistics.median(firsts) * 1000
    print(f"dispatch -> first instance at the vendor: median {first_ms:.0f} ms")


def _throughput(args: argparse.Namespace, url: str, work: Path, spool: Spool) -> None:
    """The CT, then the small instances, then the stat job's wait."""
    print(f"{datetime.now():%Y-%m-%d %H:%M}")
    _compare(args, url, work, *_index(url, spool, _study("ct_chest", instances=args.instances)))
    if args.small:
        small = _study("ct_chest", instances=args.small, rows=160, columns=160)
        _compare(args, url, work, *_index(url, spool, small))
    waited = _stat_wait(url, args.bus, work, spool, args.routine)
    print(f"stat job wait with {args.routine} routine jobs queued: {waited * 1000:.0f} ms")
    print(_load())


def _memory(args: argparse.Namespace, url: str, work: Path, spool: Spool) -> None:
    """A ~2 GiB study through the whole job path; this process's peak RSS growth."""
    warm_uid, _ = _index(url, spool, _study("ct_head", instances=2, rows=64, columns=64))
    _job_run(url, args.bus, work, warm_uid, memory=True)  # warm-up: imports, first buffers
    started = time.perf_counter()
    total = int(args.large_gib * 2**30)
    study_uid, files = _index(url, spool, lambda out: generate_large_study(out, total))
    generated = time.perf_counter() - started
    size = sum(p.stat().st_size for p in files)
    print(
        f"{datetime.now():%Y-%m-%d %H:%M}  {len(files)} instances of"
        f" {files[0].stat().st_size / MIB:.0f} MiB, {size / MB:.0f} MB"
        f" (generated and indexed in {generated:.0f} s); {_load()}"
    )
    run = _job_run(url, args.bus, work, study_uid, memory=True)
    growth = run.rss_growth or 0
    print(
        f"job to a discarding storescp: {size / MB / run.seconds:.1f} MB/s, {run.seconds:.1f} s;"
        f" peak RSS growth of this process {growth / MIB:.1f} MiB"
    )
    print(_load())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--routine", type=int, default=50)
    parser.add_argument(
        "--small", type=int, default=1000, help="small instances (160x160 CT slices; 0: none)"
    )
    parser.add_argument("--bus", default="memory://")
    parser.add_argument(
        "--deidentify", action="store_true", help="also the job path with the basic profile"
    )
    parser.add_argument(
        "--vendor-pdu", type=int, default=0, help="storescp's -pdu (4096..131072; 0: 16384)"
    )
    parser.add_argument("--memory", action="store_true", help="only the memory run")
    parser.add_argument("--large-gib", type=float, default=2.0, help="the memory run's study")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radbridge-bench-delivery-") as tmp:
        work = Path(tmp)
        spool = Spool(work / "spool")
        spool.prepare()
        url = f"sqlite:///{work / 'radbridge.db'}"
        migrate(make_engine(url))
        if args.memory:
            _memory(args, url, work, spool)
        else:
            _throughput(args, url, work, spool)


if __name__ == "__main__":
    main()
