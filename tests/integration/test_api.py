"""The REST API in process on a real store: tokens and roles, listings with filters and
cursors, job history, retry and cancel (audited), tokens, routes, usage, health, metrics."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from adapters.web.app import create_app
from broker.model.contract import UseCharge
from broker.model.domain import Role
from broker.model.jobs import JobState
from broker.runtime.billing import Accounting
from broker.runtime.edges import ServiceContext
from broker.runtime.reload import Reloader
from broker.runtime.snapshot import SnapshotHolder, build_snapshot
from broker.store import JobStore, StudyStore
from broker.store.api_tokens import ApiTokens
from broker.store.contracts import ContractStore, JobTerms, Reserved
from broker.store.results import ResultStore
from broker.store.spool import Spool
from config.loader import load_settings
from tests.databases import DATABASES, empty_database
from tests.integration.test_store import _rec
from tests.writeback_data import findings

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
API = "/api/v1"

CONFIG: dict[str, Any] = {
    "site": {"name": "General", "timezone": "UTC"},
    "vendors": {
        "lungai": {
            "product": "CT lung nodule",
            "transport": {"type": "dicom", "ae_title": "LUNGAI", "host": "127.0.0.1", "port": 9},
            "billing": {"unit": "study", "price": 30, "currency": "CNY", "trial_quota": 1},
            "regulatory": {
                "nmpa_class": "III",
                "certificate": "国械注准20233210001",
                "valid_until": "2099-12-31",
                "intended_use": "肺结节检出",
                "version": "3.2",
            },
        }
    },
    "routes": [
        {"name": "chest-ct", "when": {"modality": "CT", "body_part": "CHEST"}, "send": ["lungai"]}
    ],
}


@dataclass
class Api:
    client: TestClient
    engine: Engine
    tokens: dict[str, str]
    config_path: Path

    def get(self, path: str, role: str | None = "viewer", **params: Any) -> Any:
        return self.client.get(path, headers=self._auth(role), params=params)

    def post(self, path: str, role: str | None = "operator", **kwargs: Any) -> Any:
        return self.client.post(path, headers=self._auth(role), **kwargs)

    def _auth(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}


@pytest.fixture(params=DATABASES)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app on a store with 30 studies (every third an MR) and a job each."""
    config_path = tmp_path / "radbridge.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    settings = load_settings(config_path)
    with empty_database(request.param, tmp_path) as engine:
        studies, jobs = StudyStore(engine), JobStore(engine)
        for n in range(30):
            uid = f"1.2.3.{n}"
            at = T0 + timedelta(minutes=n)
            modality = "MR" if n % 3 == 0 else "CT"
            studies.record_instance(
                _rec(f"{uid}.1", study=uid, series_uid=f"{uid}.5", at=at, modality=modality), 1.0
            )
            jobs.create(uid, "lungai", route="chest-ct", now=at)
        studies.close_stable(T0 + timedelta(hours=1))
        tokens = ApiTokens(engine)
        made = {r.value: tokens.create(r, f"test {r.value}") for r in Role}
        context = ServiceContext(
            settings=settings,
            engine=engine,
            store=studies,
            spool=Spool(tmp_path / "spool"),
            snapshots=(holder := SnapshotHolder(build_snapshot(settings, config_path))),
            reloader=Reloader(holder, config_path, engine=engine),
        )
        with TestClient(create_app(engine, context)) as client:
            yield Api(client, engine, made, config_path)


def test_no_token_401_wrong_role_403(api: Api) -> None:
    """No token or a revoked one: 401 with WWW-Authenticate; a viewer acting or an operator
    managing tokens: 403."""
    answer = api.get(f"{API}/jobs", role=None)
    assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
    api.tokens["bogus"] = "not-a-token"
    assert api.get(f"{API}/studies", role="bogus").status_code == 401
    assert api.post(f"{API}/jobs/1/retry", role="viewer").status_code == 403
    assert api.get(f"{API}/tokens", role="operator").status_code == 403
    assert api.post(f"{API}/config/reload", role="operator").status_code == 403
    assert api.get(f"{API}/tokens", role="admin").status_code == 200


def test_cursor_pages_cover_every_job_once_newest_first(api: Api) -> None:
    """Pages of 7 walk all 30 jobs in id order, newest first, without repeats; filters apply."""
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"{API}/jobs", **params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 30
    window = api.get(
        f"{API}/jobs", vendor="lungai", state="pending", **{"from": "2024-05-01T08:10Z"}
    ).json()
    assert len(window["items"]) == 20
    assert api.get(f"{API}/jobs", vendor="other").json()["items"] == []
    assert api.get(f"{API}/jobs", limit=501).status_code == 422
    assert api.get(f"{API}/jobs", cursor="garbage!").status_code == 400


def test_studies_filter_by_modality_and_time_and_page(api: Api) -> None:
    """Studies newest first; modality and time filters; the cursor continues after the last."""
    first = api.get(f"{API}/studies", limit=4).json()
    assert [s["study_uid"] for s in first["items"]] == [f"1.2.3.{n}" for n in (29, 28, 27, 26)]
    second = api.get(f"{API}/studies", limit=4, cursor=first["next"]).json()
    assert second["items"][0]["study_uid"] == "1.2.3.25"
    mr = api.get(f"{API}/studies", modality="mr", limit=500).json()["items"]
    assert len(mr) == 10 and {tuple(s["modalities"]) for s in mr} == {("MR",)}
    early = api.get(f"{API}/studies", to="2024-05-01T08:05Z", state="stable").json()["items"]
    assert len(early) == 5
    detail = api.get(f"{API}/studies/1.2.3.4").json()
    assert detail["series"][0]["instances"] == 1 and detail["jobs"][0]["vendor"] == "lungai"
    assert api.get(f"{API}/studies/9.9.9").status_code == 404


def test_retry_and_cancel_are_audited_with_the_token(api: Api) -> None:
    """Cancel via the API moves the job and writes an audit row naming the token and address;
    retrying a job that is not dead is a 409."""
    answer = api.post(f"{API}/jobs/3/cancel", json={"reason": "wrong patient"})
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["state"] == "cancelled" and job["history"][-1]["error"] == "wrong patient"
    assert api.post(f"{API}/jobs/3/retry").status_code == 409
    jobs = JobStore(api.engine)
    jobs.claim(4, now=T0)
    jobs.finish(4, JobState.DEAD, error="refused", now=T0)
    assert api.post(f"{API}/jobs/4/retry").json()["state"] == "pending"
    audit = api.get(f"{API}/audit", role="admin").json()["items"]
    assert [(a["action"], a["target"]) for a in audit] == [
        ("job.retry", "job:4"),
        ("job.cancel", "job:3"),
    ]
    operator = f"token:{list(Role).index(Role.OPERATOR) + 1} (test operator)"  # tokens by role
    assert audit[1]["actor"] == operator and audit[1]["peer"] == "testclient"
    assert audit[1]["detail"]["reason"] == "wrong patient"
    history = api.get(f"{API}/jobs/4").json()["history"]
    assert [h["to_state"] for h in history] == ["pending", "sending", "dead", "pending"]


def test_admin_creates_and_revokes_tokens_audited(api: Api) -> None:
    """A token made by the API works at once, its revocation at once; both are audited."""
    made = api.post(f"{API}/tokens", role="admin", json={"role": "viewer", "name": "console"})
    assert made.status_code == 201
    api.tokens["new"] = made.json()["token"]
    assert api.get(f"{API}/studies", role="new").status_code == 200
    token_id = made.json()["id"]
    assert api.client.delete(f"{API}/tokens/{token_id}", headers=api._auth("admin")).is_success
    assert api.get(f"{API}/studies", role="new").status_code == 401
    actions = [a["action"] for a in api.get(f"{API}/audit", role="admin").json()["items"]]
    assert actions == ["token.revoke", "token.create"]


def test_routes_explain_and_reload(api: Api) -> None:
    """The routes in force, a stored study explained, and a reload: a broken file is refused
    with its problems (422), a good one applied; both audited."""
    routes = api.get(f"{API}/routes").json()
    assert sorted(routes["routes"][0]["when"]) == ["body_part: CHEST", "modality: CT"]
    explained = api.get(f"{API}/routes/explain/1.2.3.0").json()
    assert explained["outcome"] == "unrouted" and "got MR" in explained["text"]
    api.config_path.write_text(api.config_path.read_text().replace("- lungai", "- nosuch"))
    refused = api.post(f"{API}/config/reload", role="admin")
    assert refused.status_code == 422 and "nosuch" in str(refused.json())
    api.config_path.write_text(yaml.safe_dump({**CONFIG, "routes": []}))
    assert api.post(f"{API}/config/reload", role="admin").json()["routes"] == 0
    assert api.get(f"{API}/routes").json()["routes"] == []
    reloads = api.get(f"{API}/audit", role="admin", action="config.reload").json()["items"]
    assert [r["detail"]["reloaded"] for r in reloads] == [True, False]


def test_contracts_and_the_products_of_results(api: Api) -> None:
    """``GET /api/v1/contracts``: the vendor's ``billing:`` read as its trial contract; one
    use reserved today of a quota of 1: used up, running out today; ``GET /api/v1/vendors``
    says the same of the trial (one count for both). Each result in the
    listing and in its detail names the configured product with its NMPA class,
    certificate and whether the certificate covers today."""
    now = datetime.now(UTC)
    terms = JobTerms(
        study_uid="1.2.3.1",
        vendor="lungai",
        route="chest-ct",
        contract="lungai",
        charge=UseCharge.TRIAL,
        period="all",
    )
    assert ContractStore(api.engine).reserve(terms, 1, now) is Reserved.NEW
    [contract] = api.get(f"{API}/contracts").json()
    assert (contract["name"], contract["kind"], contract["state"]) == ("lungai", "trial", "used_up")
    assert (contract["used"], contract["remaining"], contract["quota"]) == (1, 0, 1)
    assert contract["runs_out"] == now.date().isoformat()
    [vendor] = api.get(f"{API}/vendors", probe="false").json()
    billing = vendor["billing"]
    assert (billing["trial_quota"], billing["trial_used"]) == (contract["quota"], contract["used"])
    assert (contract["price"], contract["currency"], contract["when_used_up"]) == (
        "30",
        "CNY",
        "bill",
    )
    assert api.get(f"{API}/contracts", role=None).status_code == 401
    _results_carry_the_products_regulatory_data(api)


def _results_carry_the_products_regulatory_data(api: Api) -> None:
    jobs = JobStore(api.engine)
    jobs.claim(1, now=T0)
    jobs.finish(1, [JobState.SENT, JobState.AWAITING_RESULT], now=T0)
    result_id = ResultStore(api.engine).record_findings(1, findings("1.2.3.0"), now=T0)
    [listed] = api.get(f"{API}/results").json()["items"]
    product = listed["product"]
    assert (product["vendor"], product["product"], product["mode"]) == (
        "lungai",
        "CT lung nodule",
        "live",
    )
    regulatory = product["regulatory"]
    assert (regulatory["nmpa_class"], regulatory["certificate"]) == ("III", "国械注准20233210001")
    assert regulatory["certificate_valid"] is True and regulatory["problem"] is None
    assert product["label"] == (
        "CT lung nodule: NMPA class III 国械注准20233210001 valid to 2099-12-31; "
        "intended use: 肺结节检出; version 3.2"
    )
    assert api.get(f"{API}/results/{result_id}").json()["product"] == product


def test_usage_vendors_health_and_metrics(api: Api) -> None:
    """Usage as JSON and CSV, trial quota use (``/usage/quotas``: the old name of
    ``/contracts``, deprecated), vendor status, healthz/readyz and Prometheus text."""
    jobs = JobStore(api.engine)
    for job_id in (1, 2):
        jobs.claim(job_id, now=T0)
        job = jobs.finish(job_id, [JobState.SENT, JobState.AWAITING_RESULT], now=T0)
        Accounting(api.engine, lambda: load_settings(api.config_path)).record(job, T0)
    [line] = api.get(f"{API}/usage", **{"from": "2024-05-01", "to": "2024-05-01"}).json()
    assert (line["studies"], line["trial"], line["billable"], line["amount"]) == (2, 1, 1, "30")
    csv_text = api.get(f"{API}/usage", format="csv", **{"from": "2024-05-01", "to": "2024-05-01"})
    assert csv_text.headers["content-type"].startswith("text/csv")
    assert csv_text.text.splitlines()[1].startswith("lungai,CT lung nodule,General,2024-05-01,")
    [quota] = api.get(f"{API}/usage/quotas").json()  # the old name of /contracts
    assert quota == api.get(f"{API}/contracts").json()[0]
    assert (quota["name"], quota["kind"], quota["quota"]) == ("lungai", "trial", 1)
    [vendor] = api.get(f"{API}/vendors").json()
    assert vendor["queue_depth"] == 28 and vendor["sent_24h"] == 0
    assert vendor["last_success_at"].startswith("2024-05-01T08:00")
    assert vendor["reachability"]["endpoint"] == "127.0.0.1:9"
    assert api.get("/healthz", role=None).json()["status"] == "ok"
    ready = api.get("/readyz", role=None).json()["checks"]
    assert ready == {"store": "ok", "bus": "ok", "disk": "ok"}
    assert api.get("/metrics", role=None).status_code == 401  # "testclient" is not loopback
    text = api.get("/metrics").text
    assert 'radbridge_jobs{state="pending",vendor="lungai"} 28.0' in text
    assert 'radbridge_queue_depth{vendor="lungai"} 28.0' in text
    assert "radbridge_received_instances_total 30.0" in text
    assert 'radbridge_studies{state="stable"} 30.0' in text
    assert "radbridge_free_space_low 0.0" in text and "radbridge_spool_bytes " in text
    assert "radbridge_delivery_latency_seconds_bucket" in text or "radbridge_errors" in text
    schema = api.get("/openapi.json").json()  # "testclient" is not loopback: a token
    assert "/api/v1/jobs/{job_id}/retry" in schema["paths"]
    assert schema["paths"]["/api/v1/usage/quotas"]["get"]["deprecated"] is True
    fhir = {p for p in schema["paths"] if p.startswith("/fhir")}  # the orders interface too
    assert fhir == {
        "/fhir",
        "/fhir/metadata",
        "/fhir/ServiceRequest",
        "/fhir/ServiceRequest/{resource_id}",
    }
    assert not any(p.startswith(("/wado", "/results", "/link")) for p in schema["paths"])
