"""A vendor's HTTP API told that a job is cancelled (``DELETE {url}/{job_id}``), against a
loopback vendor API: which answers count as told, which are retried, which refused; and
never before the manifest it cancels."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from adapters.vendors.http import HttpRejectedError, HttpSettings, HttpUnavailableError
from broker.model.jobs import Job, JobState
from broker.model.vendor import TransportContext, is_retryable
from broker.store.corrections import OperatorJobStore
from broker.store.job_tokens import JobTokens
from broker.store.jobs import JobStore
from broker.store.tables import deliveries
from tests.databases import DATABASES, empty_database
from tests.integration.contracts.kits import HttpVendorApi
from tests.writeback_data import Scene


def test_gone_counts_as_told_busy_is_retried_and_refused_is_final(tmp_path: Path) -> None:
    """404 and 410 (the vendor no longer has the job) count as told; 503 is retryable; 400
    is refused for good; each time the vendor gets the job id and the reason."""
    with empty_database("sqlite", tmp_path) as engine:
        job = Scene.make(engine, tmp_path).job("cloud", "chest")
        context = TransportContext("cloud", database_url=str(engine.url))
        told = {"job_id": job.id, "vendor": "cloud", "reason": "order_cancelled"}
        for status, outcome in (
            (404, None),
            (410, None),
            (503, HttpUnavailableError),
            (400, HttpRejectedError),
        ):
            with HttpVendorApi(status) as api:
                transport = HttpSettings.from_params("cloud", {"url": api.url}, context)
                try:
                    if outcome is None:
                        assert transport.cancel(job, "order_cancelled") is True
                    else:
                        with pytest.raises(outcome) as raised:
                            transport.cancel(job, "order_cancelled")
                        assert is_retryable(transport, raised.value) is (status == 503)
                finally:
                    transport.close()
                assert api.cancellations == [(f"/api/jobs/{job.id}", told)], status


def _claimed(engine: Engine, scene: Scene) -> Job:
    """The vendor ``cloud``'s job of the scene's study, claimed by a worker (being sent)."""
    jobs = JobStore(engine)
    claimed = jobs.claim(jobs.create(scene.study_uid, "cloud", route="chest").job.id)
    assert claimed is not None and claimed.state is JobState.SENDING
    return claimed


def _told(engine: Engine) -> list[str]:
    """The deliveries to ``vendor.cloud`` (telling it of a cancellation): their targets."""
    with engine.connect() as conn:
        return list(conn.execute(select(deliveries.c.target)).scalars())


@pytest.mark.parametrize("kind", DATABASES)
def test_a_job_cancelled_before_its_manifest_went_out_is_neither_posted_nor_told(
    kind: str, tmp_path: Path
) -> None:
    """A job an operator cancels while a worker sends it, before its manifest went out, is
    not POSTed (the send is refused for good, naming why) and its vendor gets no DELETE:
    no manifest of it went out, so nothing is to be told."""
    with empty_database(kind, tmp_path) as engine:
        scene = Scene.make(engine, tmp_path)
        claimed = _claimed(engine, scene)
        OperatorJobStore(engine).cancel(claimed.id)
        context = TransportContext("cloud", database_url=str(engine.url), result_timeout=600)
        with HttpVendorApi() as api:
            transport = HttpSettings.from_params("cloud", {"url": api.url}, context)
            try:
                with pytest.raises(HttpRejectedError, match="cancelled, no longer being sent"):
                    transport.send(claimed, scene.paths)
            finally:
                transport.close()
        assert api.seen == []
        assert _told(engine) == []


def test_a_cancel_waits_for_a_manifest_in_flight_until_its_sender_is_gone(
    tmp_path: Path,
) -> None:
    """A manifest whose sender died mid-POST (its token marked in flight, never posted)
    holds the vendor's DELETE back until its ``posting_until`` has passed, then lets it go."""
    with empty_database("sqlite", tmp_path) as engine:
        claimed = _claimed(engine, Scene.make(engine, tmp_path))
        tokens = JobTokens(engine)
        tokens.issue(claimed.id, 600, posting_seconds=1.5)
        context = TransportContext("cloud", database_url=str(engine.url))
        with HttpVendorApi() as api:
            transport = HttpSettings.from_params("cloud", {"url": api.url}, context)
            try:
                started = time.monotonic()
                assert transport.cancel(claimed, "cancelled") is True
                waited = time.monotonic() - started
            finally:
                transport.close()
        assert api.seen == [f"DELETE /api/jobs/{claimed.id}"]
        assert 1.0 <= waited < 10, waited
        assert tokens.posting_until(claimed.id) is None
