"""The REST API against the OpenAPI document it serves (schemathesis), for each role, and the
bugs that run found, each pinned through HTTP: a real ``radbridge serve`` (SQLite store,
one study delivered to a dcmtk storescp vendor, so a job waits for its result)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from adapters.dicom.synthetic import generate_study
from tests.e2e.test_pipeline import _config
from tests.peers import LOOPBACK, StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge

# slow: the service's start and the schemathesis run take over 15 s; the module's tests share
# the one service (one worker: xdist_group).
pytestmark = [
    pytest.mark.timeout(480),
    pytest.mark.slow(seconds=100),
    pytest.mark.xdist_group("api_schema"),
]

ROLES = ("admin", "operator", "viewer")
RESULTS_TOKEN = "lungai-results-schema-test"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]
#: Examples per operation and generation mode (valid, invalid input), each sent under every role.
MAX_EXAMPLES = 3


@dataclass
class Service:
    """A running radbridge: its HTTP base, a token per role, the job waiting at the vendor."""

    base: str
    tokens: dict[str, str]
    token_ids: set[int]
    job_id: int
    study_uid: str

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """radbridge with an admin, an operator and a viewer token, one CT delivered to lungai."""
    folder = tmp_path_factory.mktemp("api_schema")
    study = generate_study("ct_chest", folder / "ct", instances=2, rows=16, columns=16)
    with StoreSCP(folder / "lungai", ae_title="LUNGAI") as vendor:
        config = _config(folder / "rb", vendor.port)
        port = free_port()
        config["http"] = {"listen": {"host": LOOPBACK, "port": port}}
        rb = Radbridge(folder / "rb", config)
        rb.env["RADBRIDGE_VENDORS__LUNGAI__RESULTS__TOKEN"] = RESULTS_TOKEN
        rb.start()
        try:
            storescu(study, rb.port)  # routed and delivered while the tokens are made
            base = f"http://{LOOPBACK}:{port}"
            admin = rb.cli("tokens", "create", "--role", "admin", "--name", "admin").stdout.strip()
            tokens = {"admin": admin}
            for role in ROLES[1:]:
                made = httpx.post(
                    f"{base}/api/v1/tokens",
                    json={"role": role, "name": role},
                    headers={"Authorization": f"Bearer {admin}"},
                    timeout=10,
                )
                assert made.status_code == 201, made.text
                tokens[role] = made.json()["token"]

            def waiting_job() -> dict[str, Any] | None:
                jobs = httpx.get(
                    f"{base}/api/v1/jobs", headers={"Authorization": f"Bearer {admin}"}, timeout=10
                ).json()
                waiting = [j for j in jobs["items"] if j["state"] == "awaiting_result"]
                return waiting[0] if waiting else None

            job = wait_until(waiting_job)
            listed = httpx.get(
                f"{base}/api/v1/tokens", headers={"Authorization": f"Bearer {admin}"}, timeout=10
            ).json()
            ids = {t["id"] for t in listed}
            yield Service(base, tokens, ids, job["id"], job["study_uid"])
        finally:
            rb.close()


@pytest.fixture(scope="module")
def api_schema(service: Service) -> Any:
    """The OpenAPI document the service serves (fetched with the admin token)."""
    return schemathesis.openapi.from_url(
        f"{service.base}/openapi.json", headers=service.auth("admin"), timeout=10
    )


def _spares(service: Service) -> Callable[[Case], bool]:
    """Keep a generated case off the fixture's own tokens and job (so one role's run cannot
    revoke the next role's token or cancel the job the findings test posts to)."""

    def spares(case: Case) -> bool:
        path = case.path_parameters or {}
        return str(path.get("token_id")) not in {str(i) for i in service.token_ids} and str(
            path.get("job_id")
        ) != str(service.job_id)

    return spares


def _conforms(service: Service, api_schema: Any) -> dict[str, str]:
    """Run every operation under each role's token; what did not conform, by role and operation.

    Each operation's cases are generated once and each is sent with every role's token in
    turn (generating them is most of the run's CPU, and the roles' runs drew the same cases:
    derandomized, from the one seed of this function's source)."""
    failures: dict[str, str] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        strategies = [
            operation.as_strategy(generation_mode=mode).filter(_spares(service))
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]

        @settings(
            max_examples=MAX_EXAMPLES * len(strategies),
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(strategies))
        def run(case: Case) -> None:
            for role in ROLES:
                key = f"{role}: {operation.label}"
                try:
                    case.call_and_validate(
                        base_url=service.base, headers=service.auth(role), checks=CHECKS, timeout=10
                    )
                except (FailureGroup, AssertionError) as exc:
                    failures.setdefault(key, str(exc)[:2000])

        run()
    return failures


def test_every_operation_conforms_to_the_openapi_document(
    service: Service, api_schema: Any
) -> None:
    """Every operation of /openapi.json (the REST API and ``/fhir``), with valid and invalid
    input from schemathesis under
    an admin, an operator and a viewer token: no 5xx, and every answer's status, content type
    and body are the ones the document declares. Fails listing each operation and role and
    what did not conform."""
    operations = [o.ok().label for o in api_schema.get_all_operations()]
    assert len(operations) >= 30
    assert {"POST /fhir/ServiceRequest", "GET /fhir/ServiceRequest/{resource_id}"} <= set(
        operations
    )
    failures = _conforms(service, api_schema)
    assert not failures, json.dumps(failures, indent=1)


def test_stored_records_conform_for_each_role(service: Service, api_schema: Any) -> None:
    """The detail endpoints on the records the service holds (its study, job, vendor and the
    study's explanation), which generated ids rarely hit: 200 for every role, each body as
    the document declares (a viewer's with the patient data null)."""
    known = {
        "/api/v1/studies/{study_uid}": {"study_uid": service.study_uid},
        "/api/v1/jobs/{job_id}": {"job_id": service.job_id},
        "/api/v1/vendors/{name}": {"name": "lungai"},
        "/api/v1/routes/explain/{study_uid}": {"study_uid": service.study_uid},
    }
    for role in ROLES:
        for path, parameters in known.items():
            case = api_schema[path]["GET"].Case(path_parameters=parameters)
            answer = case.call_and_validate(
                base_url=service.base, headers=service.auth(role), checks=CHECKS, timeout=10
            )
            assert answer.status_code == 200, (role, path, answer.text)
        study = httpx.get(
            f"{service.base}/api/v1/studies/{service.study_uid}", headers=service.auth(role)
        ).json()
        assert (study["patient"]["patient_id"] is None) == (role == "viewer")


def test_audit_export_with_empty_period_answers_422_naming_the_parameter(
    service: Service,
) -> None:
    """``GET /api/v1/audit/export?from=&to=`` (once a 500) is a 422 in FastAPI's validation
    shape naming ``from`` and ``to``; a period that ends before it starts names ``to``."""
    url = f"{service.base}/api/v1/audit/export"
    empty = httpx.get(url, params={"from": "", "to": ""}, headers=service.auth("admin"))
    assert empty.status_code == 422, empty.text
    assert {tuple(p["loc"]) for p in empty.json()["detail"]} == {
        ("query", "from"),
        ("query", "to"),
    }
    backwards = httpx.get(
        url, params={"from": "2024-05-02", "to": "2024-05-01"}, headers=service.auth("admin")
    )
    assert backwards.status_code == 422, backwards.text
    [problem] = backwards.json()["detail"]
    assert problem["loc"] == ["query", "to"] and "to after from" in problem["msg"]


def test_a_bad_time_is_a_422_in_the_validation_shape(service: Service) -> None:
    """A time the endpoint parses itself (``/jobs?from=yesterday``, a date past year 9999)
    answers 422 like a parameter of the wrong type: a list of problems naming it."""
    for params in ({"from": "yesterday"}, {"to": "9999-12-31"}):
        answer = httpx.get(
            f"{service.base}/api/v1/jobs", params=params, headers=service.auth("viewer")
        )
        assert answer.status_code == 422, answer.text
        [problem] = answer.json()["detail"]
        assert problem["loc"] == ["query", next(iter(params))]
        assert "valid: ISO 8601" in problem["msg"]


def test_deeply_nested_findings_json_is_a_400_and_the_service_keeps_serving(
    service: Service,
) -> None:
    """JSON nested 100,000 deep to the findings callback (once a 500) answers 400 naming the
    problem; the job still takes a result and the service answers the next request."""
    url = f"{service.base}/results/jobs/{service.job_id}/findings"
    auth = {"Authorization": f"Bearer {RESULTS_TOKEN}", "Content-Type": "application/json"}
    for body in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"summary": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
    ):
        answer = httpx.post(url, content=body, headers=auth, timeout=30)
        assert answer.status_code == 400, answer.text
        assert "nested too deeply" in answer.json()["error"]
    job = httpx.get(f"{service.base}/api/v1/jobs/{service.job_id}", headers=service.auth("viewer"))
    assert job.status_code == 200 and job.json()["state"] == "awaiting_result"


def test_an_id_beyond_64_bits_is_a_422_and_such_a_cursor_a_400(service: Service) -> None:
    """A record id past the store's 64-bit integers (once a 500: the database overflowed) in
    the path or a filter is a 422 naming it; a cursor holding one is the listing's 400."""
    huge = 2**63
    viewer = service.auth("viewer")
    for path in (f"/jobs/{huge}", f"/deliveries?job_id={huge}", f"/conflicts?order_id={huge}"):
        answer = httpx.get(f"{service.base}/api/v1{path}", headers=viewer)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["type"] == "less_than_equal"
    cursor = base64.urlsafe_b64encode(json.dumps([huge]).encode()).decode()
    answer = httpx.get(f"{service.base}/api/v1/jobs", params={"cursor": cursor}, headers=viewer)
    assert answer.status_code == 400, answer.text


def test_findings_for_a_job_id_beyond_64_bits_is_a_422(service: Service) -> None:
    """The findings callback for a job id past 64 bits (once a 500: the database overflowed)
    is a 422 naming ``job_id``."""
    answer = httpx.post(
        f"{service.base}/results/jobs/{2**63}/findings",
        content=b"{}",
        headers={"Authorization": f"Bearer {RESULTS_TOKEN}"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["path", "job_id"]
