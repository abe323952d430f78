"""The MLLP sender against a real RIS stand-in: python ``hl7``'s asyncio MLLP server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import hl7
import pytest
from hl7.mllp import start_hl7_server

from adapters.hl7.ack import AckCode
from adapters.hl7.client import MllpClient
from adapters.hl7.edge import Hl7Edge
from broker.model.errors import Hl7Error, Hl7RejectedError
from broker.runtime.edges import ServiceContext
from broker.store import StudyStore, make_engine
from broker.store.migrate import migrate
from broker.store.spool import Spool
from config.schema import Settings
from tests.hl7_messages import orm_o01, sample_order
from tests.peers import LOOPBACK, free_port

ORU = (
    "MSH|^~\\&|RADBRIDGE|HOSP|RIS|HOSP|20240301101500||ORU^R01^ORU_R01|{id}|P|2.5.1\r"
    "PID|1||P1^^^HOSP^MR||DOE^JOHN\rOBR|1|PL1|FL1|CT^CT chest||||||||||||||ACC1\r"
    "OBX|1|TX|FINDING^AI finding||No nodule found||||||F\r"
)


class RisPeer:
    """python hl7's asyncio MLLP server in a thread, answering each message with ``code``.

    ``code`` None reads messages and never answers (a hung RIS).
    """

    def __init__(self, port: int, code: str | None = "AA") -> None:
        self.port, self.code = port, code
        self.received: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None

    async def _handle(self, reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(str(message))
                if self.code is not None:
                    writer.writemessage(message.create_ack(ack_code=self.code))
                    await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    def start(self) -> RisPeer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            start_hl7_server(self._handle, LOOPBACK, self.port, encoding="utf-8"), self._loop
        ).result(5)
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def peers() -> Iterator[list[RisPeer]]:
    started: list[RisPeer] = []
    yield started
    for peer in started:
        peer.stop()


def test_send_returns_the_parsed_aa(peers: list[RisPeer]) -> None:
    """ORU^R01s to a RIS answering AA return their ACKs (MSA-2 = MSH-10) on one connection."""
    port = free_port()
    peers.append(RisPeer(port).start())
    with MllpClient(LOOPBACK, port, timeout=5) as client:
        acks = [client.send(ORU.format(id=f"R{n}")) for n in range(3)]
    assert [(a.code, a.control_id) for a in acks] == [(AckCode.AA, f"R{n}") for n in range(3)]
    assert len(peers[0].received) == 3
    assert hl7.parse(peers[0].received[0]).segment("OBX")[5][0] == "No nodule found"


@pytest.mark.parametrize("code", ["AE", "AR"])
def test_negative_ack_raises_rejected_without_retry(peers: list[RisPeer], code: str) -> None:
    """AE and AR raise Hl7RejectedError carrying the code, after one attempt only."""
    port = free_port()
    peers.append(RisPeer(port, code).start())
    client = MllpClient(LOOPBACK, port, timeout=5, attempts=3, backoff=0.01)
    with pytest.raises(Hl7RejectedError) as caught:
        client.send(ORU.format(id="N1"))
    client.close()
    assert caught.value.code == code
    assert len(peers[0].received) == 1


def test_retries_until_the_ris_is_up(peers: list[RisPeer]) -> None:
    """Connection refused at first; the RIS starts 0.4 s later; send succeeds on a retry."""
    port = free_port()
    timer = threading.Timer(0.4, lambda: peers.append(RisPeer(port).start()))
    timer.start()
    try:
        started = time.monotonic()
        with MllpClient(LOOPBACK, port, timeout=2, attempts=6, backoff=0.1) as client:
            ack = client.send(ORU.format(id="U1"))
    finally:
        timer.join()
    assert ack.code is AckCode.AA
    assert time.monotonic() - started >= 0.3


def test_no_ack_times_out_then_raises_after_the_last_attempt(peers: list[RisPeer]) -> None:
    """A RIS that never answers: each attempt times out; Hl7Error after the last names them."""
    port = free_port()
    peers.append(RisPeer(port, code=None).start())
    client = MllpClient(LOOPBACK, port, timeout=0.3, attempts=2, backoff=0.05)
    with pytest.raises(Hl7Error, match=r"no ACK from 127\.0\.0\.1:\d+ after 2 attempts"):
        client.send(ORU.format(id="T1"))
    client.close()
    assert len(peers[0].received) == 2


def test_sender_against_radbridge_listener(tmp_path: Any) -> None:
    """radbridge's own listener as the receiver: an ORM gets AA, and so does an ORU (a final
    report, kept as ground truth); a message type it does not take (SIU) gets AE."""

    port = free_port()
    settings = Settings.model_validate(
        {
            "storage": {"database": f"sqlite:///{tmp_path}/db"},
            "hl7": {"listen": {"port": port}},
        }
    )
    engine = make_engine(settings.database_url())
    migrate(engine)
    edge = Hl7Edge()
    edge.start(ServiceContext(settings, engine, StudyStore(engine), Spool(tmp_path / "spool")))
    try:
        with MllpClient(LOOPBACK, port, timeout=5) as client:
            assert client.send(orm_o01(sample_order(1), control_id="O1")).code is AckCode.AA
            assert client.send(ORU.format(id="O2")).code is AckCode.AA
            with pytest.raises(Hl7RejectedError) as caught:
                client.send(ORU.format(id="O3").replace("ORU^R01^ORU_R01", "SIU^S12^SIU_S12"))
        assert caught.value.code == "AE"
        assert "SIU^S12 is not supported" in caught.value.text
    finally:
        edge.stop()
