"""The vendor transport contract: every registered transport passes the same suite.

Like kombu's shared integration tests run against each broker, each test here
runs once per name in :data:`broker.model.vendor.TRANSPORTS`, against the
transport's real peer from :mod:`tests.integration.contracts.kits` (storescp,
Orthanc's DICOMweb, a loopback vendor API). A transport that is registered
without a kit fails every test here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.model.jobs import Job
from broker.model.vendor import TRANSPORTS, VendorTransport, is_retryable
from broker.store import StudyStore
from tests.integration.contracts.kits import TRANSPORT_KITS, TransportKit
from tests.integration.test_wado import WadoStack, wado

__all__ = ["wado"]  # the fixture: a store, a spool and radbridge's HTTP server


@pytest.fixture(params=TRANSPORTS.names())
def kit(request: pytest.FixtureRequest, wado: WadoStack) -> TransportKit:
    """The peers of one registered transport (every registered name in turn)."""
    name: str = request.param
    if name not in TRANSPORT_KITS:
        pytest.fail(
            f"vendor transport '{name}' is registered but has no peer kit; add one to "
            "TRANSPORT_KITS in tests/integration/contracts/kits.py so it runs the contract"
        )
    return TRANSPORT_KITS[name](wado)


@pytest.fixture
def job(wado: WadoStack) -> Iterator[tuple[Job, list[Path]]]:
    """A small spooled study and its job, claimed for sending; the files to send."""
    study, _ = wado.study(instances=3)
    job = wado.sending_job(study, vendor="contract")
    files = [Path(p) for p in StudyStore(wado.engine).instance_paths(study, job.series_uids)]
    yield job, files


def _build(kit: TransportKit, params: dict[str, object]) -> VendorTransport:
    return TRANSPORTS.get(kit.name).from_params("contract", params, kit.context())


def test_send_delivers_every_instance(kit: TransportKit, job: tuple[Job, list[Path]]) -> None:
    """A send to a peer that takes the study succeeds and the peer holds all of it."""
    sending, files = job
    with kit.accepting() as peer:
        outcome = _build(kit, peer.params).send(sending, files)
        assert outcome.instances == len(files)
        assert outcome.bytes == sum(p.stat().st_size for p in files)
        assert outcome.detail
        assert peer.held() == kit.expected(sending, files)


def test_peer_that_is_down_is_a_retryable_error(
    kit: TransportKit, job: tuple[Job, list[Path]]
) -> None:
    """Nothing listening at the vendor's address: the error says so and is retried."""
    sending, files = job
    transport = _build(kit, kit.down())
    with pytest.raises(Exception) as raised:
        transport.send(sending, files)
    assert is_retryable(transport, raised.value), raised.value
    assert "127.0.0.1" in str(raised.value)


def test_peer_that_refuses_is_a_fatal_error(kit: TransportKit, job: tuple[Job, list[Path]]) -> None:
    """A vendor that refuses the study for good gives an error no retry is wasted on."""
    sending, files = job
    with kit.rejecting() as peer:
        transport = _build(kit, peer.params)
        with pytest.raises(Exception) as raised:
            transport.send(sending, files)
        assert not is_retryable(transport, raised.value), raised.value
        assert peer.held() == set()


def test_a_retry_sends_the_same_identifiers(kit: TransportKit, job: tuple[Job, list[Path]]) -> None:
    """A retry of a job carries the identifiers of the first attempt, so the vendor can tell."""
    sending, files = job
    with kit.accepting() as peer:
        transport = _build(kit, peer.params)
        transport.send(sending, files)
        first = peer.held()
        transport.send(sending, files)
        assert peer.held() == first == kit.expected(sending, files)


def test_cancel_where_the_protocol_has_a_way(
    kit: TransportKit, job: tuple[Job, list[Path]]
) -> None:
    """``cancel`` says whether the vendor was told; when it was, the vendor sees it."""
    sending, files = job
    with kit.accepting() as peer:
        transport = _build(kit, peer.params)
        transport.send(sending, files)
        told = transport.cancel(sending)
        assert told is kit.cancels
        if told:
            assert kit.is_cancelled(peer, sending)


def test_close_lets_go_and_can_be_repeated(kit: TransportKit) -> None:
    """``close`` (when its configuration retires) never fails, even twice."""
    with kit.accepting() as peer:
        transport = _build(kit, peer.params)
        transport.close()
        transport.close()
