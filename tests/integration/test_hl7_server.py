"""The HL7 listener with real peers: python ``hl7``'s mllp_send and asyncio client as the RIS.

The listener runs in-process (the ``hl7`` edge, its own loop thread) on a free
loopback port, with a real SQLite OrderStore; a raw socket plays the broken
sender.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.mllp import open_hl7_connection

from adapters.hl7.ack import AckCode, read_ack
from adapters.hl7.edge import Hl7Edge
from adapters.hl7.framing import frame
from broker.model.domain import Patient
from broker.model.errors import AdapterError
from broker.runtime.edges import ServiceContext
from broker.store import StudyStore, make_engine
from broker.store.migrate import migrate
from broker.store.orders import OrderStore
from broker.store.spool import Spool
from config.schema import Settings
from tests.hl7_messages import adt, adt_a40, omi_o23, orm_o01, sample_order
from tests.peers import LOOPBACK, free_port

MLLP_SEND = str(Path(sys.executable).parent / "mllp_send")


class Listener:
    """A running ``hl7`` edge and its store."""

    def __init__(self, edge: Hl7Edge, store: OrderStore, port: int) -> None:
        self.edge, self.store, self.port = edge, store, port


@pytest.fixture
def start_listener(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    """Start ``hl7`` edges with the given hl7 settings on free ports; stopped at the end."""
    edges: list[Hl7Edge] = []

    def start(migrated: bool = True, **hl7_settings: Any) -> Listener:
        port = free_port()
        folder = tmp_path / f"rb{len(edges)}"
        folder.mkdir()
        settings = Settings.model_validate(
            {
                "storage": {"spool": str(folder / "spool"), "database": f"sqlite:///{folder}/db"},
                "hl7": {"listen": {"host": LOOPBACK, "port": port}, **hl7_settings},
            }
        )
        engine = make_engine(settings.database_url())
        if migrated:
            migrate(engine)
        context = ServiceContext(settings, engine, StudyStore(engine), Spool(folder / "spool"))
        edge = Hl7Edge()
        edge.start(context)
        edges.append(edge)
        return Listener(edge, OrderStore(engine), port)

    yield start
    for edge in edges:
        edge.stop()


@pytest.fixture
def listener(start_listener: Callable[..., Listener]) -> Listener:
    return start_listener()


def exchange(
    port: int, *payloads: bytes, timeout: float = 10.0, expected: int | None = None
) -> list[bytes]:
    """Send raw bytes on one connection; return the ACK frames (by default one per message)."""
    if expected is None:
        expected = sum(p.count(b"\x1c") for p in payloads)
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        for payload in payloads:
            sock.sendall(payload)
            time.sleep(0.02)
        data = b""
        while data.count(b"\x1c") < expected:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [part.strip(b"\x0b\r") for part in data.split(b"\x1c") if part.strip(b"\x0b\r")]


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the listener closes ``sock`` (recv returns EOF or a reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_mllp_send_orders_of_each_type_are_stored_then_acknowledged(
    listener: Listener, tmp_path: Path
) -> None:
    """mllp_send (hl7's CLI) sends ORM^O01, OMI^O23, ADT^A01/A04/A08/A40: all AA, all stored."""
    orm, omi = sample_order(1), sample_order(2, issuer="HOSP")
    messages = [
        orm_o01(orm, control_id="M1"),
        omi_o23(omi, control_id="M2"),
        adt("A01", Patient("P9", "HOSP", "LI^NA"), control_id="M3"),
        adt("A04", Patient("P8", "HOSP", "LI^N"), control_id="M4"),  # the A40's prior patient
        adt("A08", Patient("P9", "HOSP", "LI^NA", "19900101", "F"), control_id="M5"),
        adt_a40(Patient("P9", "HOSP"), Patient("P8", "HOSP"), control_id="M6"),
    ]
    path = tmp_path / "messages.hl7"
    path.write_bytes(b"".join(frame(m.encode()) for m in messages))
    result = subprocess.run(
        [MLLP_SEND, "--file", str(path), "--port", str(listener.port), LOOPBACK],
        capture_output=True,
        timeout=30,
        check=True,
    )
    blocks = [b.strip(b"\x0b\r\n") for b in result.stdout.split(b"\x1c")]
    acks = [read_ack(b) for b in blocks if b]
    assert [(a.code, a.control_id) for a in acks] == [(AckCode.AA, f"M{n}") for n in range(1, 7)]
    assert listener.store.get("ACC000001").order == orm
    assert listener.store.get("ACC000002").order == omi
    stored = listener.store.get("ACC000001")
    assert listener.store.raw_messages(stored.id)[0].raw == messages[0].encode().rstrip(b"\r")


def test_hl7_asyncio_client_many_messages_on_one_connection(listener: Listener) -> None:
    """hl7's asyncio MLLP client sends 50 orders on one connection; each ACK echoes its MSH-10."""

    async def run() -> list[Any]:
        reader, writer = await open_hl7_connection(LOOPBACK, listener.port, encoding="utf-8")
        acks = []
        for n in range(1, 51):
            writer.writemessage(hl7.parse(orm_o01(sample_order(n), control_id=f"C{n}")))
            await writer.drain()
            acks.append(await reader.readmessage())
        writer.close()
        await writer.wait_closed()
        return acks

    acks = asyncio.run(run())
    assert [str(a.segment("MSA")[1]) for a in acks] == ["AA"] * 50
    assert [str(a.segment("MSA")[2]) for a in acks] == [f"C{n}" for n in range(1, 51)]
    assert str(acks[0].segment("MSH")[5]) == "RIS"  # the sender is the ACK's receiver
    assert str(acks[0].segment("MSH")[3]) == "RADBRIDGE"
    assert len(listener.store.find(placer_number="PL000050")) == 1


def test_gb18030_and_utf8_names_are_stored_as_sent(listener: Listener) -> None:
    """Chinese names in GB18030 and accented ones in UTF-8 (per MSH-18) are stored right."""
    zhang = sample_order(1, patient=Patient("P1", "HOSP", "张^伟"))
    muller = sample_order(2, patient=Patient("P2", "HOSP", "Müller^Zoë"))
    raw_gb = orm_o01(zhang, charset="GB 18030-2000").encode("gb18030")
    raw_utf = orm_o01(muller, charset="UNICODE UTF-8").encode("utf-8")
    acks = exchange(listener.port, frame(raw_gb), frame(raw_utf))
    assert [read_ack(a).code for a in acks] == [AckCode.AA, AckCode.AA]
    assert b"GB 18030-2000" in acks[0]
    assert listener.store.get("ACC000001").order.patient.name == "张^伟"
    assert listener.store.get("ACC000002").order.patient.name == "Müller^Zoë"
    stored = listener.store.get("ACC000001")
    assert listener.store.raw_messages(stored.id)[0].raw == raw_gb


def test_half_frames_junk_and_a_very_long_message(listener: Listener) -> None:
    """A frame sent in pieces, bytes between frames and a 2 MB message are all answered AA."""
    first = frame(orm_o01(sample_order(1), control_id="H1").encode())
    long_text = orm_o01(sample_order(2), control_id="H2") + "NTE|1||" + "x" * 2_000_000 + "\r"
    acks = exchange(
        listener.port,
        first[:10],
        first[10:40],
        first[40:] + b"\r\n\x00junk",
        frame(long_text.encode()),
    )
    assert [(read_ack(a).code, read_ack(a).control_id) for a in acks] == [
        (AckCode.AA, "H1"),
        (AckCode.AA, "H2"),
    ]
    assert listener.store.get("ACC000002").order.accession_number == "ACC000002"


def test_unusable_message_gets_ae_with_err_and_is_kept(listener: Listener) -> None:
    """An order without accession: AE, ERR naming OBR-18, and the listener keeps serving."""
    bad = orm_o01(sample_order(1, accession_number=None), control_id="B1", version="2.5.1")
    good = orm_o01(sample_order(2), control_id="G1")
    acks = exchange(listener.port, frame(bad.encode()), frame(good.encode()))
    ack = read_ack(acks[0])
    assert (ack.code, ack.control_id) == (AckCode.AE, "B1")
    assert b"\rERR||OBR^1^18|101^" in acks[0]
    assert "without an accession number" in ack.text
    assert read_ack(acks[1]).code is AckCode.AA


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"this is not HL7 at all", "does not begin with an MSH"),
        (b"MSH|^~\\&|RIS|H|||||ORM^O01|R1|P|2.3.1\rnot a segment\r", "segment 2"),
        (
            b"MSH|^~\\&|RIS|H|||||ORM^O01|R2|P|2.3.1||||||UNICODE UTF-16\rPID|1\r",
            "unsupported character set",
        ),
        (b"MSH|^~\\&|RIS|H|||||ORM^O01|R3|P|2.3.1\rPID|1||\xff\xfe\r", "not valid utf-8"),
    ],
)
def test_unparseable_messages_get_ar(listener: Listener, payload: bytes, words: str) -> None:
    """Garbage, broken segments, an unknown charset or invalid bytes: AR with an ERR, no crash."""
    acks = exchange(listener.port, frame(payload), frame(orm_o01(sample_order(7)).encode()))
    ack = read_ack(acks[0])
    assert ack.code is AckCode.AR
    assert words in ack.text
    assert b"\rERR|" in acks[0]
    assert read_ack(acks[1]).code is AckCode.AA


def test_oversized_message_gets_ar(start_listener: Callable[..., Listener]) -> None:
    """A message over hl7.max_message_bytes gets AR naming the limit; the next one is taken."""
    small = start_listener(max_message_bytes=4096)
    big = orm_o01(sample_order(1), control_id="BIG") + "NTE|1||" + "y" * 10_000 + "\r"
    acks = exchange(small.port, frame(big.encode()), frame(orm_o01(sample_order(2)).encode()))
    ack = read_ack(acks[0])
    assert (ack.code, ack.control_id) == (AckCode.AR, "BIG")
    assert "max_message_bytes (4096)" in ack.text
    assert read_ack(acks[1]).code is AckCode.AA


def test_store_failure_answers_ae_not_aa(start_listener: Callable[..., Listener]) -> None:
    """A store that fails (a database with no tables) makes the answer AE 'storage failed'."""
    broken = start_listener(migrated=False)
    acks = exchange(broken.port, frame(orm_o01(sample_order(1), control_id="S1").encode()))
    ack = read_ack(acks[0])
    assert (ack.code, ack.control_id) == (AckCode.AE, "S1")
    assert "storage failed" in ack.text


def test_enhanced_mode_commit_ack(listener: Listener) -> None:
    """MSH-15 AL / MSH-16 NE gets CA; MSH-15 NE / MSH-16 ER on success gets no answer at all."""
    ca = orm_o01(sample_order(1), control_id="E1", accept_ack="AL", application_ack="NE")
    quiet = orm_o01(sample_order(2), control_id="E2", accept_ack="NE", application_ack="ER")
    last = orm_o01(sample_order(3), control_id="E3")
    acks = exchange(
        listener.port, frame(ca.encode()), frame(quiet.encode()), frame(last.encode()), expected=2
    )
    assert [(read_ack(a).code, read_ack(a).control_id) for a in acks] == [
        (AckCode.CA, "E1"),
        (AckCode.AA, "E3"),
    ]
    assert listener.store.get("ACC000002").order.accession_number == "ACC000002"


def test_address_not_allowed_is_refused(start_listener: Callable[..., Listener]) -> None:
    """With hl7.allow naming another network, a loopback sender is closed without an answer."""
    guarded = start_listener(allow=["10.9.9.0/24"])
    with socket.create_connection((LOOPBACK, guarded.port)) as sock:
        sock.sendall(frame(orm_o01(sample_order(1)).encode()))
        assert closed_by_peer(sock)
    assert guarded.store.find(accession_number="ACC000001") == []


def test_connection_limit(start_listener: Callable[..., Listener]) -> None:
    """With max_connections 2, a third connection is closed while two stay open and served."""
    limited = start_listener(max_connections=2)
    first = socket.create_connection((LOOPBACK, limited.port))
    second = socket.create_connection((LOOPBACK, limited.port))
    try:
        time.sleep(0.2)
        with socket.create_connection((LOOPBACK, limited.port)) as third:
            assert closed_by_peer(third)
        second.sendall(frame(orm_o01(sample_order(1), control_id="L2").encode()))
        second.settimeout(5)
        assert read_ack(second.recv(65536).strip(b"\x0b\x1c\r")).code is AckCode.AA
        assert not closed_by_peer(first, timeout=0.2)
    finally:
        first.close()
        second.close()


def test_idle_connection_is_closed(start_listener: Callable[..., Listener]) -> None:
    """A connection silent for idle_timeout_seconds is closed; a busy one is not."""
    idle = start_listener(idle_timeout_seconds=0.5)
    with socket.create_connection((LOOPBACK, idle.port)) as sock:
        started = time.monotonic()
        assert closed_by_peer(sock, timeout=5)
        assert 0.4 < time.monotonic() - started < 3


def test_half_frame_then_close_does_not_block_other_connections(listener: Listener) -> None:
    """A sender stalled mid-frame holds no one up; its half message is not stored."""
    stalled = socket.create_connection((LOOPBACK, listener.port))
    try:
        stalled.sendall(frame(orm_o01(sample_order(1)).encode())[:60])
        acks = exchange(listener.port, frame(orm_o01(sample_order(2)).encode()))
        assert read_ack(acks[0]).code is AckCode.AA
    finally:
        stalled.close()
    time.sleep(0.1)
    assert listener.store.find(accession_number="ACC000001") == []


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1, made with the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            f"subjectAltName=DNS:localhost,IP:{LOOPBACK}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def test_tls(start_listener: Callable[..., Listener], tmp_path: Path) -> None:
    """With hl7.tls, hl7's asyncio client over TLS gets AA; a plain-text sender gets nothing."""
    cert, key = _certificate(tmp_path)
    secure = start_listener(tls={"certificate": str(cert), "private_key": str(key)})
    context = ssl.create_default_context(cafile=str(cert))

    async def run() -> Any:
        reader, writer = await open_hl7_connection(
            LOOPBACK, secure.port, ssl=context, server_hostname="localhost"
        )
        writer.writemessage(hl7.parse(orm_o01(sample_order(1), control_id="T1")))
        await writer.drain()
        ack = await reader.readmessage()
        writer.close()
        return ack

    ack = asyncio.run(run())
    assert str(ack.segment("MSA")[1]) == "AA"
    assert str(ack.segment("MSA")[2]) == "T1"
    with socket.create_connection((LOOPBACK, secure.port)) as plain:
        plain.sendall(frame(orm_o01(sample_order(2)).encode()))
        plain.settimeout(5)
        try:
            answer = plain.recv(65536)
        except ConnectionResetError:
            answer = b""
        assert b"MSA" not in answer
    assert secure.store.find(accession_number="ACC000002") == []


def test_port_in_use_is_a_clear_start_error(start_listener: Callable[..., Listener]) -> None:
    """A second listener on a port in use fails to start, naming the port and the fix."""
    first = start_listener()
    edge = Hl7Edge()
    settings = Settings.model_validate({"hl7": {"listen": {"port": first.port}}})
    context = ServiceContext(
        settings, first.store.engine, StudyStore(first.store.engine), Spool(Path("/nonexistent"))
    )
    with pytest.raises(
        AdapterError,
        match=f"cannot listen for HL7 \\(MLLP\\) on 127.0.0.1:{first.port}.*hl7.listen.port",
    ):
        edge.start(context)
