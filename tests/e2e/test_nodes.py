"""Two `radbridge serve` nodes (node.id a and b) share one PostgreSQL store, one RabbitMQ bus
and one spool folder, each with its own DICOM port: a study sent over two associations, one to
each node, is completed once and delivered once, whole; and kill -9 of the node sending a job
leaves it to the other node once the lease ran out, which also takes over the timers' turns.

The stalling vendor is a scripted pynetdicom SCP (tests.scripted_scp), so that the kill comes
while a C-STORE is held unanswered, however loaded the machine."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from adapters.dicom.synthetic import generate_study
from broker.model.logging import pseudonym
from broker.store import make_engine
from broker.store.timer_claims import TimerClaims
from tests.databases import fresh_postgres_database
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.scripted_scp import ScriptedStoreSCP
from tests.service import Radbridge, base_config

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.rabbitmq,
    pytest.mark.postgres,
    pytest.mark.xdist_group("nodes"),
]
RABBITMQ = "amqp://guest@127.0.0.1:5672//"
LEASE_SECONDS = 3


def _wait(what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    """The predicates here run the CLI (a process per poll): twice a second."""
    return wait_until(predicate, what, timeout, interval=0.5)


def _vendor(name: str, port: int) -> dict[str, Any]:
    return {
        "product": f"{name} product",
        "transport": {"type": "dicom", "ae_title": name.upper(), "host": "127.0.0.1", "port": port},
        "retries": 3,
    }


def _node_config(
    node: str, folder: Path, spool: Path, database: str, prefix: str, ports: tuple[int, int]
) -> dict[str, Any]:
    """A node's own file: its id and DICOM port; the store, the bus, the spool and the rest
    as every node has them."""
    config = base_config(folder, free_port(), study_stable_seconds=3)
    config["node"] = {"id": node}
    config["storage"] = {"spool": str(spool), "database": database}
    config["bus"] = {"url": RABBITMQ, "prefix": prefix}
    config["delivery"] = {
        "lease_seconds": LEASE_SECONDS,
        "backoff_base_seconds": 0.2,
        "backoff_cap_seconds": 0.5,
    }
    config["vendors"] = {"lungai": _vendor("lungai", ports[0]), "ichai": _vendor("ichai", ports[1])}
    # The stalled C-STORE outlasts any wait of the test's on a loaded machine.
    config["vendors"]["ichai"]["transport"]["timeout"] = 240
    config["routes"] = [
        {"name": "chest", "when": {"modality": "CT", "body_part": "CHEST"}, "send": ["lungai"]},
        {"name": "head", "when": {"modality": "CT", "body_part": "HEAD"}, "send": ["ichai"]},
    ]
    return config


@dataclass
class Cluster:
    """The two nodes, the storescp vendor (lungai) and the one that stalls (ichai: its second
    C-STORE is held until the test releases it)."""

    nodes: dict[str, Radbridge]
    lungai: StoreSCP
    ichai: ScriptedStoreSCP
    database: str

    def running(self) -> Cluster:
        """Start again a node an earlier test killed."""
        for rb in self.nodes.values():
            if rb.process is None:
                rb.start()
        return self

    def jobs(self, study_uid: str) -> list[dict[str, Any]]:
        found = json.loads(self.nodes["a"].cli("jobs", "list", "--json").stdout)
        return [j for j in found if j["study_uid"] == study_uid]

    def job(self, job_id: int) -> dict[str, Any]:
        shown: dict[str, Any] = json.loads(
            self.nodes["b"].cli("jobs", "show", str(job_id), "--json").stdout
        )
        return shown


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Nodes a and b on one new PostgreSQL database, one RabbitMQ prefix and one spool."""
    root = tmp_path_factory.mktemp("nodes")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    with (
        fresh_postgres_database() as database,
        StoreSCP(root / "lungai", ae_title="LUNGAI") as lungai,
        ScriptedStoreSCP(ae_title="ICHAI", stall_after=1) as ichai,
    ):
        nodes: dict[str, Radbridge] = {}
        try:
            for node in ("a", "b"):
                config = _node_config(
                    node,
                    root / node,
                    root / "spool",
                    database,
                    prefix,
                    (lungai.port, ichai.port),
                )
                nodes[node] = Radbridge(root / node, config).start()
            yield Cluster(nodes, lungai, ichai, database)
        finally:
            for rb in nodes.values():
                rb.close()


def _sop_uids(paths: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def _whole(received: list[str], files: list[Path]) -> bool:
    """Whether ``received`` holds every instance of ``files``."""
    return set(received) == set(_sop_uids(files))


def _written(vendor: StoreSCP) -> list[str]:
    """The instances storescp has written whole so far (one it still writes is left out)."""
    found = []
    for path in vendor.files():
        try:
            found.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        except (InvalidDicomError, EOFError, AttributeError):
            continue
    return found


def _stored_by(rb: Radbridge, study_uid: str) -> int:
    """How many instances of the study this node's listener stored (its c-store log lines)."""
    return sum(
        1
        for line in rb.log_lines()
        if line.get("event") == "c-store" and line.get("study_uid") == pseudonym(study_uid)
    )


def test_a_study_sent_half_to_each_node_is_completed_and_delivered_once_whole(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Three instances over an association to node a, three to node b: the study is complete
    once (one complete row, six instances), routed once (one job), and the vendor has each of
    the six instances exactly once."""
    nodes = cluster.running().nodes
    files = sorted(generate_study("ct_chest", tmp_path / "ct", instances=6, rows=32, columns=32))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(files[:3], nodes["a"].port)
    storescu(files[3:], nodes["b"].port)
    wait_until(lambda: _whole(_written(cluster.lungai), files), "the study at the vendor", 60, 0.5)
    [job] = _wait(
        "the study's one job to await its result",
        lambda: [j for j in cluster.jobs(study_uid) if j["state"] == "awaiting_result"],
    )
    study = nodes["b"].study(study_uid)
    assert study["state"] == "stable"
    assert sum(s["instances"] for s in study["series"]) == 6
    assert [e["kind"] for e in study["history"]].count("complete") == 1
    assert len(cluster.jobs(study_uid)) == 1
    received = _sop_uids(cluster.lungai.files())
    assert sorted(received) == sorted(_sop_uids(files))
    assert job["vendor"] == "lungai"
    logged = {n: _stored_by(rb, study_uid) for n, rb in nodes.items()}
    assert logged == {"a": 3, "b": 3}


def test_kill_9_of_the_sending_node_the_other_finishes_the_job_and_takes_the_timers(
    cluster: Cluster, tmp_path: Path
) -> None:
    """kill -9 of the node whose worker sends a job to a vendor that stalls mid-study: after the
    lease the other node sends the whole study and the job awaits its result; the survivor holds
    every timer's turn, and no instance reached the vendor more than twice."""
    nodes = cluster.running().nodes
    files = sorted(generate_study("ct_head", tmp_path / "head", instances=6, rows=32, columns=32))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(files[:3], nodes["a"].port)
    storescu(files[3:], nodes["b"].port)
    assert cluster.ichai.stalled.wait(90), "the vendor never got the study's second instance"
    [job] = cluster.jobs(study_uid)
    sending = cluster.job(job["id"])
    assert sending["state"] == "sending"
    pid = int(sending["claimed_by"].split("/")[2])
    [dying] = [n for n, rb in nodes.items() if rb.process is not None and rb.process.pid == pid]
    [survivor] = [n for n in nodes if n != dying]
    nodes[dying].kill9()
    cluster.ichai.release()
    wait_until(lambda: _whole(cluster.ichai.stored, files), "the whole study at the vendor", 90)
    _wait(
        "the other node to finish the job",
        lambda: cluster.job(job["id"])["state"] == "awaiting_result",
        90,
    )
    history = cluster.job(job["id"])["history"]
    senders = [e["worker"] for e in history if e["to_state"] == "sending"]
    assert senders[0] == sending["claimed_by"]
    survivor_process = nodes[survivor].process
    assert survivor_process is not None and survivor_process.poll() is None
    assert senders[-1].split("/")[2] == str(survivor_process.pid)
    assert len(senders) == 2
    received = cluster.ichai.answered
    assert max(received.count(uid) for uid in received) <= 2
    engine = make_engine(cluster.database.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        claims = TimerClaims(engine)
        _wait(
            "the survivor to hold every timer's turn",
            lambda: (
                {
                    t: h.split(":")[0]
                    for t, (h, until) in claims.holders().items()
                    if until > datetime.now(UTC)
                }
                == dict.fromkeys(("completion", "results", "engine"), survivor)
            ),
            30,
        )
    finally:
        engine.dispose()
