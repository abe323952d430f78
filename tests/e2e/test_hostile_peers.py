"""The DICOM listener against hostile and broken peers, through a real ``radbridge serve``.

Each test plays a script with the misbehaving peer of ``adapters.harness.hostile``
(or sends with pynetdicom) and checks that intake stays open, nothing half-stored
remains, memory stays flat and the log stays readable. Memory is the listener
process's resident size (psutil) and its peak since a reset (``VmHWM`` after
writing 5 to ``/proc/PID/clear_refs``), so a spike during a parse counts too.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from adapters.harness.hostile import (
    Associate,
    AwaitClose,
    HostilePeer,
    Send,
    Step,
    pdu,
)
from adapters.harness.hostile import datasets as crafted
from adapters.harness.hostile.pdu import PduType
from tests.disk import fill, small_filesystem
from tests.peers import dataset_bytes
from tests.service import Radbridge, arriving

# One worker runs the module (xdist_group), so that its tests share one service.
pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.slow(seconds=20),
    pytest.mark.xdist_group("hostile_peers"),
]

MiB = 1 << 20
CT = crafted.CT_IMAGE_STORAGE
EXPLICIT = pdu.EXPLICIT_VR_LITTLE_ENDIAN
DEFLATED = pdu.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN


@pytest.fixture(scope="module")
def radbridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radbridge]:
    """One radbridge with the default limits and one listener process, for the scripts that
    leave it as they found it (each checks memory, files and log lines from its own start);
    tests of limits, timeouts or a full disk start their own (``radbridge_factory``)."""
    rb = Radbridge(tmp_path_factory.mktemp("hostile"))
    rb.start()
    yield rb
    rb.close()


def _listener(rb: Radbridge) -> psutil.Process:
    """The one listener process of a service started with ``processes=1``."""
    [process] = rb.listener_processes()
    return process


def _reset_peak(process: psutil.Process) -> None:
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")


def _peak(process: psutil.Process) -> int:
    """Peak resident bytes since the last reset (``VmHWM``)."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _warm(rb: Radbridge) -> None:
    """One association and one C-STORE, so what a first use loads is loaded."""
    assert _echo(rb)
    with HostilePeer(rb.port) as peer:
        assert peer.associate(contexts=[(CT, [EXPLICIT])]) is not None
        ident = _identity()
        assert peer.c_store(crafted.dataset(ident), CT, ident.sop_instance_uid) is not None
        peer.release()


def _identity() -> crafted.Identity:
    return crafted.Identity(generate_uid(), generate_uid(), generate_uid())


def _echo(rb: Radbridge, source: str | None = None) -> bool:
    """A C-ECHO with pynetdicom (from ``source`` if given); True if it succeeded."""
    ae = AE(ae_title="CT01")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    kwargs = {"bind_address": (source, 0)} if source else {}
    assoc = ae.associate("127.0.0.1", rb.port, ae_title="RADBRIDGE", **kwargs)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0x0000


def _eventually(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _tmp_files(rb: Radbridge) -> list[Path]:
    return arriving(rb.spool)


def _errors_and_warnings(rb: Radbridge, since: int) -> list[dict[str, object]]:
    return [line for line in rb.log_lines()[since:] if line.get("level") in ("warning", "error")]


# -- slots ----------------------------------------------------------------------------


PARTIAL_PDUS: dict[str, list[Step]] = {
    "three bytes of a PDU header": [Send(b"\x01\x00\x00")],
    "a request header and part of its body": [
        Send(pdu.header(PduType.A_ASSOCIATE_RQ, 200) + bytes(50))
    ],
    "part of a P-DATA after the association": [
        Associate(),
        Send(pdu.header(PduType.P_DATA_TF, 1000) + bytes(100)),
    ],
}


@pytest.mark.parametrize("script", PARTIAL_PDUS.values(), ids=PARTIAL_PDUS.keys())
def test_partial_pdu_then_silence_gives_its_slot_back(
    radbridge_factory: Callable[..., Radbridge], script: list[Step]
) -> None:
    """max_associations peers stalling mid-PDU are cut off in time, and their slots come back."""
    rb = radbridge_factory(max_associations=2, network_timeout=3, association_request_timeout=2)
    peers = [HostilePeer(rb.port) for _ in range(2)]
    for peer in peers:
        peer.play(script)
    for peer in peers:
        assert peer.wait_closed(15), "the listener kept a stalled connection open"
        peer.close()
    assert _eventually(lambda: _echo(rb), 10), "the stalled connections kept their slots"
    assert _echo(rb) and _echo(rb)


def test_idle_connections_take_no_association_slot(
    radbridge_factory: Callable[..., Radbridge],
) -> None:
    """Connections that never send a request do not block associations, and are closed soon."""
    rb = radbridge_factory(max_associations=2, association_request_timeout=3, network_timeout=30)
    idle = [HostilePeer(rb.port).connect() for _ in range(5)]
    try:
        assert _echo(rb), "idle connections counted as associations"
        assert _echo(rb)
        for peer in idle:
            assert peer.wait_closed(15), "an idle connection was never closed"
    finally:
        for peer in idle:
            peer.close()


def test_pending_connections_are_bounded_overall_and_per_peer(
    radbridge_factory: Callable[..., Radbridge],
) -> None:
    """Past the per-peer cap, or past the pending cap, a connection is closed unread; the rest
    of the world still associates."""
    rb = radbridge_factory(  # a request timeout far beyond the waits: a close is a refusal
        max_pending_connections=3,
        max_connections_per_peer=2,
        association_request_timeout=30,
        network_timeout=60,
    )
    held = [HostilePeer(rb.port, source="127.0.0.2").connect() for _ in range(2)]
    try:
        third = HostilePeer(rb.port, source="127.0.0.2").connect()
        assert third.wait_closed(5), "a third connection from one address was kept"
        held.append(HostilePeer(rb.port, source="127.0.0.3").connect())
        fourth = HostilePeer(rb.port, source="127.0.0.4").connect()
        assert fourth.wait_closed(5), "a connection past max_pending_connections was kept"
        for peer in held:
            peer.close()
        assert _eventually(lambda: _echo(rb, source="127.0.0.2"), 10)
        assert _echo(rb, source="127.0.0.4")
    finally:
        for peer in held:
            peer.close()
    reasons = {
        line.get("reason")
        for line in rb.log_lines()
        if line["event"] == "connection refused before the association"
    }
    assert reasons == {"too_many_connections_from_peer", "too_many_pending_connections"}


def test_a_burst_of_requests_gets_every_free_association(
    radbridge_factory: Callable[..., Radbridge],
) -> None:
    """Six requests at once with room for four: four accepted, two rejected, local limit."""
    rb = radbridge_factory(max_associations=4)
    peers = [HostilePeer(rb.port).connect() for _ in range(6)]
    try:
        for peer in peers:
            assert peer.send(pdu.associate_rq())
        answers = [peer.next_pdu() for peer in peers]
        accepted = [a for a in answers if a is not None and a.type == PduType.A_ASSOCIATE_AC]
        rejected = [a for a in answers if a is not None and a.type == PduType.A_ASSOCIATE_RJ]
        assert len(accepted) == 4
        assert [r.reject for r in rejected] == [(0x02, 0x03, 0x02)] * 2
    finally:
        for peer in peers:
            peer.close()


# -- oversized PDUs ---------------------------------------------------------------------


def test_huge_pdu_before_the_association_is_refused_unread(
    radbridge: Radbridge,
) -> None:
    """A request header announcing 0xFFFFFFF0 bytes ends the connection before its body is
    read: the sender cannot push 128 MiB, and the listener's memory stays flat."""
    _warm(radbridge)
    listener = _listener(radbridge)
    before = listener.memory_info().rss
    _reset_peak(listener)
    with HostilePeer(radbridge.port) as peer:
        peer.send(pdu.header(PduType.A_ASSOCIATE_RQ, 0xFFFFFFF0))
        sent = peer.stream(128 * MiB)
        assert peer.wait_closed(10)
    assert sent < 32 * MiB, f"the listener took {sent >> 20} MiB of one PDU"
    assert listener.memory_info().rss - before < 16 * MiB
    assert _peak(listener) - before < 16 * MiB
    assert _echo(radbridge)


def test_pdu_longer_than_negotiated_is_refused_unread(
    radbridge: Radbridge,
) -> None:
    """After the association, a P-DATA longer than the announced maximum aborts the
    association before its body is read."""
    _warm(radbridge)
    listener = _listener(radbridge)
    before = listener.memory_info().rss
    _reset_peak(listener)
    with HostilePeer(radbridge.port) as peer:
        accepted = peer.associate()
        assert accepted is not None and accepted.type == PduType.A_ASSOCIATE_AC
        assert accepted.max_pdu() == 262144
        peer.send(pdu.header(PduType.P_DATA_TF, 0x7FFFFFFF))
        sent = peer.stream(128 * MiB)
        assert peer.wait_closed(10)
    assert sent < 32 * MiB
    assert _peak(listener) - before < 16 * MiB
    assert _echo(radbridge)


# -- full spool -------------------------------------------------------------------------


def _ct(study_uid: str, pixels: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PAT-FULL"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = pixels
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = os.urandom(pixels * pixels * 2)
    return ds


def _store(rb: Radbridge, ds: Dataset) -> Dataset | None:
    """One association, one C-STORE; the response (None if the association failed)."""
    ae = AE(ae_title="CT01")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", rb.port, ae_title="RADBRIDGE")
    if not assoc.is_established:
        return None
    status = assoc.send_c_store(ds)
    established = assoc.is_established
    if established:
        assoc.release()
    return status if established and "Status" in status else None


def test_full_spool_answers_out_of_resources_and_recovers(tmp_path: Path) -> None:
    """A C-STORE into a full spool gets 0xA700 and leaves no file; with one association slot,
    three of them in a row still get in, and intake resumes once space is back. The spool is
    a 24 MiB tmpfs mounted for the test (root only)."""
    folder = tmp_path / "rb"
    with small_filesystem(folder / "spool", "24m") as spool:
        rb = Radbridge(folder, None, max_associations=1, processes=1)
        try:
            rb.start()
            study_uid = generate_uid()
            filler = fill(spool, leave=512 * 1024)
            images = [_ct(study_uid, 1024) for _ in range(3)]  # 2 MiB each
            for ds in images:
                status = _store(rb, ds)
                assert status is not None, "the association was dropped, no status"
                assert status.Status == 0xA700
                assert "spool full" in status.ErrorComment
                assert _tmp_files(rb) == []
            assert _echo(rb)
            filler.unlink()
            for ds in images:
                status = _store(rb, ds)
                assert status is not None and status.Status == 0x0000
            assert rb.study(study_uid)["instances"] == 3
            assert _tmp_files(rb) == []
        finally:
            rb.close()


# -- crafted data sets ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs() -> dict[str, tuple[crafted.Identity, bytes]]:
    """Deflated data sets of about 0.3 MB that inflate to 300 MB: zeros before the study
    attributes (a header bomb), or as the pixel data (a pixel bomb)."""
    header, pixels = _identity(), _identity()
    return {
        "header": (header, crafted.header_bomb(header, 300 * MiB)),
        "pixels": (pixels, crafted.pixel_bomb(pixels, 300 * MiB)),
    }


@pytest.mark.parametrize("called_ae", ["RADBRIDGE", "RADBRIDGE_RES"])
def test_deflate_bomb_in_the_header_is_refused_with_memory_flat(
    radbridge: Radbridge,
    bombs: dict[str, tuple[crafted.Identity, bytes]],
    called_ae: str,
) -> None:
    """A header that inflates 300 MB is refused 0xC000 after a few MB, with no file left,
    by the ingest and the results AE title alike."""
    _warm(radbridge)
    listener = _listener(radbridge)
    before = listener.memory_info().rss
    _reset_peak(listener)
    ident, data = bombs["header"]
    assert len(data) < MiB
    with HostilePeer(radbridge.port) as peer:
        accepted = peer.associate(called_ae, contexts=[(CT, [DEFLATED])])
        assert accepted is not None and accepted.accepted_contexts() == {1: DEFLATED}
        response = peer.c_store(data, CT, ident.sop_instance_uid)
        assert response is not None
        assert response.status == 0xC000
        assert "inflates" in response.comment
        assert peer.release()
    assert _peak(listener) - before < 48 * MiB
    assert _tmp_files(radbridge) == []
    assert ident.study_uid not in {s["study_uid"] for s in radbridge.studies()}


def test_deflate_bomb_in_the_pixel_data_is_stored_as_sent_without_inflating(
    radbridge: Radbridge,
    bombs: dict[str, tuple[crafted.Identity, bytes]],
) -> None:
    """Pixel data that inflates 300 MB is never inflated: the header is read, the object
    stored as it came, and memory stays flat."""
    _warm(radbridge)
    listener = _listener(radbridge)
    before = listener.memory_info().rss
    _reset_peak(listener)
    ident, data = bombs["pixels"]
    with HostilePeer(radbridge.port) as peer:
        assert peer.associate(contexts=[(CT, [DEFLATED])]) is not None
        response = peer.c_store(data, CT, ident.sop_instance_uid)
        assert response is not None and response.status == 0x0000
        assert peer.release()
    assert _peak(listener) - before < 48 * MiB
    study = radbridge.study(ident.study_uid)
    assert study["instances"] == 1 and study["size"] < 2 * MiB


@pytest.mark.parametrize("called_ae", ["RADBRIDGE", "RADBRIDGE_RES"])
def test_deeply_nested_sequences_get_a_clean_failure(radbridge: Radbridge, called_ae: str) -> None:
    """Sequences nested 3,000 deep get 0xC000 naming the nesting (not 0xC211 and a
    traceback), no file stays behind, and the same association stores the next object;
    at the ingest and the results AE title alike."""
    since = len(radbridge.log_lines())
    nested, good = _identity(), _identity()
    body = crafted.dataset(nested, before_patient=crafted.nested_sequences(3000))
    with HostilePeer(radbridge.port) as peer:
        assert peer.associate(called_ae, contexts=[(CT, [EXPLICIT])]) is not None
        response = peer.c_store(body, CT, nested.sop_instance_uid)
        assert response is not None
        assert response.status == 0xC000
        assert "nested too deeply" in response.comment
        assert _tmp_files(radbridge) == []
        again = peer.c_store(crafted.dataset(good), CT, good.sop_instance_uid)
        assert again is not None and again.status == 0x0000
        assert peer.release()
    assert "Traceback" not in radbridge.log_path.read_text()
    refused = [
        line for line in radbridge.log_lines()[since:] if line.get("level") in ("error", "warning")
    ]
    assert len(refused) == 1 and "c-store refused: cannot understand" in str(refused[0]["event"])


# -- the lean C-STORE receiver -----------------------------------------------------------


def _pdvs(fragments: list[tuple[bytes, bool, bool]]) -> bytes:
    """One P-DATA-TF holding a PDV per (fragment, command, last)."""
    return pdu.pdu(
        PduType.P_DATA_TF,
        b"".join(
            struct.pack(">LBB", len(part) + 2, 1, (0x01 if command else 0) | (0x02 if last else 0))
            + part
            for part, command, last in fragments
        ),
    )


def _spooled(rb: Radbridge, sop_uid: str) -> list[Path]:
    return list(rb.spool.glob(f"studies/*/*/{sop_uid}.dcm"))


def test_c_store_in_small_fragments_is_stored_as_sent(radbridge: Radbridge) -> None:
    """A C-STORE whose command set spans two PDUs and whose data set comes in 1 KiB
    fragments, four to a PDU, is stored byte for byte behind a file meta made from the
    request, and answered with the request's message ID and UIDs."""
    ident = _identity()
    pixels = crafted.element((0x7FE0, 0x0010), "OB", bytes(range(256)) * 64)
    data = crafted.dataset(ident, after_study=pixels)
    command = pdu.command_set(0x0001, 7, CT, ident.sop_instance_uid, has_dataset=True)
    parts = [data[at : at + 1024] for at in range(0, len(data), 1024)]
    flagged = [(part, False, at == len(parts) - 1) for at, part in enumerate(parts)]
    with HostilePeer(radbridge.port) as peer:
        assert peer.associate(contexts=[(CT, [EXPLICIT])]) is not None
        assert peer.send(pdu.p_data(1, command[:20], command=True, last=False))
        assert peer.send(pdu.p_data(1, command[20:], command=True, last=True))
        for at in range(0, len(flagged), 4):
            assert peer.send(_pdvs(flagged[at : at + 4]))
        answer = peer.next_pdu(30)
        assert answer is not None and answer.type == PduType.P_DATA_TF
        [(context_id, control, fragment)] = list(answer.pdvs())
        response = pdu.read_command(fragment)
        assert peer.release()
    assert (context_id, control) == (1, 0x03)
    assert response.status == 0x0000
    assert response.elements[(0, 0x0100)] == struct.pack("<H", 0x8001)
    assert response.elements[(0, 0x0120)] == struct.pack("<H", 7)
    assert response.elements[(0, 0x0002)].rstrip(b"\0") == CT.encode()
    assert response.elements[(0, 0x1000)].rstrip(b"\0") == ident.sop_instance_uid.encode()
    [stored] = _spooled(radbridge, ident.sop_instance_uid)
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == ident.sop_instance_uid
    assert meta.MediaStorageSOPClassUID == CT
    assert meta.TransferSyntaxUID == EXPLICIT
    assert dataset_bytes(stored) == data


def test_c_store_of_another_sop_class_than_its_context_is_served_as_before(
    radbridge: Radbridge,
) -> None:
    """A C-STORE whose SOP class is not its presentation context's goes to pynetdicom's
    storage service, as before the lean receiver, and is stored by the same handler; the
    association goes on with a C-STORE the lean receiver takes."""
    mr = "1.2.840.10008.5.1.4.1.1.4"
    odd = crafted.Identity(generate_uid(), generate_uid(), generate_uid(), sop_class_uid=mr)
    plain = _identity()
    with HostilePeer(radbridge.port) as peer:
        assert peer.associate(contexts=[(CT, [EXPLICIT])]) is not None
        first = peer.c_store(crafted.dataset(odd), mr, odd.sop_instance_uid)
        second = peer.c_store(crafted.dataset(plain), CT, plain.sop_instance_uid)
        assert peer.release()
    assert first is not None and first.status == 0x0000
    assert second is not None and second.status == 0x0000
    [stored] = _spooled(radbridge, odd.sop_instance_uid)
    assert dcmread(stored, stop_before_pixels=True).file_meta.MediaStorageSOPClassUID == mr
    assert len(_spooled(radbridge, plain.sop_instance_uid)) == 1


def test_p_data_before_any_association_is_aborted(radbridge: Radbridge) -> None:
    """A C-STORE's P-DATA as a connection's first PDUs, with no association requested, gets
    an A-ABORT and the connection closed; nothing is stored and the listener serves on."""
    ident = _identity()
    with HostilePeer(radbridge.port) as peer:
        for part in pdu.c_store_rq(1, CT, ident.sop_instance_uid, crafted.dataset(ident)):
            if not peer.send(part):
                break
        assert peer.wait_closed(10)
        assert peer.report.aborted
    assert _spooled(radbridge, ident.sop_instance_uid) == []
    assert _echo(radbridge)


MID_OBJECT_ENDINGS: dict[str, tuple[bytes, bool]] = {
    "a command fragment": (pdu.c_echo_rq(1, message_id=2), True),
    "an A-ABORT": (pdu.abort(), False),
}


@pytest.mark.parametrize("ending", MID_OBJECT_ENDINGS.values(), ids=MID_OBJECT_ENDINGS.keys())
def test_c_store_broken_off_mid_data_set_leaves_nothing(
    radbridge: Radbridge, ending: tuple[bytes, bool]
) -> None:
    """A C-STORE's data set interrupted by a command fragment (the listener answers with an
    A-ABORT) or by the sender's A-ABORT ends the connection; no file of it remains and the
    next sender is served."""
    interruption, answered_with_abort = ending
    ident = _identity()
    data = crafted.dataset(ident)
    command = pdu.command_set(0x0001, 1, CT, ident.sop_instance_uid, has_dataset=True)
    with HostilePeer(radbridge.port) as peer:
        assert peer.associate(contexts=[(CT, [EXPLICIT])]) is not None
        assert peer.send(pdu.p_data(1, command, command=True, last=True))
        assert peer.send(pdu.p_data(1, data[:100], command=False, last=False))
        assert _eventually(lambda: bool(_tmp_files(radbridge)), 5)
        assert peer.send(interruption)
        assert peer.wait_closed(10)
        assert peer.report.aborted == answered_with_abort
    assert _eventually(lambda: not _tmp_files(radbridge), 5)
    assert _spooled(radbridge, ident.sop_instance_uid) == []
    assert _echo(radbridge)


# -- the log ----------------------------------------------------------------------------


def test_garbage_costs_one_log_line_not_thousands(radbridge: Radbridge) -> None:
    """60 KiB of garbage is aborted at its first header with one warning, and closed."""
    since = len(radbridge.log_lines())
    with HostilePeer(radbridge.port) as peer:
        peer.send(b"\xaa" * 60 * 1024)
        assert peer.wait_closed(10)
    assert _eventually(lambda: bool(_errors_and_warnings(radbridge, since)), 5)
    lines = _errors_and_warnings(radbridge, since)
    assert [line["event"] for line in lines] == ["protocol error: connection aborted"]
    assert _echo(radbridge)


def test_repeated_protocol_errors_in_one_association_are_rate_limited(
    radbridge: Radbridge,
) -> None:
    """300 invalid DIMSE commands in one association log a handful of lines, and the
    association's end one line with the count of the others."""
    since = len(radbridge.log_lines())
    unknown = pdu.command_set(0x0FFF, 1, pdu.VERIFICATION, has_dataset=False)
    with HostilePeer(radbridge.port) as peer:
        assert peer.associate() is not None
        for _ in range(300):
            assert peer.send(pdu.p_data(1, unknown, command=True, last=True))
        assert peer.c_echo() is not None  # every command before it was read
        assert peer.release()

    def summary() -> list[dict[str, object]]:
        return [
            line
            for line in radbridge.log_lines()[since:]
            if line["event"] == "protocol log lines suppressed"
        ]

    assert _eventually(lambda: bool(summary()), 10)
    library = [
        line
        for line in _errors_and_warnings(radbridge, since)
        if str(line.get("logger", "")).startswith("pynetdicom")
    ]
    assert len(library) <= 5
    [counted] = summary()
    assert int(str(counted["suppressed"])) > 0


def test_listener_survives_every_hostile_script_in_a_row(
    radbridge_factory: Callable[..., Radbridge],
) -> None:
    """Each hostile script ends with the listener closing the connection, and a
    well-behaved sender associates right after it."""
    rb = radbridge_factory(association_request_timeout=3)
    scripts: list[list[Step]] = [
        [Send(os.urandom(4096)), AwaitClose(10)],
        [Send(pdu.header(PduType.A_ABORT, 0xFFFFFFFF)), AwaitClose(10)],
        [Associate(), Send(pdu.abort()), AwaitClose(10)],
        [Associate(called_ae="NOSUCHAE"), AwaitClose(10)],
        [Send(pdu.associate_rq()[:40]), AwaitClose(15)],
    ]
    for script in scripts:
        with HostilePeer(rb.port) as peer:
            report = peer.play(script)
            assert report.closed, script
        assert _echo(rb)


# -- settings ---------------------------------------------------------------------------


def test_request_timeout_must_be_shorter_than_the_network_timeout(tmp_path: Path) -> None:
    """config check refuses an association request timeout not shorter than the network
    timeout, and limits out of range, naming the setting and what is valid."""
    rb = Radbridge(tmp_path / "timeouts", None, association_request_timeout=60, network_timeout=30)
    checked = rb.cli("config", "check", check=False)
    assert checked.returncode != 0
    output = checked.stdout + checked.stderr
    assert "dicom.association_request_timeout (60 s) must be shorter than" in output
    assert "dicom.network_timeout (30 s)" in output
    rb = Radbridge(tmp_path / "limits", None, max_connections_per_peer=0, max_pending_connections=0)
    checked = rb.cli("config", "check", check=False)
    assert checked.returncode != 0
    output = checked.stdout + checked.stderr
    assert "max_connections_per_peer" in output and "max_pending_connections" in output
    assert "greater than or equal to 1" in output
