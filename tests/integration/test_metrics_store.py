"""The figures /metrics reads from the store, on SQLite and PostgreSQL: jobs overdue (sent,
no result, deadline passed) per vendor, and write-backs by state and target."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from broker.engine.metrics import StoreCollector, read_figures
from broker.store.tables import deliveries, jobs
from tests.databases import DATABASES, empty_database

NOW = datetime.now(UTC)


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def _job(n: int, vendor: str, state: str, deadline: datetime | None) -> dict[str, Any]:
    return {
        "study_uid": f"1.2.3.{n}",
        "vendor": vendor,
        "route": "r",
        "priority": "ROUTINE",
        "state": state,
        "attempts": 1,
        "max_attempts": 3,
        "series_uids": "[]",
        "deadline_at": deadline,
        "created_at": NOW,
        "updated_at": NOW,
        "study_revision": 1,
    }


def _delivery(n: int, target: str, state: str) -> dict[str, Any]:
    return {
        "result_id": n,
        "job_id": n,
        "study_uid": f"1.2.3.{n}",
        "target": target,
        "target_type": "dicom",
        "kind": "result",
        "event": "result",
        "urgent": False,
        "state": state,
        "attempts": 1,
        "max_attempts": 5,
        "message_id": f"m{n}",
        "created_at": NOW,
        "updated_at": NOW,
    }


def test_overdue_jobs_and_deliveries_by_state(engine: Engine) -> None:
    """Only sent or awaiting jobs past their deadline count as overdue (not one before it, not
    one without a deadline, not a done one); deliveries are counted per target and state, and
    the collector reports every state of a target (0 included) and every vendor."""
    past, future = NOW - timedelta(minutes=5), NOW + timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(
            insert(jobs),
            [
                _job(1, "lungai", "awaiting_result", past),
                _job(2, "lungai", "sent", past),
                _job(3, "lungai", "awaiting_result", future),
                _job(4, "lungai", "awaiting_result", None),
                _job(5, "lungai", "done", past),
                _job(6, "ichai", "awaiting_result", future),
            ],
        )
        conn.execute(
            insert(deliveries),
            [
                _delivery(1, "pacs", "done"),
                _delivery(2, "pacs", "dead"),
                _delivery(3, "ris", "dead"),
            ],
        )
    figures = read_figures(engine)
    assert figures.overdue == {"lungai": 2}
    assert figures.deliveries == {("done", "pacs"): 1, ("dead", "pacs"): 1, ("dead", "ris"): 1}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in StoreCollector(engine, ("ichai", "lungai")).collect()
        for s in family.samples
    }
    assert samples[("radbridge_jobs_overdue", (("vendor", "lungai"),))] == 2
    assert samples[("radbridge_jobs_overdue", (("vendor", "ichai"),))] == 0
    assert samples[("radbridge_deliveries", (("state", "dead"), ("target", "ris")))] == 1
    assert samples[("radbridge_deliveries", (("state", "pending"), ("target", "ris")))] == 0
