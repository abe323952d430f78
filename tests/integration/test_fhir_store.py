"""The FHIR routes on each store (SQLite, PostgreSQL): the web edge in-process, httpx as client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.web.edge import WebEdge
from broker.model.domain import Role
from broker.runtime.edges import ServiceContext
from broker.store import StudyStore
from broker.store.api_tokens import ApiTokens
from broker.store.spool import Spool
from config.schema import Settings
from tests.databases import DATABASES, empty_database
from tests.fhir_data import accession_of, service_request, transaction
from tests.peers import LOOPBACK, free_port


@dataclass
class Fhir:
    base: str
    headers: dict[str, str]

    def call(self, method: str, path: str, body: Any = None, **params: str) -> httpx.Response:
        content = None if body is None else json.dumps(body)
        return httpx.request(
            method, f"{self.base}{path}", content=content, params=params, headers=self.headers
        )


@pytest.fixture(params=DATABASES)
def fhir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fhir]:
    """The web edge on a free loopback port over an empty store, and an operator token."""
    with empty_database(request.param, tmp_path) as engine:
        port = free_port()
        settings = Settings.model_validate(
            {
                "storage": {"spool": str(tmp_path / "spool"), "database": "sqlite:///unused.db"},
                "http": {"listen": {"host": LOOPBACK, "port": port}},
            }
        )
        spool = Spool(tmp_path / "spool")
        spool.prepare()
        edge = WebEdge()
        edge.start(ServiceContext(settings, engine, StudyStore(engine), spool))
        token = ApiTokens(engine).create(Role.OPERATOR)
        try:
            yield Fhir(
                f"http://{LOOPBACK}:{port}/fhir",
                {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
            )
        finally:
            edge.stop()


def test_create_update_search_and_transaction_on_each_store(fhir: Fhir) -> None:
    """Create (201), PUT (version 2), search by accession and a transaction work on the store."""
    sent = service_request()
    created = fhir.call("POST", "/ServiceRequest", sent)
    assert created.status_code == 201, created.text
    resource_id = created.json()["id"]
    updated = fhir.call(
        "PUT", f"/ServiceRequest/{resource_id}", {**sent, "id": resource_id, "priority": "asap"}
    )
    assert updated.status_code == 200 and updated.json()["meta"]["versionId"] == "2"
    found = fhir.call("GET", "/ServiceRequest", identifier=accession_of(sent)).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [resource_id]
    assert found["entry"][0]["resource"]["priority"] == "asap"
    second = service_request()
    bundle = fhir.call("POST", "", transaction("transaction", second))
    assert bundle.status_code == 200, bundle.text
    assert bundle.json()["entry"][1]["response"]["status"] == "201 Created"
    again = fhir.call("GET", "/ServiceRequest", identifier=accession_of(second)).json()
    assert again["total"] == 1
    assert again["entry"][0]["resource"]["contained"][0]["gender"] == "male"
