"""Delivery benchmark: radbridge's DICOM push against dcmtk storescu, in one run.

    .venv/bin/python -m tests.bench.delivery [--repeats N] [--instances N] [--bus URL]
        [--deidentify]

Generates a 200-instance chest CT (about 105 MB) into a spool indexed in a
SQLite store, then sends it to a fresh dcmtk ``storescp`` (``+B --fork``,
TCP_NODELAY=1) each time:

* ``storescu``: dcmtk sending the same files (each in its own transfer syntax);
* ``transport``: :class:`adapters.vendors.dicom.DicomTransport` alone;
* ``job``: the whole path, dispatch → bus → worker → transport → state
  ``awaiting_result``, with the latency from dispatch to the first instance
  appearing in storescp's folder;
* ``job-deid`` (``--deidentify``): the same with the vendor's ``deidentify:
  {profile: basic}`` (copies made, pseudonyms recorded, then sent).

Then the ``stat`` wait: 50 routine one-instance jobs are queued for a vendor
with concurrency 1 and a stat job after them; the time from publishing the
stat job to its claim is reported. Medians; MB/s are 10^6 bytes of files per
second.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.synthetic import generate_study
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
from tests.peers import LOOPBACK, StoreSCP, storescu

MB = 1_000_000


def _index(engine_url: str, spool: Spool, kind: str, **options: object) -> tuple[str, list[Path]]:
    engine = make_engine(engine_url)
    studies = StudyStore(engine)
    placed = []
    out = spool.root / f"gen-{uuid.uuid4().hex[:8]}"
    study_uid = ""
    for path in generate_study(kind, out, **options):  # type: ignore[arg-type]
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


def _timed(work: Path, name: str, send: Callable[[StoreSCP], None]) -> float:
    with StoreSCP(work / f"{name}-{uuid.uuid4().hex[:6]}", ae_title="VENDOR") as scp:
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


def _job_run(
    url: str, bus_url: str, work: Path, study_uid: str, profile: Deidentify | None = None
) -> tuple[float, float]:
    """(seconds to awaiting_result, seconds to the first instance at the vendor); with
    ``profile`` the vendor gets de-identified copies."""
    engine = make_engine(url)
    jobs = JobStore(engine)
    bus = Bus(bus_url, prefix=f"rbbench-{uuid.uuid4().hex[:8]}")
    with StoreSCP(work / f"job-{uuid.uuid4().hex[:6]}", ae_title="VENDOR") as scp:
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
        try:
            started = time.perf_counter()
            [created] = Dispatcher(jobs, bus, plans).dispatch(
                [JobRequest(study_uid, vendor, route="bench")]
            )
            _wait(lambda: any(p.is_file() for p in scp.folder.iterdir()))
            first = time.perf_counter() - started
            _wait(lambda: jobs.get(created.job.id).state is JobState.AWAITING_RESULT, poll=0.01)
            total = time.perf_counter() - started
        finally:
            worker.stop()
            bus.delete(specs)
            bus.close()
            engine.dispose()
        shutil.rmtree(scp.folder, ignore_errors=True)
    return total, first


def _stat_wait(url: str, bus_url: str, work: Path, spool: Spool, routine: int) -> float:
    uids = [
        _index(url, spool, "ct_head", instances=1, rows=64, columns=64)[0]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--routine", type=int, default=50)
    parser.add_argument("--bus", default="memory://")
    parser.add_argument(
        "--deidentify", action="store_true", help="also the job path with the basic profile"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radbridge-bench-delivery-") as tmp:
        work = Path(tmp)
        spool = Spool(work / "spool")
        spool.prepare()
        url = f"sqlite:///{work / 'radbridge.db'}"
        migrate(make_engine(url))
        study_uid, files = _index(url, spool, "ct_chest", instances=args.instances)
        size = sum(p.stat().st_size for p in files)
        print(f"{datetime.now():%Y-%m-%d %H:%M}  {len(files)} instances, {size / MB:.1f} MB")
        job = _job_run(url, args.bus, work, study_uid)  # warm-up
        results: dict[str, list[float]] = {"storescu": [], "transport": [], "job": []}
        if args.deidentify:
            results["job-deid"] = []
        firsts: list[float] = []
        for _ in range(args.repeats):
            results["storescu"].append(
                _timed(
                    work,
                    "storescu",
                    lambda scp: (
                        storescu(files, scp.port, called_ae="VENDOR", calling_ae="RADBRIDGE")
                        and None
                    ),
                )
            )
            transport = DicomTransport(
                "bench", DicomPushSettings(ae_title="VENDOR", host=LOOPBACK, port=1, timeout=60)
            )

            def push(scp: StoreSCP, transport: DicomTransport = transport) -> None:
                transport.settings = transport.settings.model_copy(update={"port": scp.port})
                transport.send(None, files)  # type: ignore[arg-type]

            results["transport"].append(_timed(work, "transport", push))
            job = _job_run(url, args.bus, work, study_uid)
            results["job"].append(job[0])
            firsts.append(job[1])
            if args.deidentify:
                deid = _job_run(url, args.bus, work, study_uid, Deidentify())
                results["job-deid"].append(deid[0])
        base = statistics.median(results["storescu"])
        for name, seconds in results.items():
            median = statistics.median(seconds)
            print(
                f"{name:10s} {size / MB / median:7.1f} MB/s  {median:6.3f} s"
                f"  ratio to storescu {base / median:4.2f}"
            )
        first_ms = statistics.median(firsts) * 1000
        print(f"dispatch -> first instance at the vendor: median {first_ms:.0f} ms")
        waited = _stat_wait(url, args.bus, work, spool, args.routine)
        print(f"stat job wait with {args.routine} routine jobs queued: {waited * 1000:.0f} ms")


if __name__ == "__main__":
    main()
