"""The REST API's results and deliveries in process on a real store: listings with filters
and cursors, a result with its objects, findings and deliveries, a delivery's history, and
the operator's retry (roles, 409, audit)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from adapters.web.app import create_app
from broker.model.domain import ResultObject, ResultOrigin, Role
from broker.model.jobs import JobState
from broker.model.writeback import DeliveryKind, DeliveryState
from broker.store import JobStore, StudyStore
from broker.store.api_tokens import ApiTokens
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.results import ResultStore
from tests.databases import DATABASES, empty_database
from tests.integration.test_store import _rec
from tests.writeback_data import BLEED, findings

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
API = "/api/v1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


@dataclass
class Api:
    client: TestClient
    engine: Engine
    tokens: dict[str, str]
    results: dict[str, Any]
    """Result ids by name (``orphan``, ``collecting``, ``done``…) and lists of them."""

    def get(self, path: str, role: str | None = "viewer", **params: Any) -> Any:
        return self.client.get(path, headers=self._auth(role), params=params)

    def post(self, path: str, role: str | None = "operator", **kwargs: Any) -> Any:
        return self.client.post(path, headers=self._auth(role), **kwargs)

    def _auth(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    def walk(self, path: str, limit: int, **params: Any) -> list[int]:
        """The ids of every page of a listing, following ``next``."""
        seen: list[int] = []
        cursor = None
        while True:
            extra = {"cursor": cursor} if cursor else {}
            page = self.get(path, limit=limit, **params, **extra).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next"]
            if cursor is None:
                return seen


def _populate(engine: Engine) -> dict[str, Any]:
    """Six studies, a job each (lungai for even ones, ichai for odd ones), a complete result of
    JSON findings with an SR each except the last (still collecting), one orphan object;
    deliveries to pacs and ris for each complete result, the ris one of study 0 dead."""
    studies, jobs = StudyStore(engine), JobStore(engine)
    results, deliveries = ResultStore(engine), DeliveryStore(engine)
    ids: dict[str, Any] = {"complete": [], "lungai": []}
    for n in range(6):
        uid = f"1.2.3.{n}"
        at = T0 + timedelta(minutes=n)
        studies.record_instance(_rec(f"{uid}.1", study=uid, series_uid=f"{uid}.5", at=at), 1.0)
        vendor = "lungai" if n % 2 == 0 else "ichai"
        job = jobs.create(uid, vendor, route="chest-ct", now=at).job
        jobs.claim(job.id, now=at)
        jobs.finish(job.id, [JobState.SENT, JobState.AWAITING_RESULT], now=at)
        result_id = results.record_findings(job.id, findings(uid, urgent=n == 0), now=at)
        if vendor == "lungai":
            ids["lungai"].append(result_id)
        if n == 5:
            ids["collecting"] = result_id
            continue
        results.record_generated(
            result_id,
            ResultObject(
                sop_instance_uid=f"{uid}.9.1",
                sop_class_uid=SR_CLASS,
                series_uid=f"{uid}.9",
                study_uid=uid,
                path=f"/spool/results/{uid}.9.1.dcm",
                size=2048,
                origin=ResultOrigin.GENERATED,
            ),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        assert results.complete(result_id, now=at) is not None
        ids["complete"].append(result_id)
        made = deliveries.create(
            [
                NewDelivery(
                    study_uid=uid,
                    target=target,
                    target_type=kind,
                    kind=DeliveryKind.RESULT,
                    max_attempts=3,
                    result_id=result_id,
                    job_id=job.id,
                )
                for target, kind in (("pacs", "dicom"), ("ris", "hl7"))
            ],
            now=at,
        )
        ids.setdefault("deliveries", []).extend(d.id for d in made)
    dead = deliveries.claim_next("ris", now=T0)
    assert dead is not None
    deliveries.finish(dead.id, DeliveryState.DEAD, error="AR from the RIS", now=T0)
    ids["dead"] = dead.id
    orphan = results.record_object(
        ResultObject(
            sop_instance_uid="9.9.9.1",
            sop_class_uid=SR_CLASS,
            series_uid="9.9.9",
            study_uid="9.9",
            path="/spool/results/9.9.9.1.dcm",
            size=1024,
            origin=ResultOrigin.DICOM,
        ),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        vendors=[],
        calling_ae="STRANGER",
    )
    ids["orphan"] = orphan.result_id
    return ids


@pytest.fixture(params=DATABASES)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app on a store populated by :func:`_populate`, with a token per role."""
    with empty_database(request.param, tmp_path) as engine:
        ids = _populate(engine)
        tokens = ApiTokens(engine)
        made = {r.value: tokens.create(r, f"test {r.value}") for r in Role}
        with TestClient(create_app(engine)) as client:
            yield Api(client, engine, made, ids)


def test_results_pages_and_filters(api: Api) -> None:
    """Pages of 2 walk all 7 results newest first without repeats; study, vendor, state and
    orphan filters each narrow the listing; a bad cursor is a 400, no token a 401."""
    every = api.walk(f"{API}/results", 2)
    assert every == sorted(every, reverse=True) and len(set(every)) == 7
    by_study = api.get(f"{API}/results", study_uid="1.2.3.1").json()["items"]
    assert [r["study_uid"] for r in by_study] == ["1.2.3.1"]
    assert by_study[0]["objects"] == 1 and by_study[0]["findings"] == 2
    lungai = api.walk(f"{API}/results", 1, vendor="lungai")
    assert sorted(lungai) == sorted(api.results["lungai"])
    [collecting] = api.get(f"{API}/results", state="collecting", orphan="false").json()["items"]
    assert collecting["id"] == api.results["collecting"] and collecting["completed_at"] is None
    [orphan] = api.get(f"{API}/results", orphan="true").json()["items"]
    assert orphan["id"] == api.results["orphan"] and orphan["orphan"] is True
    assert orphan["job_id"] is None and orphan["findings"] is None
    complete = api.walk(f"{API}/results", 3, state="complete", orphan="false")
    assert sorted(complete) == sorted(api.results["complete"])
    assert api.get(f"{API}/results", state="finished").status_code == 422
    assert api.get(f"{API}/results", cursor="garbage!").status_code == 400
    assert api.get(f"{API}/results", role=None).status_code == 401


def test_result_detail_has_objects_findings_and_deliveries(api: Api) -> None:
    """One result: its SR object, the findings summary (algorithm, present and urgent
    counts, codes, measurements) and its two deliveries; an orphan shows its sender;
    an unknown id is a 404."""
    first = api.results["complete"][0]
    detail = api.get(f"{API}/results/{first}").json()
    [obj] = detail["object_list"]
    assert (obj["sop_instance_uid"], obj["origin"], obj["receive_count"]) == (
        "1.2.3.0.9.1",
        "generated",
        1,
    )
    summary = detail["findings_summary"]
    assert summary["algorithm"] == {"vendor": "Acme AI", "product": "ICH triage", "version": "2.1"}
    assert (summary["present"], summary["urgent"], detail["urgent"]) == (1, True, True)
    assert summary["findings"][0]["code"]["value"] == BLEED.value
    assert summary["findings"][0]["measurements"][0]["unit"] == "mL"
    assert {(d["target"], d["state"]) for d in detail["deliveries"]} == {
        ("pacs", "pending"),
        ("ris", "dead"),
    }
    assert detail["complete_reason"] == "vendor"
    orphan = api.get(f"{API}/results/{api.results['orphan']}").json()
    assert orphan["calling_ae"] == "STRANGER" and orphan["findings_summary"] is None
    assert orphan["deliveries"] == []
    assert api.get(f"{API}/results/999999").status_code == 404


def test_deliveries_pages_filters_and_history(api: Api) -> None:
    """Pages of 3 walk all 10 deliveries newest first; state (repeatable), target and result
    filters narrow them; one delivery shows every transition; unknown ids are 404."""
    every = api.walk(f"{API}/deliveries", 3)
    assert every == sorted(api.results["deliveries"], reverse=True)
    [dead] = api.get(f"{API}/deliveries", state="dead").json()["items"]
    assert dead["id"] == api.results["dead"] and dead["last_error"] == "AR from the RIS"
    both = api.get(f"{API}/deliveries", state=["dead", "pending"], target="ris").json()["items"]
    assert len(both) == 5 and {d["target"] for d in both} == {"ris"}
    first = api.results["complete"][0]
    mine = api.get(f"{API}/deliveries", result_id=first).json()["items"]
    assert sorted(d["target"] for d in mine) == ["pacs", "ris"]
    assert api.get(f"{API}/deliveries", target="emr").json() == {"items": [], "next": None}
    history = api.get(f"{API}/deliveries/{dead['id']}").json()["history"]
    assert [(h["from_state"], h["to_state"], h["attempt"]) for h in history] == [
        (None, "pending", 0),
        ("pending", "sending", 1),
        ("sending", "dead", 1),
    ]
    assert api.get(f"{API}/deliveries/999999").status_code == 404
    assert api.get(f"{API}/deliveries", state="lost").status_code == 422


def test_delivery_retry_needs_an_operator_and_is_audited(api: Api) -> None:
    """No token: 401; a viewer: 403; an operator retries the dead delivery → pending with
    attempts reset and one delivery.retry audit row naming the token; a pending one: 409."""
    dead = api.results["dead"]
    assert api.post(f"{API}/deliveries/{dead}/retry", role=None).status_code == 401
    assert api.post(f"{API}/deliveries/{dead}/retry", role="viewer").status_code == 403
    answer = api.post(f"{API}/deliveries/{dead}/retry")
    assert answer.status_code == 200, answer.text
    retried = answer.json()
    assert (retried["state"], retried["attempts"]) == ("pending", 0)
    assert retried["history"][-1]["error"] == "retried by the operator"
    [row] = api.get(f"{API}/audit", role="admin", action="delivery.retry").json()["items"]
    assert (row["actor"], row["target"], row["peer"]) == (
        f"token:{list(Role).index(Role.OPERATOR) + 1} (test operator)",  # tokens by role
        f"delivery:{dead}",
        "testclient",
    )
    assert row["detail"] == {
        "from_state": "dead",
        "to_state": "pending",
        "target": "ris",
        "job_id": retried["job_id"],
    }
    again = api.post(f"{API}/deliveries/{dead}/retry")
    assert again.status_code == 409 and "only a dead or failed" in again.json()["detail"]
    assert api.post(f"{API}/deliveries/999999/retry").status_code == 404
    audited = api.get(f"{API}/audit", role="admin", action="delivery.retry").json()
    assert len(audited["items"]) == 1
    paths = api.get("/openapi.json").json()["paths"]  # off loopback: with a token
    assert {"/api/v1/results/{result_id}", "/api/v1/deliveries/{delivery_id}/retry"} <= set(paths)
