"""Contract quotas with scale-out: `radbridge serve` routing and two `radbridge worker`
processes sending and counting on PostgreSQL and RabbitMQ. Six chest CTs, two products
of the same kind: a trial of 2 free studies then billed per use, and a package of 2 then
stop. The trial counts exactly 2 free uses however the two workers interleave, the package
sends exactly 2 studies, and `radbridge usage report` says so with each contract. (The
jobs are watched in the store itself: a CLI process per poll would cost more than the
service.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.dicom.synthetic import generate_study
from broker.model.jobs import JobState
from broker.store import JobStore, make_engine
from tests.e2e.test_job_workers import Workers, _config, database, workers
from tests.peers import StoreSCP, storescu, wait_until
from tests.service import Radbridge

pytestmark = [pytest.mark.timeout(300), pytest.mark.rabbitmq, pytest.mark.postgres]
__all__ = ["database", "workers"]  # fixtures shared with the job-worker tests

STUDIES = 6
TRIAL = 2
PACKAGE = 2


def _contracts(config: dict[str, Any]) -> dict[str, Any]:
    lungai = config["vendors"]["lungai"]
    lungai["kind"] = "lung-nodule-ct"
    config["vendors"]["lungpkg"] = {**lungai, "product": "CT lung nodule (package)"}
    config["routes"][0]["send"] = ["lungai", "lungpkg"]
    config["contracts"] = {
        "lungai-trial": {
            "vendor": "lungai",
            "kind": "trial",
            "quota": TRIAL,
            "price": 30,
            "currency": "CNY",
            "payer": "device_maker",
            "when_used_up": "bill",
        },
        "lungpkg-2026": {
            "vendor": "lungpkg",
            "kind": "package",
            "quota": PACKAGE,
            "payer": "hospital",
            "price_code": "330100017",
            "province": "Zhejiang",
            "when_used_up": "stop",
        },
    }
    return config


def test_two_workers_on_postgresql_never_pass_a_quota(
    radbridge_factory: Callable[..., Radbridge],
    workers: Workers,
    database: str,
    tmp_path: Path,
) -> None:
    """Six studies through serve and two workers: lungai 2 trial + 4 billed, lungpkg 2
    package uses and no third job; the usage report names each row's contract and payer;
    both workers sent (and counted) jobs."""
    # a second per instance: no worker can drain both lanes before the other takes a job
    slow = ["--sleep-after", "1"]
    with StoreSCP(tmp_path / "vendor", ae_title="LUNGAI", extra_args=slow) as vendor:
        config = _contracts(_config(tmp_path / "rb", database, vendor.port, 2))
        rb = radbridge_factory(config=config)
        workers.start(rb.config_path)
        files = [
            path
            for n in range(STUDIES)
            for path in generate_study(
                "ct_chest", tmp_path / f"ct{n}", instances=2, rows=16, columns=16
            )
        ]
        storescu(files, rb.port)
        store = make_engine(database)
        try:
            jobs = JobStore(store)
            wait_until(
                lambda: (
                    [j.state.value for j in jobs.list(limit=100)]
                    == ["awaiting_result"] * (STUDIES + PACKAGE)
                ),
                "every job to be sent",
                timeout=180,
            )
            senders = {
                event.worker
                for job in jobs.list(limit=100)
                for event in jobs.history(job.id)
                if event.to_state is JobState.SENT
            }
        finally:
            store.dispose()
    today = date.today()
    report = rb.cli(
        "usage", "report", "--format", "json",
        "--from", str(today - timedelta(days=1)), "--to", str(today + timedelta(days=1)),
    )  # fmt: skip
    lines: list[dict[str, Any]] = json.loads(report.stdout)
    per_vendor: dict[str, dict[str, int]] = {}
    for line in lines:
        counts = per_vendor.setdefault(line["vendor"], {"trial": 0, "billable": 0, "package": 0})
        for key in counts:
            counts[key] += line[key]
    assert per_vendor == {
        "lungai": {"trial": TRIAL, "billable": STUDIES - TRIAL, "package": 0},
        "lungpkg": {"trial": 0, "billable": 0, "package": PACKAGE},
    }
    assert {(line["vendor"], line["contract"], line["payer"]) for line in lines} == {
        ("lungai", "lungai-trial", "device_maker"),
        ("lungpkg", "lungpkg-2026", "hospital"),
    }
    assert senders == set(workers.ids)  # both workers sent (and counted) jobs
