"""Large FHIR transaction Bundles against a real ``radbridge serve``: stored once, bounded,
and never stalling other intake (C-STORE from dcmtk ``storescu``, HL7 orders over MLLP).

The store is inspected read-only beside the running service (its SQLite file).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adapters.dicom.synthetic import generate_study
from adapters.hl7.ack import AckCode, read_ack
from adapters.hl7.framing import frame
from broker.store import make_engine
from broker.store.orders import OrderStore
from tests.e2e.test_fhir import fhir_config, token, wait_http
from tests.fhir_data import FHIR_JSON, accession_of, service_request, transaction
from tests.hl7_messages import orm_o01, sample_order
from tests.peers import LOOPBACK, free_port, storescu
from tests.service import Radbridge

#: The entry bound and body bound the module's service runs with.
MAX_ENTRIES = 300
MAX_BODY = 2 * 1024 * 1024

# One service for the module: its tests run one after the other in one worker.
pytestmark = pytest.mark.xdist_group("fhir_bundles")


@dataclass
class Service:
    """The running radbridge: its FHIR base URL, operator token, HL7 port and store file."""

    rb: Radbridge
    base: str
    operator: str
    hl7_port: int
    database: Path

    def post(self, bundle: dict[str, Any] | bytes) -> httpx.Response:
        body = bundle if isinstance(bundle, bytes) else json.dumps(bundle).encode()
        headers = {"Authorization": f"Bearer {self.operator}", "Content-Type": FHIR_JSON}
        return httpx.post(self.base, content=body, headers=headers, timeout=120)

    def search(self, accession: str) -> int:
        found = httpx.get(
            f"{self.base}/ServiceRequest",
            params={"identifier": accession},
            headers={"Authorization": f"Bearer {self.operator}"},
            timeout=30,
        )
        assert found.status_code == 200, found.text
        total: int = found.json()["total"]
        return total

    def counts(self) -> tuple[int, int, int]:
        """(orders, order_messages rows, bytes of all stored messages), read-only."""
        uri = f"{self.database.as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            orders = conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
            rows, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(raw)), 0) FROM order_messages"
            ).fetchone()
        return int(orders), int(rows), int(size)

    def file_bytes(self) -> int:
        """The store's database file and its write-ahead log, in bytes."""
        wal = self.database.with_name(self.database.name + "-wal")
        return self.database.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One radbridge for the module: HTTP (FHIR), HL7 and DICOM listeners, small bounds."""
    folder = tmp_path_factory.mktemp("fhir-bundles") / "rb"
    config = fhir_config(folder)
    hl7_port = free_port()
    config["hl7"] = {"listen": {"host": LOOPBACK, "port": hl7_port}}
    config["fhir"] = {"max_bundle_entries": MAX_ENTRIES, "max_body_bytes": MAX_BODY}
    rb = Radbridge(folder, config)
    rb.start()
    try:
        base = f"http://{LOOPBACK}:{config['http']['listen']['port']}/fhir"
        wait_http(base)
        database = Path(config["storage"]["database"].removeprefix("sqlite:///"))
        yield Service(rb, base, token(rb, "operator"), hl7_port, database)
    finally:
        rb.close()


def orders(n: int, note: int = 0) -> list[dict[str, Any]]:
    """``n`` CT orders with fresh accession numbers, each with a ``note`` of that many bytes."""
    extra = {"note": [{"text": "n" * note}]} if note else {}
    return [service_request(**extra) for _ in range(n)]


def test_a_bundle_is_stored_once_not_once_per_entry(service: Service) -> None:
    """A transaction of 250 orders adds one copy of its body to the store (plus each
    order's row), not one per entry; every order still names the Bundle as its message.
    A batch too, its entries refused for another patient included."""
    sent = orders(250)
    body = json.dumps(transaction("transaction", *sent)).encode()
    orders_before, rows_before, bytes_before = service.counts()
    file_before = service.file_bytes()
    answer = service.post(body)
    assert answer.status_code == 200, answer.text
    orders_after, rows_after, bytes_after = service.counts()
    assert orders_after - orders_before == 250
    assert rows_after - rows_before == 1
    assert bytes_after - bytes_before == len(body)
    # The database file grows by the body and the orders' rows: about 1.4 MB here, where
    # a copy of the body per entry (the old shape) grew it by 90 MB.
    assert service.file_bytes() - file_before < 20 * len(body)
    store = OrderStore(make_engine(f"sqlite:///{service.database}"))
    for entry in (answer.json()["entry"][1], answer.json()["entry"][-1]):
        resource_id = entry["response"]["location"].split("/")[1]
        [message] = store.raw_messages(store.by_resource_id(resource_id).id)
        assert message.kind == "Bundle" and message.raw == body
    held = service_request()  # its own patient is PID-1; the Bundles' Patient is PID-77
    assert service.post(transaction("batch", held)).status_code == 200
    batch = transaction("batch", *orders(60))
    request = {"method": "POST", "url": "ServiceRequest"}
    batch["entry"] += [{"resource": held, "request": request}] * 60
    batch_body = json.dumps(batch).encode()
    _, rows_before, bytes_before = service.counts()
    answer = service.post(batch_body)
    assert answer.status_code == 200, answer.text
    statuses = [e["response"]["status"] for e in answer.json()["entry"]]
    assert statuses == ["200 OK"] + ["201 Created"] * 60 + ["409 Conflict"] * 60
    _, rows_after, bytes_after = service.counts()
    assert (rows_after - rows_before, bytes_after - bytes_before) == (1, len(batch_body))


def test_past_the_entry_bound_is_413_and_nothing_is_stored(service: Service) -> None:
    """One entry more than ``fhir.max_bundle_entries`` → 413 with an OperationOutcome at
    Bundle.entry, and a body over ``fhir.max_body_bytes`` → 413; neither stores anything,
    each is logged."""
    sent = orders(MAX_ENTRIES)  # with the Patient entry: MAX_ENTRIES + 1 entries
    before = service.counts()
    refused = service.post(transaction("transaction", *sent))
    assert refused.status_code == 413, refused.text
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [issue] = outcome["issue"]
    assert issue["code"] == "too-costly" and issue["expression"] == ["Bundle.entry"]
    assert f"at most {MAX_ENTRIES}" in issue["diagnostics"]
    big = transaction("batch", *orders(2, note=MAX_BODY))
    too_big = service.post(big)
    assert too_big.status_code == 413 and too_big.json()["issue"][0]["code"] == "too-costly"
    assert service.counts() == before
    assert service.search(accession_of(sent[0])) == 0
    refusals = {line["event"] for line in service.rb.log_lines() if line.get("limit")}
    assert refusals >= {
        "FHIR Bundle refused: too many entries",
        "FHIR request refused: body too large",
    }
    allowed = service.post(transaction("transaction", *sent[1:]))
    assert allowed.status_code == 200, allowed.text


def _hl7_order(port: int, n: int) -> float:
    """Send one ORM^O01 over MLLP and wait for its AA; the seconds it took."""
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, port), timeout=60) as sock:
        sock.sendall(frame(orm_o01(sample_order(n), control_id=f"B{n}").encode()))
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            assert chunk, "the HL7 listener closed the connection without an ACK"
            answer += chunk
    assert read_ack(answer.strip(b"\x0b\x1c\r")).code is AckCode.AA
    return time.monotonic() - started


def _store(files: list[Path], port: int) -> float:
    started = time.monotonic()
    storescu(files, port)
    return time.monotonic() - started


def test_a_large_bundle_does_not_stall_c_store_or_hl7_intake(
    service: Service, tmp_path: Path
) -> None:
    """While a transaction of the most entries allowed (each with a 3 kB note: a 1 MB body)
    is checked and stored, 2-instance C-STOREs (storescu) and HL7 orders sent one after
    another all complete about as fast as when idle (the old shape held the store's one
    writer for many seconds, writing a copy of the body per entry)."""
    ct = generate_study(
        "ct_chest",
        tmp_path / "ct",
        instances=2,
        rows=32,
        columns=32,
        accession=f"ACC-{uuid.uuid4().hex[:8]}",
    )
    idle_store = min(_store(ct, service.rb.port) for _ in range(2))
    numbers = iter(range(900_000, 999_999))
    idle_hl7 = min(_hl7_order(service.hl7_port, next(numbers)) for _ in range(3))
    body = json.dumps(transaction("transaction", *orders(MAX_ENTRIES - 1, note=3000))).encode()
    assert len(body) > 1_000_000
    answers: list[httpx.Response] = []
    posting = threading.Thread(target=lambda: answers.append(service.post(body)))
    posting.start()
    stores: list[float] = []
    orders_sent: list[float] = []
    while posting.is_alive() or not stores:
        stores.append(_store(ct, service.rb.port))
        orders_sent.append(_hl7_order(service.hl7_port, next(numbers)))
    posting.join()
    assert answers[0].status_code == 200, answers[0].text
    assert len(answers[0].json()["entry"]) == MAX_ENTRIES
    # Relative bounds with room for a loaded machine, far below a stalled writer's delay.
    assert max(stores) < 3 * idle_store + 2.0, (idle_store, stores)
    assert max(orders_sent) < 3 * idle_hl7 + 2.0, (idle_hl7, orders_sent)


def test_a_transaction_is_all_or_nothing_with_a_response_per_entry(service: Service) -> None:
    """A transaction of creates and an update answers one response per entry in order
    (Patient 200, new orders 201, the updated one 200 version 2); one refused at the end
    (another patient's order) stores none of its orders, and keeps its body once; one
    order named by three entries is updated three times and its Bundle kept once."""
    held = service_request()
    created = httpx.post(
        f"{service.base}/ServiceRequest",
        content=json.dumps(held),
        headers={"Authorization": f"Bearer {service.operator}", "Content-Type": FHIR_JSON},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    new = orders(40)
    # The held order's patient is PID-1; the Bundle's Patient (every new entry's subject) PID-77.
    before = service.counts()
    refused = service.post(transaction("transaction", *new, {**held, "priority": "routine"}))
    assert refused.status_code == 409, refused.text
    [issue] = refused.json()["issue"]
    assert issue["code"] == "conflict"
    assert issue["expression"] == [f"Bundle.entry[{len(new) + 1}].resource.subject"]
    orders_after, rows_after, _ = service.counts()
    assert orders_after == before[0]
    assert rows_after == before[1] + 1  # the refused message, once, with why
    assert all(service.search(accession_of(sr)) == 0 for sr in (new[0], new[-1]))
    bundle = transaction("transaction", *new)
    again = {"resource": {**held, "priority": "routine"}}
    bundle["entry"].append({**again, "request": {"method": "POST", "url": "ServiceRequest"}})
    stored = service.post(bundle)
    assert stored.status_code == 200, stored.text
    response = stored.json()
    assert response["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["200 OK"] + ["201 Created"] * len(new) + ["200 OK"]
    assert response["entry"][-1]["response"]["location"] == (
        f"ServiceRequest/{created.json()['id']}/_history/2"
    )
    assert all(service.search(accession_of(sr)) == 1 for sr in (new[0], new[-1]))
    before = service.counts()
    thrice = service.post(transaction("transaction", *[new[0]] * 3))
    assert [e["response"]["status"] for e in thrice.json()["entry"]][1:] == ["200 OK"] * 3
    assert thrice.json()["entry"][-1]["response"]["location"].endswith("/_history/4")
    assert service.counts()[:2] == (before[0], before[1] + 1)


def _reload_with(service: Service, max_entries: int) -> None:
    """Write ``fhir.max_bundle_entries`` into the configuration file and send SIGHUP."""
    rb = service.rb
    rb.config["fhir"]["max_bundle_entries"] = max_entries
    tmp = rb.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(rb.config))
    tmp.replace(rb.config_path)
    assert rb.process is not None
    rb.process.send_signal(1)  # SIGHUP


def _status_within(service: Service, entries: int, status: int, timeout: float = 60) -> None:
    """Post transactions of ``entries`` entries until one answers ``status``."""
    deadline = time.monotonic() + timeout
    while True:
        answer = service.post(transaction("transaction", *orders(entries - 1)))
        if answer.status_code == status or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert answer.status_code == status, answer.text


def test_a_reload_applies_new_bounds_without_a_restart(service: Service) -> None:
    """``fhir.max_bundle_entries`` lowered in the file and reloaded (SIGHUP) refuses the
    next larger Bundle with 413 without a restart; raised back, such a Bundle passes."""
    _status_within(service, 4, 200)
    try:
        _reload_with(service, 3)
        _status_within(service, 4, 413)
        _status_within(service, 3, 200)
    finally:
        _reload_with(service, MAX_ENTRIES)
    _status_within(service, 4, 200)
