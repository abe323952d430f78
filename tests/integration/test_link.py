"""The site-to-hub link through its real interface: the ``radbridge`` transport sends a
spooled study over HTTP to a hub's ``/link/v1/transfers`` (the ``web`` edge on its own
store and spool), through a loopback TCP proxy that delays and cuts connections
(:class:`tests.link.CuttingProxy`; this machine has no ``sch_netem``, so no ``tc
netem`` namespaces: the proxy stands in for the bad network).

Each transport ``send`` here is one attempt of the site's job: a cut makes it raise a
retryable error, and the next attempt resumes from the parts the hub holds.
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from adapters.link.ingest import Staging, purge_abandoned
from adapters.link.parts import StudyStream
from adapters.vendors.radbridge import LinkRejectedError, LinkUnavailableError
from broker.engine.bus import Bus
from broker.engine.dispatch import JobWorker
from broker.engine.plan import FixedPlan, FixedPlans, VendorSpec
from broker.model.errors import NotFoundError
from broker.model.jobs import Job, JobState
from broker.model.vendor import TRANSPORTS, TransportContext, VendorTransport, is_retryable
from broker.store import JobStore, StudyStore, make_engine
from broker.store.spool import Spool
from broker.store.transfers import (
    LOCK_CLASS,
    TransferLockedError,
    TransferState,
    TransferStore,
    lock_key,
)
from tests.databases import empty_database
from tests.link import CuttingProxy, HubStack, hub_node, hub_stack
from tests.peers import LOOPBACK, wait_until
from tests.pki import authority, issue
from tests.spooling import spool_study

# The module's fixtures are set up once: every test of it runs on one xdist worker.
pytestmark = [pytest.mark.slow(seconds=40), pytest.mark.xdist_group("link")]


@dataclass
class Site:
    """A site's store and spool (what its transport sends from)."""

    engine: Engine
    spool: Spool
    folder: Path

    def job(self, vendor: str = "hub") -> tuple[Job, list[Path]]:
        """A new spooled 6-instance study and its job for ``vendor``, claimed for sending;
        its files."""
        out = self.folder / f"gen-{uuid.uuid4().hex[:8]}"
        uid, _ = spool_study(
            self.engine, self.spool, "mr_brain", out, instances=6, rows=64, columns=64
        )
        jobs = JobStore(self.engine)
        job = jobs.claim(jobs.create(uid, vendor, route="r").job.id)
        assert job is not None
        return job, [Path(p) for p in StudyStore(self.engine).instance_paths(uid)]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStack]:
    """A hub with sites township-a and township-b, serving the link on loopback (one for
    the module: each test sends a study of its own)."""
    with hub_stack(tmp_path_factory.mktemp("hub")) as stack:
        yield stack


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A site's migrated SQLite store and spool."""
    folder = tmp_path_factory.mktemp("site")
    with empty_database("sqlite", folder) as engine:
        spool = Spool(folder / "spool")
        spool.prepare()
        yield Site(engine, spool, folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hub's CA (its server certificate, site A's client certificate) and another CA
    (a client certificate the hub does not trust)."""
    folder = tmp_path_factory.mktemp("pki")
    authority(folder, "hub-ca")
    authority(folder, "other-ca")
    issue(folder, "hub-ca", "hub")
    issue(folder, "hub-ca", "township-a")
    issue(folder, "other-ca", "rogue")
    return folder


@pytest.fixture(scope="module")
def mtls_hub(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[HubStack]:
    """A hub whose HTTPS server requires a client certificate of its CA."""
    tls = {
        "certificate": str(pki / "hub.crt"),
        "private_key": str(pki / "hub.key"),
        "ca_certificates": str(pki / "hub-ca.crt"),
        "require_client_certificate": True,
    }
    with hub_stack(tmp_path_factory.mktemp("mtls-hub"), tls=tls) as stack:
        yield stack


@pytest.fixture
def study(site: Site) -> tuple[Job, list[Path]]:
    """A site's spooled 6-instance study and its job, claimed for sending; its files."""
    return site.job()


def transport(port: int, token: str, **params: object) -> VendorTransport:
    """The site's link transport to a hub at ``port``, in parts of 32 KiB (8 per study)."""
    settings = {"url": f"http://{LOOPBACK}:{port}", "token": token, "part_bytes": 32768}
    return TRANSPORTS.get("radbridge").from_params(
        "hub", settings | params, TransportContext("hub")
    )


def test_cuts_mid_study_leave_nothing_then_the_whole_study_once(
    hub: HubStack, study: tuple[Job, list[Path]]
) -> None:
    """The link is cut mid-study three times: each attempt fails retryably and the hub shows
    nothing of the study; the fourth attempt sends only the parts the hub lacks, and the hub
    then holds every instance, each indexed once, attributed to the sending site."""
    job, files = study
    with CuttingProxy(hub.port, cut_after=30_000, cuts=3, delay=0.001) as proxy:
        link = transport(proxy.port, hub.tokens["township-a"])
        for _ in range(3):
            with pytest.raises(LinkUnavailableError) as cut:
                link.send(job, files)
            assert is_retryable(link, cut.value)
            with pytest.raises(NotFoundError):
                StudyStore(hub.engine).get_study(job.study_uid)
        outcome = link.send(job, files)
    assert proxy.cut == 3
    assert "already at the hub (resumed)" in outcome.detail
    assert outcome.instances == len(files)
    counts = hub.sop_counts(job.study_uid)
    manifest = StudyStream(job.study_uid, files).manifest()
    assert sorted(counts) == sorted(i.sop_instance_uid for i in manifest.instances)
    assert set(counts.values()) == {1}
    held = StudyStore(hub.engine).get_study(job.study_uid)
    assert held.site == "township-a"
    assert job.study_uid in hub.evidence
    placed = StudyStore(hub.engine).instance_paths(job.study_uid)
    assert sorted(Path(p).read_bytes() for p in placed) == sorted(f.read_bytes() for f in files)
    assert not (hub.spool.root / "transfers").exists() or not any(
        p.is_dir() for p in (hub.spool.root / "transfers").iterdir()
    )


def test_a_lost_commit_answer_is_answered_again_and_indexes_once(
    hub: HubStack, study: tuple[Job, list[Path]]
) -> None:
    """The commit reaches the hub but its answer is cut: the attempt fails retryably; the
    retry finds the transfer committed and sends nothing; every instance is indexed once."""
    job, files = study
    with CuttingProxy(hub.port, cut_replies=1, reply_marker=b"/commit") as proxy:
        link = transport(proxy.port, hub.tokens["township-a"])
        with pytest.raises(LinkUnavailableError):
            link.send(job, files)
        again = link.send(job, files)
    assert proxy.cut == 1
    assert "at the hub already" in again.detail
    counts = hub.sop_counts(job.study_uid)
    assert len(counts) == len(files)
    assert set(counts.values()) == {1}


def _put(hub: HubStack, token: str, transfer: str, index: int, data: bytes, digest: str) -> int:
    header = "sha-256=:" + base64.b64encode(bytes.fromhex(digest)).decode() + ":"
    answer = httpx.put(
        f"{hub.url}/link/v1/transfers/{transfer}/parts/{index}",
        content=data,
        headers={"Authorization": f"Bearer {token}", "Content-Digest": header},
        timeout=10,
    )
    return answer.status_code


def test_the_hub_checks_parts_and_sites(hub: HubStack, study: tuple[Job, list[Path]]) -> None:
    """A part whose bytes do not match its digest is 422 and not kept; the same part again
    is 204 both times; an early commit is 409 naming the missing parts; site B's token
    sees no site A transfer (404) and may not send as site A (403)."""
    job, files = study
    stream = StudyStream(job.study_uid, files, part_bytes=4096)
    manifest = stream.manifest()
    a, b = hub.tokens["township-a"], hub.tokens["township-b"]
    api = f"{hub.url}/link/v1/transfers"
    body = {"manifest": manifest.model_dump(mode="json")}
    opened = httpx.post(api, json=body, headers={"Authorization": f"Bearer {a}"}, timeout=10)
    assert opened.status_code == 201, opened.text
    transfer = opened.json()["id"]
    assert opened.json()["received"] == []
    part0 = manifest.parts[0]
    assert _put(hub, a, transfer, 0, stream.part(1), part0.sha256) == 422
    assert _put(hub, a, transfer, 0, stream.part(0), part0.sha256) == 204
    assert _put(hub, a, transfer, 0, stream.part(0), part0.sha256) == 204
    shown = httpx.get(f"{api}/{transfer}", headers={"Authorization": f"Bearer {a}"}, timeout=10)
    assert shown.json()["received"] == [0]
    early = httpx.post(
        f"{api}/{transfer}/commit", headers={"Authorization": f"Bearer {a}"}, timeout=10
    )
    assert early.status_code == 409
    assert early.json()["missing"] == list(range(1, len(manifest.parts)))
    with pytest.raises(NotFoundError):
        StudyStore(hub.engine).get_study(job.study_uid)
    other = httpx.get(f"{api}/{transfer}", headers={"Authorization": f"Bearer {b}"}, timeout=10)
    assert other.status_code == 404
    assert _put(hub, b, transfer, 1, stream.part(1), manifest.parts[1].sha256) == 404
    posing = httpx.post(
        api, json=body | {"site": "township-a"}, headers={"Authorization": f"Bearer {b}"}
    )
    assert posing.status_code == 403
    assert job.study_uid not in posing.text


def test_a_wrong_token_is_fatal_and_sends_nothing(
    hub: HubStack, study: tuple[Job, list[Path]]
) -> None:
    """A token the hub does not know is refused (401): the job is dead, not retried."""
    job, files = study
    link = transport(hub.port, "not-a-token")
    with pytest.raises(LinkRejectedError) as refused:
        link.send(job, files)
    assert not is_retryable(link, refused.value)
    assert "401" in str(refused.value)
    assert hub.sop_counts(job.study_uid) == {}


def test_abandoned_transfers_are_purged_and_start_again(
    hub: HubStack, study: tuple[Job, list[Path]]
) -> None:
    """A transfer no part came for in ``abandon_after`` loses its staged parts when purged;
    a part for it after that is 503 (not kept, not 204); the site sending it again
    starts over (nothing resumed) and commits it."""
    job, files = study
    with (
        CuttingProxy(hub.port, cut_after=20_000, cuts=1) as proxy,
        pytest.raises(LinkUnavailableError),
    ):
        transport(proxy.port, hub.tokens["township-a"]).send(job, files)
    link = transport(hub.port, hub.tokens["township-a"])
    store = TransferStore(hub.engine)
    (left,) = [
        t
        for t in store.abandoned(datetime.now(UTC) + timedelta(seconds=1))
        if t.study_uid == job.study_uid
    ]
    staged = hub.spool.root / "transfers" / left.id
    assert any(staged.iterdir())
    store.touch(left.id, now=datetime.now(UTC) - timedelta(days=2))  # two days without a part
    assert purge_abandoned(store, Staging(hub.spool), abandon_after=86400) >= 1  # the timer's
    assert not staged.exists()
    manifest = StudyStream(job.study_uid, files, part_bytes=32768).manifest()
    late = _put(hub, hub.tokens["township-a"], left.id, 1, b"x", manifest.parts[1].sha256)
    assert late == 503  # not 204 for a part nobody keeps: the site's next attempt reopens it
    outcome = link.send(job, files)  # opening it again: reopened, with no parts
    assert "resumed" not in outcome.detail
    assert store.get(left.id).state is TransferState.COMMITTED
    assert len(hub.sop_counts(job.study_uid)) == len(files)
    assert not staged.exists()


def test_outside_its_windows_the_links_job_waits_pending(hub: HubStack, site: Site) -> None:
    """A link open 20:00-06:00: at noon (the worker's clock) the job stays pending with no
    attempt and the hub holds nothing; once the clock says 21:00 the worker sends it and the
    hub holds the study."""
    claimed, _files = site.job(vendor="night-link")
    jobs = JobStore(site.engine)
    jobs.finish(claimed.id, JobState.FAILED, error="(set up)")  # back to waiting: not claimed
    jobs.requeue_due()
    now = [datetime(2026, 5, 1, 12, 0, tzinfo=UTC)]
    link = transport(hub.port, hub.tokens["township-a"], windows=["20:00-06:00"])
    spec = VendorSpec(name="night-link", transport="radbridge", params={})
    plans = FixedPlans(FixedPlan(vendors={"night-link": spec}, transports={"night-link": link}))
    bus = Bus("memory://", prefix=f"rbtest-{uuid.uuid4().hex[:12]}")
    worker = JobWorker(site.engine, bus, plans, clock=lambda: now[0], poll_seconds=0.1)
    worker.start()
    try:
        time.sleep(1.5)
        waiting = jobs.get(claimed.id)
        assert (waiting.state, waiting.attempts) == (JobState.PENDING, 1)
        assert hub.sop_counts(claimed.study_uid) == {}
        now[0] = datetime(2026, 5, 1, 21, 0, tzinfo=UTC)
        wait_until(
            lambda: jobs.get(claimed.id).state is JobState.AWAITING_RESULT,
            "the job sent once the window opened",
            20,
            interval=0.1,
        )
    finally:
        worker.stop(10)
        bus.close()
    assert len(hub.sop_counts(claimed.study_uid)) == len(_files)
    assert jobs.get(claimed.id).attempts == 2


def test_mutual_tls_takes_only_a_certificate_of_the_hubs_ca(
    mtls_hub: HubStack, pki: Path, site: Site
) -> None:
    """A hub requiring client certificates: the site with a certificate of the hub's CA
    delivers its study; without a certificate, or with one of another CA, the TLS
    connection is refused before any request, retryably, the error naming the
    certificate and the setting, and the hub holds nothing of that study."""
    job, files = site.job()
    url = f"https://{LOOPBACK}:{mtls_hub.port}"
    token = mtls_hub.tokens["township-a"]
    trust = {"ca_certificates": str(pki / "hub-ca.crt")}
    refused = {
        "no certificate (none is set)": trust,
        "this site's certificate rogue.crt": trust
        | {"certificate": str(pki / "rogue.crt"), "private_key": str(pki / "rogue.key")},
    }
    for words, tls in refused.items():
        link = transport(mtls_hub.port, token, url=url, tls=tls)
        with pytest.raises(LinkUnavailableError) as cut:
            link.send(job, files)
        assert is_retryable(link, cut.value)
        message = str(cut.value)
        assert f"the hub closed the TLS connection without an answer: it refuses {words}" in message
        assert "vendors.hub.transport.tls.certificate" in message
        assert mtls_hub.sop_counts(job.study_uid) == {}
    untrusting = transport(mtls_hub.port, token, url=url)  # the system's CAs only
    with pytest.raises(LinkUnavailableError, match="the hub's certificate is not trusted"):
        untrusting.send(job, files)
    mine = {"certificate": str(pki / "township-a.crt"), "private_key": str(pki / "township-a.key")}
    outcome = transport(mtls_hub.port, token, url=url, tls=trust | mine).send(job, files)
    assert outcome.instances == len(files)
    assert set(mtls_hub.sop_counts(job.study_uid).values()) == {1}
    assert len(mtls_hub.sop_counts(job.study_uid)) == len(files)


def test_a_links_bandwidth_holds_over_several_senders(hub: HubStack, site: Site) -> None:
    """Two sends at once on a link of bandwidth B and concurrency 2, each from a transport
    of its own (as two worker processes or nodes would have, sharing nothing): each goes
    at B/2, so the pair takes at least the time B allows for their bytes, and both
    studies arrive whole. (A lower bound on time only: a slow machine cannot fail it.)"""
    studies = [site.job(), site.job()]
    sizes = []
    for job, files in studies:
        stream = StudyStream(job.study_uid, files, part_bytes=32768)
        sizes.append(sum(len(stream.part(p.index)) for p in stream.manifest().parts))
    bandwidth = max(2048, 2 * max(sizes))  # about one second a send
    token = hub.tokens["township-a"]
    links = [
        TRANSPORTS.get("radbridge").from_params(
            "hub",
            {"url": hub.url, "token": token, "part_bytes": 32768, "bandwidth": bandwidth},
            TransportContext("hub", concurrency=2),
        )
        for _ in studies
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda pair: pair[0].send(*pair[1]), zip(links, studies)))
    elapsed = time.perf_counter() - started
    assert elapsed >= 0.95 * max(sizes) / (bandwidth / 2), (elapsed, sizes, bandwidth)
    for (job, files), outcome in zip(studies, outcomes, strict=True):
        assert outcome.instances == len(files)
        assert len(hub.sop_counts(job.study_uid)) == len(files)


def _pg_lock_waiters(engine: Engine, transfer_id: str) -> int:
    """Sessions waiting for the transfer's advisory lock (``pg_locks``, not granted)."""
    stmt = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND classid = :c AND objid = :o AND objsubid = 2"
    )
    with engine.connect() as conn:
        found = conn.execute(stmt, {"c": LOCK_CLASS, "o": lock_key(transfer_id) % 2**32})
        return int(found.scalar_one())


@pytest.mark.postgres
def test_two_hub_nodes_on_postgresql_commit_a_transfer_once(tmp_path: Path, site: Site) -> None:
    """Two hub nodes (engines and HTTP servers of their own) share one PostgreSQL store and
    one spool; a transfer's parts come half to each. While a third holder has the
    transfer's lock in the store (as a node on another host committing it), a try
    without waiting is refused, and commits sent to both nodes wait for it, the transfer
    still open and nothing indexed; once it is released both answer committed and every
    instance is indexed once."""
    job, files = site.job()
    stream = StudyStream(job.study_uid, files, part_bytes=16384)
    manifest = stream.manifest()
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(empty_database("postgresql", tmp_path))
        url = engine.url.render_as_string(hide_password=False)
        engines = [make_engine(url) for _ in range(2)]
        for extra in engines:
            stack.callback(extra.dispose)
        a = stack.enter_context(hub_node(engine, tmp_path, node="a"))
        b = stack.enter_context(hub_node(engines[0], tmp_path, node="b", tokens=a.tokens))
        auth = {"Authorization": f"Bearer {a.tokens['township-a']}"}
        opened = httpx.post(
            f"{a.url}/link/v1/transfers",
            json={"manifest": manifest.model_dump(mode="json")},
            headers=auth,
            timeout=10,
        )
        assert opened.status_code == 201, opened.text
        transfer = opened.json()["id"]
        for part in manifest.parts:
            node = (a, b)[part.index % 2]
            token = node.tokens["township-a"]
            assert (
                _put(node, token, transfer, part.index, stream.part(part.index), part.sha256) == 204
            )
        pool = stack.enter_context(ThreadPoolExecutor(2))
        with TransferStore(engines[1]).lock(transfer):  # the third holder
            with pytest.raises(TransferLockedError), TransferStore(engine).lock(transfer, wait=0):
                pass
            commits = [
                pool.submit(
                    httpx.post, f"{node.url}/link/v1/transfers/{transfer}/commit",
                    headers=auth, timeout=60,
                )
                for node in (a, b)
            ]  # fmt: skip
            wait_until(
                lambda: _pg_lock_waiters(engine, transfer) >= 1,
                "a commit waiting for the transfer's lock in the store",
                20,
                interval=0.05,
            )
            assert TransferStore(engine).get(transfer).state is TransferState.OPEN
            assert a.sop_counts(job.study_uid) == {}
        answers = [c.result() for c in commits]
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        assert {r.json()["state"] for r in answers} == {"committed"}
        counts = a.sop_counts(job.study_uid)
        assert len(counts) == len(files)
        assert set(counts.values()) == {1}
