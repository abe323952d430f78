"""The HTTP edge as hostile clients meet it: radbridge's own server (the ``web`` edge,
uvicorn on a real socket) on a store with a study and its order.

Clients come from other loopback addresses (127.0.0.2-4 stand for other hosts:
only 127.0.0.1 and ::1 count as this host); ``http.trusted_proxies`` names
127.0.0.2. Patient data and the audit trail follow the console's rules, forwarded
headers count only from the trusted proxy, the API description is closed to other
hosts, ``/docs`` renders with the network closed, and keep-alive requests are not
held back by Nagle's algorithm.
"""

from __future__ import annotations

import http.client
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import Engine

from adapters.console.auth import THROTTLE
from adapters.web.edge import WebEdge
from broker.model.domain import InboundMessage, Order, OrderPriority, OrderSource, Patient, Role
from broker.model.identity import IdentityConflictError
from broker.runtime.edges import ServiceContext
from broker.store import StudyStore
from broker.store.api_tokens import ApiTokens
from broker.store.orders import OrderStore
from broker.store.spool import Spool
from config.schema import Settings
from tests.databases import empty_database
from tests.e2e.test_console import ensure_chromium
from tests.integration.test_store import _rec
from tests.peers import free_port

pytestmark = pytest.mark.xdist_group("http_edge")

API = "/api/v1"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.10.511.77"
PATIENT = Patient(
    patient_id="PID-EDGE-31", issuer="HOSP", name="EDGECASE^MIRA", birth_date="19610203", sex="F"
)
OTHER = Patient(patient_id="PID-EDGE-99", issuer="HOSP", name="OTHERONE^RUT", sex="M")
PROXY = "127.0.0.2"
ELSEWHERE = "127.0.0.3"


@dataclass
class Edge:
    base: str
    port: int
    tokens: dict[Role, str]

    def client(self, source: str = "127.0.0.1", role: Role | None = None) -> httpx.Client:
        """A client connecting from ``source``, with the token of ``role``."""
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(
            base_url=self.base,
            headers=headers,
            transport=httpx.HTTPTransport(local_address=source),
            timeout=30,
        )


def serve(engine: Engine, folder: Path, http: dict[str, Any]) -> tuple[WebEdge, int]:
    """radbridge's web edge on a free loopback port with the ``http`` settings."""
    port = free_port()
    settings = Settings.model_validate(
        {
            "storage": {"spool": str(folder / "spool"), "database": "sqlite:///unused.db"},
            "http": {"listen": {"host": "127.0.0.1", "port": port}, **http},
        }
    )
    context = ServiceContext(
        settings=settings, engine=engine, store=StudyStore(engine), spool=Spool(folder / "spool")
    )
    edge = WebEdge()
    edge.start(context)
    return edge, port


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Path]]:
    """A store with one stable chest CT of :data:`PATIENT`, its order, and a token per role."""
    folder = tmp_path_factory.mktemp("edge")
    with empty_database("sqlite", folder) as engine:
        studies = StudyStore(engine)
        studies.record_instance(
            _rec("1.1", study=STUDY, at=T0, patient=PATIENT, accession_number="ACC-EDGE-1"), 1.0
        )
        studies.close_stable(T0 + timedelta(seconds=2))
        OrderStore(engine).record_order(
            Order(
                source=OrderSource.HL7,
                placer_number="PL-EDGE",
                accession_number="ACC-EDGE-1",
                patient=PATIENT,
                modality="CT",
                priority=OrderPriority.ROUTINE,
            ),
            InboundMessage(source=OrderSource.HL7, kind="ORM^O01", raw=b"MSH|^~\\&|", peer="x"),
        )
        with pytest.raises(IdentityConflictError):  # the same order for another patient
            OrderStore(engine).record_order(
                Order(
                    source=OrderSource.HL7,
                    placer_number="PL-EDGE",
                    accession_number="ACC-EDGE-1",
                    patient=OTHER,
                    modality="CT",
                    priority=OrderPriority.ROUTINE,
                ),
                InboundMessage(source=OrderSource.HL7, kind="ORM^O01", raw=b"MSH|^~\\&|2"),
            )
        yield engine, folder


@pytest.fixture(scope="module")
def edge(store: tuple[Engine, Path]) -> Iterator[Edge]:
    """The web edge on the store, trusting forwarded headers from :data:`PROXY` only."""
    engine, folder = store
    tokens = ApiTokens(engine)
    made = {role: tokens.create(role, f"edge {role.value}") for role in Role}
    server, port = serve(engine, folder, {"trusted_proxies": [f"{PROXY}/32"]})
    try:
        yield Edge(f"http://127.0.0.1:{port}", port, made)
    finally:
        server.stop()


def _patients(body: Any) -> list[dict[str, Any]]:
    items = body.get("items", [body])
    found = [i["patient"] for i in items]
    found += [i["order"]["patient"] for i in items if i.get("order")]
    return found


def test_viewers_get_records_without_patient_data_operators_with_it(edge: Edge) -> None:
    """Studies and orders (lists and details): a viewer token gets name, patient ID and birth
    date null (sex stays), an operator or admin the values; a viewer may not filter by
    patient ID (403), an operator may."""
    paths = [
        f"{API}/studies",
        f"{API}/studies/{STUDY}",
        f"{API}/orders",
        f"{API}/orders/ACC-EDGE-1",
    ]
    with edge.client(role=Role.VIEWER) as viewer, edge.client(role=Role.OPERATOR) as operator:
        for path in paths:
            seen = _patients(viewer.get(path).raise_for_status().json())
            assert seen and all(
                (p["name"], p["patient_id"], p["birth_date"], p["sex"]) == (None, None, None, "F")
                for p in seen
            ), path
            assert PATIENT.name not in viewer.get(path).text, path
            shown = _patients(operator.get(path).raise_for_status().json())
            assert {(p["name"], p["patient_id"], p["birth_date"]) for p in shown} == {
                (PATIENT.name, PATIENT.patient_id, PATIENT.birth_date)
            }, path
        for path in (f"{API}/studies", f"{API}/orders"):
            refused = viewer.get(path, params={"patient_id": PATIENT.patient_id})
            assert refused.status_code == 403 and "patient_id" in refused.json()["detail"]
            found = operator.get(path, params={"patient_id": PATIENT.patient_id}).json()
            assert len(found["items"]) == 1


def test_viewers_get_identity_conflicts_without_patient_ids(edge: Edge) -> None:
    """An identity conflict (an order update for another patient): a viewer gets both
    patient IDs null and taken out of the text; an operator sees them."""
    with edge.client(role=Role.VIEWER) as viewer, edge.client(role=Role.OPERATOR) as operator:
        seen = viewer.get(f"{API}/conflicts").raise_for_status()
        [conflict] = seen.json()["items"]
        assert conflict["held"]["patient_id"] is None and conflict["claimed"]["patient_id"] is None
        for value in (PATIENT.patient_id, OTHER.patient_id):
            assert value not in seen.text
            assert value not in viewer.get(f"{API}/conflicts/{conflict['id']}").text
        [shown] = operator.get(f"{API}/conflicts").json()["items"]
        assert (shown["held"]["patient_id"], shown["claimed"]["patient_id"]) == (
            PATIENT.patient_id,
            OTHER.patient_id,
        )


def test_the_audit_trail_is_for_admins(edge: Edge) -> None:
    """``/api/v1/audit`` and its export: 403 for viewer and operator tokens, 200 for admins."""
    period = {"from": "2024-01-01", "to": "2030-12-31"}
    for role, status in ((Role.VIEWER, 403), (Role.OPERATOR, 403), (Role.ADMIN, 200)):
        with edge.client(role=role) as client:
            assert client.get(f"{API}/audit").status_code == status, role
            assert client.get(f"{API}/audit/export", params=period).status_code == status, role


def test_openapi_documents_hidden_patient_data_and_the_bearer_scheme(edge: Edge) -> None:
    """The description says the patient fields are null for viewers, declares the bearer
    security scheme, and names it on the operations that need a token."""
    with edge.client() as client:
        schema = client.get("/openapi.json").raise_for_status().json()
    patient = schema["components"]["schemas"]["PatientOut"]["properties"]
    for field in ("name", "patient_id", "birth_date"):
        assert "viewer" in patient[field]["description"], field
    assert schema["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["token"]["description"],
    }
    assert schema["paths"][f"{API}/studies"]["get"]["security"] == [{"token": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def _fail_login(client: httpx.Client, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post("/console/login", data={"token": "not-a-token"}, headers=headers)


def test_rotating_forwarded_for_does_not_escape_the_login_throttle(edge: Edge) -> None:
    """From a client that is not a trusted proxy (127.0.0.1, which uvicorn trusts by
    default), X-Forwarded-For is ignored: ten failed logins with ten different forwarded
    addresses block its own address (429)."""
    try:
        with edge.client() as client:
            for n in range(10):
                assert _fail_login(client, f"198.51.100.{n}").status_code == 401
            assert _fail_login(client, "198.51.100.99").status_code == 429
    finally:
        THROTTLE.succeeded("127.0.0.1")  # the throttle is per process: other tests log in


def test_forwarded_headers_count_only_from_a_trusted_proxy(edge: Edge) -> None:
    """The trusted proxy's X-Forwarded-For is the client address (a failed login is audited
    from it, and /metrics wants a token); X-Forwarded-Proto: https from it brings HSTS.
    The same headers from 127.0.0.1 are ignored: it stays loopback (/metrics without a
    token) and gets no HSTS."""
    with edge.client(source=PROXY) as proxy, edge.client() as local:
        assert _fail_login(proxy, "192.0.2.7").status_code == 401
        assert proxy.get("/metrics", headers={"X-Forwarded-For": "192.0.2.7"}).status_code == 401
        secure = proxy.get("/healthz", headers={"X-Forwarded-Proto": "https"})
        assert secure.headers["strict-transport-security"].startswith("max-age=")
        forged = {"X-Forwarded-For": "192.0.2.8", "X-Forwarded-Proto": "https"}
        assert local.get("/metrics", headers=forged).status_code == 200
        assert "strict-transport-security" not in local.get("/healthz", headers=forged).headers
    with edge.client(role=Role.ADMIN) as admin:
        failed = admin.get(f"{API}/audit", params={"action": "console.login_failed"}).json()
    assert "192.0.2.7" in {row["peer"] for row in failed["items"]}


def test_api_description_is_closed_to_other_hosts(edge: Edge) -> None:
    """From another host /docs and /redoc are 403 and /openapi.json 401 (200 with any API
    token); from this host all three are served."""
    with edge.client(source=ELSEWHERE) as other:
        for path in ("/docs", "/redoc"):
            answer = other.get(path)
            assert answer.status_code == 403 and "public_docs" in answer.json()["detail"]
        assert other.get("/openapi.json").status_code == 401
        token = {"Authorization": f"Bearer {edge.tokens[Role.VIEWER]}"}
        assert other.get("/openapi.json", headers=token).status_code == 200
        assert other.get("/openapi.json", headers={"Authorization": "Bearer x"}).status_code == 401
    with edge.client() as local:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert local.get(path).status_code == 200, path


def test_public_docs_opens_the_description_to_every_host(store: tuple[Engine, Path]) -> None:
    """With ``http.public_docs: true`` another host gets /docs, /redoc and /openapi.json."""
    engine, folder = store
    server, port = serve(engine, folder, {"public_docs": True})
    try:
        elsewhere = httpx.HTTPTransport(local_address=ELSEWHERE)
        # 30 s as the module's other clients: the description is built on the first request,
        # beside a loaded machine's other tests (httpx's own 5 s ran out)
        with httpx.Client(transport=elsewhere, timeout=30) as other:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert other.get(f"http://127.0.0.1:{port}{path}").status_code == 200, path
    finally:
        server.stop()


def _median_round_trip(port: int, *, keep_alive: bool, requests: int = 20) -> float:
    times = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(requests):
            if not keep_alive:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.connect()
            start = time.perf_counter()
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            times.append(time.perf_counter() - start)
            assert response.status == 200
    finally:
        connection.close()
    return statistics.median(times)


def test_keep_alive_requests_are_not_held_back_by_nagle(edge: Edge) -> None:
    """20 requests on one kept-alive connection take no longer each (median) than a request
    on a fresh connection plus 15 ms: without TCP_NODELAY on the accepted socket every
    response after the first waits ~40 ms for the client's delayed ACK."""
    fresh = _median_round_trip(edge.port, keep_alive=False)
    kept = _median_round_trip(edge.port, keep_alive=True)
    assert kept < fresh + 0.015, f"keep-alive {kept * 1000:.1f} ms, fresh {fresh * 1000:.1f} ms"


@pytest.mark.slow(seconds=30)  # the module's group with it
@pytest.mark.timeout(180)
def test_docs_render_offline_and_authorize_with_a_token(edge: Edge) -> None:
    """In Chromium with every request off radbridge refused (no internet), /docs renders
    the operations and its Authorize button takes a token that a "Try it out" of
    /api/v1/studies sends (200); /redoc renders the operations too. Nothing is asked of
    another host (the pages' Content-Security-Policy stops ReDoc's CDN logo before it goes)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    outside: list[str] = []

    def only_radbridge(route: Any) -> None:
        if route.request.url.startswith(edge.base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=ensure_chromium(), headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context()
            context.route("**/*", only_radbridge)
            page = context.new_page()
            page.goto(f"{edge.base}/docs")
            page.wait_for_selector(".opblock", timeout=60_000)
            assert page.locator(".opblock").count() >= 20
            page.click("button.authorize")
            page.fill(".modal-ux input", edge.tokens[Role.VIEWER])
            page.click(".modal-ux button.authorize")
            page.click(".modal-ux button.btn-done")
            studies = page.locator("#operations-studies-list_studies_api_v1_studies_get")
            studies.locator(".opblock-summary").click()
            studies.locator("button.try-out__btn").click()
            studies.locator("button.execute").click()
            status = studies.locator(".live-responses-table tr.response .response-col_status").first
            status.wait_for(timeout=30_000)
            assert status.inner_text().strip().startswith("200"), status.inner_text()
            page.goto(f"{edge.base}/redoc")
            page.wait_for_selector("[data-section-id^='operation/']", timeout=60_000)
            assert page.locator("[data-section-id^='operation/']").count() >= 20
        finally:
            browser.close()
    assert outside == []


def test_trusted_proxies_are_addresses_or_networks() -> None:
    """A host name or a network with host bits set in http.trusted_proxies is refused,
    saying what would have been valid (uvicorn would take it as a literal never matched)."""
    for wrong in ("proxy.hospital.local", "10.0.0.5/8"):
        with pytest.raises(ValidationError, match=r"valid: 10\.0\.0\.5, 10\.1\.0\.0/16"):
            Settings.model_validate({"http": {"trusted_proxies": [wrong]}})
    taken = Settings.model_validate({"http": {"trusted_proxies": ["10.0.0.5", "fd00::/8"]}})
    assert [str(n) for n in taken.http_settings().trusted_proxies] == ["10.0.0.5/32", "fd00::/8"]
