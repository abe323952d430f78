"""A vendor's HTTP API told that a job is cancelled (``DELETE {url}/{job_id}``), against a
loopback vendor API: which answers count as told, which are retried, which refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.vendors.http import HttpRejectedError, HttpSettings, HttpUnavailableError
from broker.model.vendor import TransportContext, is_retryable
from tests.databases import empty_database
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
