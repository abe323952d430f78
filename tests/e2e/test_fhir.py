"""The FHIR R4 orders interface of a real ``radbridge serve``, driven by fhirpy and httpx.

Tokens come from the ``radbridge tokens create`` CLI on the same configuration.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, ForbiddenError

from adapters.fhir.mapping import V2_0203
from adapters.fhir.server import MAX_BODY_BYTES
from tests.fhir_data import FHIR_JSON, accession_of, service_request, transaction, typed
from tests.peers import LOOPBACK, free_port
from tests.service import Radbridge, base_config

pytestmark = pytest.mark.xdist_group("fhir")


def fhir_config(folder: Path) -> dict[str, Any]:
    """radbridge on loopback with its HTTP server (and so ``/fhir``) on a free port."""
    config = base_config(folder, free_port())
    config["http"] = {"listen": {"host": LOOPBACK, "port": free_port()}}
    return config


@dataclass
class FhirServer:
    """A running radbridge, its ``/fhir`` base URL and tokens made by the CLI."""

    rb: Radbridge
    base: str
    operator: str
    viewer: str

    def client(self, token: str | None) -> SyncFHIRClient:
        return SyncFHIRClient(self.base, authorization=f"Bearer {token}" if token else None)

    def http(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if "json" in kwargs:
            headers.setdefault("Content-Type", FHIR_JSON)
            kwargs["content"] = json.dumps(kwargs.pop("json"))
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=10, **kwargs)

    def order(self, key: str) -> dict[str, Any]:
        """The order as ``radbridge orders show --json`` prints it."""
        result: dict[str, Any] = json.loads(self.rb.cli("orders", "show", key, "--json").stdout)
        return result


def token(rb: Radbridge, role: str) -> str:
    """A new token of ``role`` from ``radbridge tokens create``."""
    return rb.cli("tokens", "create", "--role", role, "--name", f"test {role}").stdout.strip()


def wait_http(base: str, timeout: float = 20.0) -> None:
    """Wait until ``GET /fhir/metadata`` answers (after a restart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} did not answer in {timeout} s")


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    """One radbridge for the module, with an operator and a viewer token."""
    folder = tmp_path_factory.mktemp("fhir")
    rb = Radbridge(folder / "rb", fhir_config(folder / "rb"))
    rb.start()
    try:
        base = f"http://{LOOPBACK}:{rb.config['http']['listen']['port']}/fhir"
        wait_http(base)
        yield FhirServer(rb, base, token(rb, "operator"), token(rb, "viewer"))
    finally:
        rb.close()


def test_metadata_is_public_and_lists_exactly_what_is_implemented(fhir: FhirServer) -> None:
    """The CapabilityStatement needs no token, validates, and lists only what the routes do."""
    answer = fhir.http("GET", "/metadata")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(FHIR_JSON)
    statement = answer.json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    [rest] = statement["rest"]
    [resource] = rest["resource"]
    assert resource["type"] == "ServiceRequest"
    assert {i["code"] for i in resource["interaction"]} == {
        "read",
        "update",
        "create",
        "search-type",
    }
    assert [p["name"] for p in resource["searchParam"]] == ["identifier"]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    assert resource["updateCreate"] is True and resource["readHistory"] is False
    for path, method in [("/ServiceRequest/x/_history/1", "GET"), ("/Patient", "POST")]:
        refused = fhir.http(method, path, fhir.operator, json={})
        assert refused.status_code in (404, 405)
        assert refused.json()["resourceType"] == "OperationOutcome"


def test_fhirpy_creates_and_reads_an_order_stored_as_mapped(fhir: FhirServer) -> None:
    """A fhirpy create stores the order (ids, patient, priority, modality) and reads back."""
    client = fhir.client(fhir.operator)
    sent = service_request()
    created = client.resource("ServiceRequest", **sent)
    created.save()
    assert created["id"] and created["meta"]["versionId"] == "1"
    read = fhir.client(fhir.viewer).reference("ServiceRequest", created["id"]).to_resource()
    assert read["identifier"] == sent["identifier"]
    assert read["meta"]["versionId"] == "1"
    order = fhir.order(created["id"])
    assert order["accession_number"] == accession_of(sent)
    assert order["source"] == "fhir" and order["priority"] == "STAT"
    assert order["modality"] == "CT" and order["procedure_code"] == "30799-1"
    assert order["patient"] == {
        "patient_id": "PID-1",
        "issuer": "urn:oid:1.2.36.146",
        "name": "Chen^Li",
        "birth_date": "19800229",
        "sex": "F",
    }


def test_create_answers_201_with_location_and_a_matching_post_updates(fhir: FhirServer) -> None:
    """POST → 201 + Location; a second POST with the same identifiers → 200, same id, version 2."""
    sent = service_request()
    first = fhir.http("POST", "/ServiceRequest", fhir.operator, json=sent)
    assert first.status_code == 201, first.text
    resource_id = first.json()["id"]
    assert first.headers["location"] == f"{fhir.base}/ServiceRequest/{resource_id}/_history/1"
    assert first.headers["etag"] == 'W/"1"'
    again = fhir.http("POST", "/ServiceRequest", fhir.operator, json={**sent, "status": "revoked"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == resource_id and again.json()["meta"]["versionId"] == "2"
    assert fhir.order(resource_id)["status"] == "cancelled"


def test_put_updates_and_get_shows_version_2(fhir: FhirServer) -> None:
    """fhirpy PUT (save with an id) updates the order; GET shows version 2 and the change."""
    client = fhir.client(fhir.operator)
    order = client.resource("ServiceRequest", **service_request())
    order.save()
    order["priority"] = "routine"
    order.save()
    read = fhir.client(fhir.viewer).reference("ServiceRequest", order["id"]).to_resource()
    assert read["meta"]["versionId"] == "2" and read["priority"] == "routine"
    assert fhir.order(order["id"])["priority"] == "ROUTINE"


def test_put_with_a_new_id_creates_it_and_a_mismatched_id_is_refused(fhir: FhirServer) -> None:
    """PUT of an unknown id creates the order with that id (201); body id ≠ URL id is 400."""
    resource_id = f"ris-{uuid.uuid4().hex[:12]}"
    body = service_request(id=resource_id)
    created = fhir.http("PUT", f"/ServiceRequest/{resource_id}", fhir.operator, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["id"] == resource_id
    assert fhir.http("GET", f"/ServiceRequest/{resource_id}", fhir.viewer).status_code == 200
    other = fhir.http("PUT", "/ServiceRequest/other-id", fhir.operator, json=body)
    assert other.status_code == 400
    assert other.json()["issue"][0]["expression"] == ["ServiceRequest.id"]
    missing = fhir.http("GET", "/ServiceRequest/no-such-order", fhir.viewer)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_search_by_accession_in_each_form(fhir: FhirServer) -> None:
    """identifier=VALUE, SYSTEM|VALUE and :of-type=…|ACSN|VALUE find the order; others do not."""
    accession = f"ACC-{uuid.uuid4().hex[:10]}"
    sent = service_request()
    sent["identifier"][1] = typed("ACSN", accession, system="urn:oid:1.2.3.99")
    created = fhir.http("POST", "/ServiceRequest", fhir.operator, json=sent).json()
    client = fhir.client(fhir.viewer)
    found = client.resources("ServiceRequest").search(identifier=accession).fetch()
    assert [r["id"] for r in found] == [created["id"]]
    with_system = client.resources("ServiceRequest").search(
        identifier=f"urn:oid:1.2.3.99|{accession}"
    )
    assert [r["id"] for r in with_system.fetch()] == [created["id"]]
    wrong_system = client.resources("ServiceRequest").search(identifier=f"urn:x|{accession}")
    assert wrong_system.fetch() == []
    bundle = fhir.http(
        "GET",
        "/ServiceRequest",
        fhir.viewer,
        params={"identifier:of-type": f"{V2_0203}|ACSN|{accession}"},
    ).json()
    assert bundle["type"] == "searchset" and bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["id"] == created["id"]
    assert bundle["entry"][0]["fullUrl"] == f"{fhir.base}/ServiceRequest/{created['id']}"
    unknown = fhir.http("GET", "/ServiceRequest", fhir.viewer, params={"code": "x"})
    assert unknown.status_code == 400 and unknown.json()["resourceType"] == "OperationOutcome"


def test_transaction_of_patient_and_service_request(fhir: FhirServer) -> None:
    """A transaction Bundle (fhirpy) stores the order with the Bundle's Patient as its patient."""
    sent = service_request()
    response = fhir.client(fhir.operator).execute(
        "/", method="post", data=transaction("transaction", sent)
    )
    assert response["type"] == "transaction-response"
    patient_entry, order_entry = response["entry"]
    assert patient_entry["response"]["status"].startswith("200")
    assert order_entry["response"]["status"] == "201 Created"
    resource_id = order_entry["response"]["location"].split("/")[1]
    order = fhir.order(resource_id)
    assert order["accession_number"] == accession_of(sent)
    assert order["patient"]["patient_id"] == "PID-77" and order["patient"]["sex"] == "M"
    assert order["patient"]["name"] == "Wang^Fang"
    assert order["patient"]["birth_date"] == "19900506"
    read = fhir.client(fhir.viewer).reference("ServiceRequest", resource_id).to_resource()
    assert read["contained"][0]["identifier"][0]["value"] == "PID-77"


def test_transaction_is_all_or_nothing_and_batch_is_per_entry(fhir: FhirServer) -> None:
    """One bad entry fails the whole transaction (nothing stored); a batch stores the good one."""
    good = service_request()
    bad = service_request(priority="whenever")
    refused = fhir.http("POST", "", fhir.operator, json=transaction("transaction", good, bad))
    assert refused.status_code == 400
    [issue] = refused.json()["issue"]
    assert issue["expression"] == ["Bundle.entry[2].resource.priority"]
    search = {"identifier": accession_of(good)}
    nothing = fhir.http("GET", "/ServiceRequest", fhir.viewer, params=search).json()
    assert nothing["total"] == 0
    batch = fhir.http("POST", "", fhir.operator, json=transaction("batch", good, bad))
    assert batch.status_code == 200, batch.text
    statuses = [e["response"]["status"] for e in batch.json()["entry"]]
    assert statuses == ["200 OK", "201 Created", "400 Bad Request"]
    outcome = batch.json()["entry"][2]["response"]["outcome"]
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[2].resource.priority"]
    stored = fhir.http("GET", "/ServiceRequest", fhir.viewer, params=search).json()
    assert stored["total"] == 1


def _post(fhir: FhirServer, body: bytes, content_type: str = FHIR_JSON) -> httpx.Response:
    return fhir.http(
        "POST",
        "/ServiceRequest",
        fhir.operator,
        content=body,
        headers={"Content-Type": content_type},
    )


@pytest.mark.parametrize(
    ("make", "status", "element"),
    [
        pytest.param(
            lambda: json.dumps({**service_request(), "resourceType": "Patient"}).encode(),
            400,
            "ServiceRequest.resourceType",
            id="wrong-type",
        ),
        pytest.param(
            lambda: json.dumps(service_request(priority="urgent!")).encode(),
            400,
            "ServiceRequest.priority",
            id="bad-priority",
        ),
        pytest.param(
            lambda: json.dumps(service_request(identifier=[typed("PLAC", "P")])).encode(),
            422,
            "ServiceRequest.identifier",
            id="no-accession",
        ),
        pytest.param(
            lambda: json.dumps(service_request(authoredOn="yesterday")).encode(),
            400,
            "ServiceRequest.authoredOn",
            id="bad-datetime",
        ),
        pytest.param(
            lambda: json.dumps(
                {k: v for k, v in service_request().items() if k != "intent"}
            ).encode(),
            400,
            "ServiceRequest.intent",
            id="missing-intent",
        ),
        pytest.param(lambda: b"<ServiceRequest/>", 400, "ServiceRequest", id="not-json"),
        pytest.param(lambda: b"[1, 2]", 400, "ServiceRequest", id="not-an-object"),
    ],
)
def test_invalid_input_gets_an_operation_outcome_naming_the_element(
    fhir: FhirServer, make: Callable[[], bytes], status: int, element: str
) -> None:
    """Each invalid body gets its 4xx and an OperationOutcome whose issue names the element."""
    answer = _post(fhir, make())
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(FHIR_JSON)
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert element in [e for issue in outcome["issue"] for e in issue.get("expression", [])]


def test_oversized_and_non_json_bodies_are_refused_and_the_server_keeps_serving(
    fhir: FhirServer,
) -> None:
    """Over the limit is 413, XML 415, each with an OperationOutcome; then a POST works."""
    big = json.dumps(service_request(note=[{"text": "x" * MAX_BODY_BYTES}])).encode()
    too_big = _post(fhir, big)
    assert too_big.status_code == 413
    assert too_big.json()["issue"][0]["code"] == "too-costly"
    xml = _post(fhir, b"<ServiceRequest/>", "application/fhir+xml")
    assert xml.status_code == 415 and xml.json()["resourceType"] == "OperationOutcome"
    assert _post(fhir, json.dumps(service_request()).encode()).status_code == 201


def test_tokens_are_required_and_roles_enforced(fhir: FhirServer) -> None:
    """No or a wrong token is 401 (WWW-Authenticate: Bearer); a viewer posting is 403."""
    body = service_request()
    missing = fhir.http("POST", "/ServiceRequest", None, json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert fhir.http("GET", "/ServiceRequest", "not-a-token").status_code == 401
    with pytest.raises(AuthorizationError):
        fhir.client(None).resources("ServiceRequest").search(identifier="x").fetch()
    with pytest.raises(AuthorizationError):
        fhir.client("wrong").resources("ServiceRequest").search(identifier="x").fetch()
    with pytest.raises(ForbiddenError):
        fhir.client(fhir.viewer).resource("ServiceRequest", **body).save()
    forbidden = fhir.http("POST", "/ServiceRequest", fhir.viewer, json=body)
    assert forbidden.status_code == 403 and forbidden.json()["issue"][0]["code"] == "forbidden"
    assert fhir.http("POST", "", fhir.viewer, json=transaction("batch", body)).status_code == 403


def test_a_revoked_token_gets_401(fhir: FhirServer) -> None:
    """``radbridge tokens revoke`` shuts a token out of the running server at once."""
    spare = token(fhir.rb, "admin")
    assert fhir.http("GET", "/ServiceRequest", spare, params={"identifier": "x"}).status_code == 200
    listed = json.loads(fhir.rb.cli("tokens", "list", "--json").stdout)
    [spare_id] = [t["id"] for t in listed if t["role"] == "admin"]
    fhir.rb.cli("tokens", "revoke", str(spare_id))
    assert fhir.http("GET", "/ServiceRequest", spare, params={"identifier": "x"}).status_code == 401


def test_kill_9_right_after_a_201_keeps_the_order(tmp_path: Path) -> None:
    """An order answered 201 is there after kill -9 and a restart."""
    rb = Radbridge(tmp_path / "rb", fhir_config(tmp_path / "rb"))
    rb.start()
    try:
        base = f"http://{LOOPBACK}:{rb.config['http']['listen']['port']}/fhir"
        wait_http(base)
        operator = token(rb, "operator")
        sent = service_request()
        created = httpx.post(
            f"{base}/ServiceRequest",
            content=json.dumps(sent),
            headers={"Authorization": f"Bearer {operator}", "Content-Type": FHIR_JSON},
            timeout=10,
        )
        assert created.status_code == 201
        rb.kill9()
        rb.start()
        wait_http(base)
        read = httpx.get(
            f"{base}/ServiceRequest/{created.json()['id']}",
            headers={"Authorization": f"Bearer {operator}"},
            timeout=10,
        )
        assert read.status_code == 200
        assert accession_of(read.json()) == accession_of(sent)
    finally:
        rb.close()
