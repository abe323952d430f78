"""FHIR orders on a hub with sites: the web edge in-process over SQLite, httpx as the client.

A ServiceRequest is a site's order by the token's site, or by the Organization its
requester or performer names (the site's id or hl7_facility); a site's token creates
orders for its own sites only and sees only theirs; an order never moves between sites.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from adapters.web.edge import WebEdge
from broker.model.domain import Role
from broker.runtime.edges import ServiceContext
from broker.store import StudyStore, make_engine
from broker.store.api_tokens import ApiTokens
from broker.store.migrate import migrate
from broker.store.orders import OrderStore
from broker.store.spool import Spool
from config.schema import Settings
from tests.fhir_data import accession_of, service_request, transaction
from tests.peers import LOOPBACK, free_port

pytestmark = pytest.mark.xdist_group("sites_fhir")

SITES = {
    "township-a": {"name": "Township A", "hl7_facility": "TWA", "issuer": "TWA_PID"},
    "township-b": {"name": "Township B", "hl7_facility": "TWB"},
}


@dataclass
class Hub:
    base: str
    tokens: dict[str, str]
    """hub (every site), a (site A), ab (sites A and B), b (site B): operators."""
    orders: OrderStore

    def call(self, who: str, method: str, path: str, body: Any = None, **params: str) -> Any:
        headers = {
            "Authorization": f"Bearer {self.tokens[who]}",
            "Content-Type": "application/fhir+json",
        }
        content = None if body is None else json.dumps(body)
        return httpx.request(
            method, f"{self.base}{path}", content=content, params=params, headers=headers
        )

    def site_of(self, accession: str) -> str | None:
        [stored] = self.orders.find(accession_number=accession)
        return stored.order.site


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """The web edge of a hub with sites A (issuer TWA_PID) and B, and four operator tokens."""
    folder = tmp_path_factory.mktemp("fhir-sites")
    port = free_port()
    settings = Settings.model_validate(
        {
            "storage": {"spool": str(folder / "spool"), "database": f"sqlite:///{folder}/rb.db"},
            "http": {"listen": {"host": LOOPBACK, "port": port}},
            "sites": SITES,
        }
    )
    engine = make_engine(settings.database_url())
    migrate(engine)
    spool = Spool(folder / "spool")
    spool.prepare()
    edge = WebEdge()
    edge.start(ServiceContext(settings, engine, StudyStore(engine), spool))
    tokens = ApiTokens(engine)
    scopes = {"hub": None, "a": ["township-a"], "ab": ["township-a", "township-b"]}
    scopes["b"] = ["township-b"]
    try:
        yield Hub(
            f"http://{LOOPBACK}:{port}/fhir",
            {who: tokens.create(Role.OPERATOR, sites=sites) for who, sites in scopes.items()},
            OrderStore(engine),
        )
    finally:
        edge.stop()


def _from(site_code: str, **changes: Any) -> dict[str, Any]:
    """A ServiceRequest whose requester is the Organization with identifier ``site_code``."""
    requester = {"type": "Organization", "identifier": {"value": site_code}}
    return service_request(requester=requester, **changes)


def test_a_site_tokens_orders_are_its_sites_and_named_organizations_attribute_orders(
    hub: Hub,
) -> None:
    """Site A's token makes site A's orders (its patient IDs without a system take the
    site's issuer); the hub's token makes site B's order when the requester Organization
    is TWB (hl7_facility), and a hub order when it names no site; a contained performer
    Organization named by site id counts too; a transaction's entries are attributed alike."""
    plain = service_request()
    plain["contained"][0]["identifier"] = [{"value": "12345"}]
    assert hub.call("a", "POST", "/ServiceRequest", plain).status_code == 201
    [stored] = hub.orders.find(accession_number=accession_of(plain))
    assert (stored.order.site, stored.order.patient.issuer) == ("township-a", "TWA_PID")

    by_facility = _from("TWB")
    assert hub.call("hub", "POST", "/ServiceRequest", by_facility).status_code == 201
    assert hub.site_of(accession_of(by_facility)) == "township-b"
    hub_own = _from("SOME-HOSPITAL")
    assert hub.call("hub", "POST", "/ServiceRequest", hub_own).status_code == 201
    assert hub.site_of(accession_of(hub_own)) is None
    performer = service_request()
    performer["contained"].append(
        {"resourceType": "Organization", "id": "o", "identifier": [{"value": "township-a"}]}
    )
    performer["performer"] = [{"reference": "#o"}]
    assert hub.call("hub", "POST", "/ServiceRequest", performer).status_code == 201
    assert hub.site_of(accession_of(performer)) == "township-a"

    first, second = _from("TWA"), _from("TWB")
    bundle = hub.call("ab", "POST", "", transaction("transaction", first, second))
    assert bundle.status_code == 200, bundle.text
    assert [hub.site_of(accession_of(sr)) for sr in (first, second)] == [
        "township-a",
        "township-b",
    ]


def test_a_site_token_creates_and_sees_only_its_sites_orders(hub: Hub) -> None:
    """Site A's token naming site B's Organization is 403 and nothing is stored; a token of
    two sites naming none is 422; site B's order is 404 to site A's token (read and PUT)
    and missing from its search; naming two sites is 422."""
    other = _from("TWB")
    refused = hub.call("a", "POST", "/ServiceRequest", other)
    assert refused.status_code == 403, refused.text
    assert refused.json()["issue"][0]["expression"] == ["ServiceRequest.requester"]
    assert hub.orders.find(accession_number=accession_of(other)) == []
    unnamed = hub.call("ab", "POST", "/ServiceRequest", service_request())
    assert unnamed.status_code == 422, unnamed.text
    both = _from("TWA", performer=[{"type": "Organization", "identifier": {"value": "TWB"}}])
    assert hub.call("hub", "POST", "/ServiceRequest", both).status_code == 422

    of_b = service_request()
    created = hub.call("b", "POST", "/ServiceRequest", of_b)
    assert created.status_code == 201
    resource_id = created.json()["id"]
    assert hub.call("a", "GET", f"/ServiceRequest/{resource_id}").status_code == 404
    put = hub.call("a", "PUT", f"/ServiceRequest/{resource_id}", {**of_b, "id": resource_id})
    assert put.status_code == 404, put.text
    assert hub.site_of(accession_of(of_b)) == "township-b"
    found = hub.call("a", "GET", "/ServiceRequest", identifier=accession_of(of_b)).json()
    assert found["total"] == 0
    assert resource_id not in json.dumps(hub.call("a", "GET", "/ServiceRequest").json())
    mine = hub.call("b", "GET", "/ServiceRequest", identifier=accession_of(of_b)).json()
    assert mine["total"] == 1


def test_an_order_never_moves_to_another_site(hub: Hub) -> None:
    """The hub's token PUTting site B's order as site A's (requester TWA) gets 409 and the
    order stays site B's."""
    of_b = _from("TWB")
    resource_id = hub.call("hub", "POST", "/ServiceRequest", of_b).json()["id"]
    moved = {**of_b, "id": resource_id, "requester": _from("TWA")["requester"]}
    answer = hub.call("hub", "PUT", f"/ServiceRequest/{resource_id}", moved)
    assert answer.status_code == 409, answer.text
    assert "site" in answer.text
    assert hub.site_of(accession_of(of_b)) == "township-b"
