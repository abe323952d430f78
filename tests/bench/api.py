"""REST API benchmark: the main listings over a store of 100,000 studies (not a timed test).

    .venv/bin/python -m tests.bench.api [--studies 100000] [--repeats 20] [--postgres] [--json FILE]

Fills a fresh store (SQLite by default; ``--postgres`` a schema of its own on
127.0.0.1:5432) by bulk insert with N studies (one series and two instances
each), one job per study over four vendors and every job state, with its
history, and an API token; then serves the application with uvicorn on
loopback and times, with httpx, the first page, a filtered page and a deep
page (the cursor of the row 90 % down) of ``/api/v1/studies`` and
``/api/v1/jobs`` (100 rows each), plus ``/api/v1/vendors`` and ``/metrics``.
Prints the median and 95th percentile per endpoint, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine, insert, select

from adapters.api.pagination import encode
from adapters.web.app import create_app
from broker.model.domain import Role
from broker.model.jobs import JobState
from broker.runtime.edges import ServiceContext
from broker.runtime.reload import Reloader
from broker.runtime.snapshot import SnapshotHolder, build_snapshot
from broker.store import StudyStore
from broker.store.api_tokens import ApiTokens
from broker.store.spool import Spool
from broker.store.tables import instances, job_events, jobs, series, studies
from config.schema import Settings
from tests.databases import empty_database
from tests.peers import LOOPBACK, free_port

T0 = datetime(2024, 1, 1, tzinfo=UTC)
VENDORS = ("lungai", "ichai", "heartai", "ribai")
STATES = [s.value for s in JobState]
BATCH = 10_000


def fill(engine: Engine, n: int) -> None:
    """N studies with a series, two instances, a job and two job events each."""
    for start in range(0, n, BATCH):
        rows = range(start, min(start + BATCH, n))
        at = [T0 + timedelta(seconds=30 * i) for i in rows]
        with engine.begin() as conn:
            conn.execute(
                insert(studies),
                [
                    {
                        "study_uid": f"1.2.826.0.1.3680043.10.511.{i}",
                        "patient_id": f"P{i % 20000}",
                        "accession_number": f"A{i}",
                        "study_description": "CT CHEST",
                        "state": "stable" if i % 10 else "updated",
                        "revision": 1,
                        "stable_seconds": 10.0,
                        "calling_ae": "CT01",
                        "called_ae": "RADBRIDGE",
                        "peer_address": "10.0.0.1",
                        "first_received_at": t,
                        "last_received_at": t,
                        "due_at": t,
                        "stable_at": t,
                    }
                    for i, t in zip(rows, at, strict=True)
                ],
            )
            conn.execute(
                insert(series),
                [
                    {
                        "series_uid": f"1.2.826.0.1.3680043.10.511.{i}.1",
                        "study_uid": f"1.2.826.0.1.3680043.10.511.{i}",
                        "modality": "CT" if i % 4 else "MR",
                        "body_part": "CHEST",
                        "series_number": 1,
                        "slice_thickness": 1.0,
                    }
                    for i in rows
                ],
            )
            conn.execute(
                insert(instances),
                [
                    {
                        "sop_instance_uid": f"1.2.826.0.1.3680043.10.511.{i}.1.{k}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "series_uid": f"1.2.826.0.1.3680043.10.511.{i}.1",
                        "study_uid": f"1.2.826.0.1.3680043.10.511.{i}",
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "instance_number": k,
                        "path": f"/spool/{i}/{k}.dcm",
                        "size": 525_000,
                        "calling_ae": "CT01",
                        "called_ae": "RADBRIDGE",
                        "peer_address": "10.0.0.1",
                        "received_at": t,
                        "receive_count": 1,
                    }
                    for i, t in zip(rows, at, strict=True)
                    for k in (1, 2)
                ],
            )
            conn.execute(
                insert(jobs),
                [
                    {
                        "id": i + 1,
                        "study_uid": f"1.2.826.0.1.3680043.10.511.{i}",
                        "vendor": VENDORS[i % len(VENDORS)],
                        "route": "chest",
                        "priority": "routine",
                        "state": STATES[(i // 4) % len(STATES)],
                        "attempts": 1,
                        "max_attempts": 5,
                        "series_uids": "[]",
                        "created_at": t,
                        "updated_at": t,
                        "study_revision": 1,
                    }
                    for i, t in zip(rows, at, strict=True)
                ],
            )
            conn.execute(
                insert(job_events),
                [
                    {
                        "job_id": i + 1,
                        "at": t + timedelta(seconds=k),
                        "from_state": None if k == 0 else "pending",
                        "to_state": "pending" if k == 0 else STATES[(i // 4) % len(STATES)],
                        "attempt": k,
                    }
                    for i, t in zip(rows, at, strict=True)
                    for k in (0, 1)
                ],
            )


@contextmanager
def serving(engine: Engine, settings: Settings, folder: Path) -> Iterator[str]:
    context = ServiceContext(
        settings=settings,
        engine=engine,
        store=StudyStore(engine),
        spool=Spool(folder / "spool"),
        snapshots=(holder := SnapshotHolder(build_snapshot(settings, None))),
        reloader=Reloader(holder, None),
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine, context), host=LOOPBACK, port=port, log_config=None, lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def measure(client: httpx.Client, path: str, repeats: int) -> dict[str, Any]:
    times = []
    rows = 0
    for _ in range(repeats):
        start = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        answer.raise_for_status()
        body = answer.json() if "json" in answer.headers["content-type"] else None
        rows = len(body["items"]) if isinstance(body, dict) and "items" in body else rows
    times.sort()
    return {
        "path": path,
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
        "rows": rows,
    }


def run(kind: str, n: int, repeats: int) -> list[dict[str, Any]]:
    settings = Settings.model_validate(
        {
            "vendors": {
                v: {
                    "product": v,
                    "transport": {
                        "type": "dicom",
                        "ae_title": v.upper(),
                        "host": LOOPBACK,
                        "port": 9,
                    },
                }
                for v in VENDORS
            }
        }
    )
    with tempfile.TemporaryDirectory() as tmp, empty_database(kind, Path(tmp)) as engine:
        start = time.perf_counter()
        fill(engine, n)
        filled = time.perf_counter() - start
        print(f"{kind}: filled {n} studies, {n} jobs in {filled:.1f} s", file=sys.stderr)
        token = ApiTokens(engine).create(Role.VIEWER, "bench")
        deep = int(n * 0.9)
        with engine.connect() as conn:
            row = conn.execute(
                select(studies.c.last_received_at, studies.c.id)
                .order_by(studies.c.last_received_at.desc(), studies.c.id.desc())
                .offset(deep)
                .limit(1)
            ).one()
        study_cursor = encode([row.last_received_at, row.id])
        job_cursor = encode([n - deep])
        paths = [
            "/api/v1/studies?limit=100",
            "/api/v1/studies?limit=100&state=updated",
            "/api/v1/studies?limit=100&from=2024-01-10&to=2024-01-12",
            f"/api/v1/studies?limit=100&cursor={study_cursor}",
            "/api/v1/jobs?limit=100",
            "/api/v1/jobs?limit=100&state=dead&vendor=ichai",
            "/api/v1/jobs?limit=100&state=failed&state=dead",
            f"/api/v1/jobs?limit=100&cursor={job_cursor}",
            "/api/v1/vendors?probe=false",
            "/metrics",
        ]
        with (
            serving(engine, settings, Path(tmp)) as base,
            httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as client,
        ):
            for path in paths:  # warm up
                client.get(path).raise_for_status()
            return [{"store": kind, **measure(client, p, repeats)} for p in paths]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run("sqlite", args.studies, args.repeats)
    if args.postgres:
        results += run("postgresql", args.studies, args.repeats)
    print(f"{'store':<11} {'median ms':>9} {'p95 ms':>8} {'rows':>5}  endpoint")
    for r in results:
        print(f"{r['store']:<11} {r['median_ms']:>9} {r['p95_ms']:>8} {r['rows']:>5}  {r['path']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
