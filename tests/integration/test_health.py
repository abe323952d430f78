"""The dashboard's health of write-back targets (broker/store/health.py) on a real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.model.writeback import DeliveryKind, DeliveryState
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.health import health_status, target_health
from tests.databases import empty_database


def test_a_target_whose_attempts_failed_is_down_with_its_next_retry(tmp_path: Path) -> None:
    """RIS: its only attempt failed → down, next retry = the failed delivery's next attempt;
    PACS: delivered → ok; both counted in the window, and nothing before it."""
    now = datetime.now(UTC)
    with empty_database("sqlite", tmp_path) as engine:
        store = DeliveryStore(engine)
        store.create(
            [
                NewDelivery("1.2.3", "ris", "hl7", DeliveryKind.RESULT, 3, 1, None),
                NewDelivery("1.2.3", "pacs", "dicom", DeliveryKind.RESULT, 3, 1, None),
            ]
        )
        retry_at = now + timedelta(minutes=5)
        for lane, outcome in (("ris", DeliveryState.FAILED), ("pacs", DeliveryState.DONE)):
            claimed = store.claim_next(lane, worker="w1")
            assert claimed is not None
            store.finish(
                claimed.id,
                outcome,
                worker="w1",
                error="refused" if outcome is DeliveryState.FAILED else None,
                next_attempt_at=retry_at if outcome is DeliveryState.FAILED else None,
            )
        found = {t.target: t for t in target_health(engine, now - timedelta(hours=1))}
        assert found["ris"].status == "down" and found["ris"].failed == 1
        assert found["ris"].next_retry_at is not None
        assert abs(found["ris"].next_retry_at - retry_at) < timedelta(seconds=1)
        assert found["pacs"].status == "ok" and found["pacs"].next_retry_at is None
        assert found["pacs"].last_done_at is not None
        later = {t.target: t for t in target_health(engine, now + timedelta(hours=1))}
        assert later["pacs"].status == "idle" and later["ris"].status == "idle"


def test_health_status() -> None:
    """down: only failures or dead items; degraded: failures and successes; ok; idle."""
    assert health_status(0, 2, 0) == "down"
    assert health_status(0, 0, 1) == "down"
    assert health_status(3, 1, 0) == "degraded"
    assert health_status(3, 0, 1) == "ok"
    assert health_status(0, 0, 0) == "idle"
