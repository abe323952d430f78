"""The lean C-STORE receiver against real senders and broken ones, item by item of the
DICOM data path's conformance list (issue 14), through a real ``radbridge serve``.

What a dcmtk sender or Orthanc puts on the wire is taken from the same sender sending the
same files to dcmtk's ``storescp +B`` (which keeps each data set bit for bit) in the same
test: radbridge must have spooled exactly those bytes after its file meta. pynetdicom
sends files as their bytes are (``STORE_SEND_CHUNKED_DATASET``), so there the file is
the reference. The other items of the list are pinned elsewhere: pydicom's own test
files, aborts mid-object, P-DATA with no association, a PDU longer than negotiated, a
C-STORE whose SOP Instance UID is not its data set's and partial PDUs with silence in
``test_ingest.py`` and ``test_hostile_peers.py``.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from adapters.dicom.synthetic import encoding_variants, generate_study
from adapters.harness.hostile import HostilePeer, pdu
from adapters.harness.hostile import datasets as crafted
from adapters.harness.hostile.pdu import PduType
from tests.peers import (
    Orthanc,
    StoreSCP,
    dataset_bytes,
    dcmsend,
    echoscu,
    storescu,
    wait_until,
)
from tests.service import Radbridge, arriving
from tests.unit.test_conformance_docs import DICOM_DOC, table

# One worker runs the module (xdist_group), so that its tests share its two services.
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.slow(seconds=20),
    pytest.mark.xdist_group("ingest_conformance"),
]

CT = crafted.CT_IMAGE_STORAGE
EXPLICIT = pdu.EXPLICIT_VR_LITTLE_ENDIAN
#: The timeouts of the service the hostile and stalling senders meet (seconds).
NETWORK_TIMEOUT = 3
REQUEST_TIMEOUT = 2
#: A-ABORT source and reason of a protocol error the listener found (PS3.8 Table 9-26):
#: service provider, invalid PDU parameter value.
PROVIDER_INVALID_PARAMETER = (0x02, 0x06)


@pytest.fixture(scope="module")
def radbridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radbridge]:
    """One radbridge with the default settings for the well-behaved senders; each test
    sends files it checks by their spooled copies written during the test."""
    rb = Radbridge(tmp_path_factory.mktemp("conformance"))
    rb.start()
    yield rb
    rb.close()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radbridge]:
    """One radbridge with short timeouts (the network's 3 s, the association request's
    2 s) and a single association slot, for the broken and stalling senders: each test
    ends with a C-ECHO that only gets in once the broken connection gave its slot back."""
    rb = Radbridge(
        tmp_path_factory.mktemp("impatient"),
        network_timeout=NETWORK_TIMEOUT,
        association_request_timeout=REQUEST_TIMEOUT,
        max_associations=1,
    )
    rb.start()
    yield rb
    rb.close()


# -- helpers ----------------------------------------------------------------------------


def _sop_uid(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def _spooled(rb: Radbridge, sop_uid: str) -> list[Path]:
    return list(rb.spool.glob(f"studies/*/*/{sop_uid}.dcm"))


def _tmp_files(rb: Radbridge) -> list[Path]:
    return arriving(rb.spool)


def _echoes(rb: Radbridge) -> bool:
    return echoscu(rb.port, check=False, timeout=15).returncode == 0


def _assert_spooled_as(rb: Radbridge, reference: dict[str, Path], since: float) -> None:
    """Each SOP Instance UID of ``reference`` has one spooled copy, written since ``since``,
    whose file meta names that instance and the reference's transfer syntax, and whose data
    set is the reference's byte for byte; nothing is left in the spool's tmp folder."""
    for sop_uid, expected in reference.items():
        [stored] = _spooled(rb, sop_uid)
        assert stored.stat().st_mtime >= since, f"{expected.name}: not stored by this send"
        meta, wanted = read_file_meta_info(stored), read_file_meta_info(expected)
        assert meta.MediaStorageSOPInstanceUID == sop_uid, expected.name
        assert meta.TransferSyntaxUID == wanted.TransferSyntaxUID, expected.name
        assert dataset_bytes(stored) == dataset_bytes(expected), expected.name
    assert _tmp_files(rb) == []


def _received(reference: StoreSCP) -> dict[str, Path]:
    """What storescp received, by SOP Instance UID."""
    return {_sop_uid(path): path for path in reference.files()}


@pytest.fixture
def sendable(tmp_path: Path) -> list[Path]:
    """Three 256x256 CT slices (about 130 KB each: several PDUs of any size) and every
    encoding variant of the synthetic module (its transfer syntaxes and structures)."""
    study = generate_study("ct_head", tmp_path / "ct", instances=3, rows=256, columns=256)
    return study + [v.path for v in encoding_variants(tmp_path / "variants")]


# -- real senders -----------------------------------------------------------------------

Send = Callable[..., CompletedProcess[str]]
DCMTK_SENDERS: dict[str, tuple[Send, tuple[str, ...]]] = {
    "storescu": (storescu, ()),
    "storescu --max-pdu 131072": (storescu, ("--max-pdu", "131072")),
    "storescu --max-send-pdu 16384": (storescu, ("--max-send-pdu", "16384")),
    "dcmsend": (dcmsend, ()),
    "dcmsend --max-pdu 131072": (dcmsend, ("--max-pdu", "131072")),
}


@pytest.mark.parametrize("sender", DCMTK_SENDERS.values(), ids=DCMTK_SENDERS.keys())
def test_dcmtk_senders_data_sets_are_spooled_as_they_sent_them(
    radbridge: Radbridge, sendable: list[Path], tmp_path: Path, sender: tuple[Send, tuple[str, ...]]
) -> None:
    """storescu and dcmsend, with their default PDUs (dcmtk 3.6.7 sends at most 128 KiB
    whatever radbridge announces), a 128 KiB receive maximum of their own, or 16 KiB PDUs:
    every C-STORE of CT slices and of every synthetic encoding variant (each in its own
    transfer syntax) succeeds, and radbridge spools the data set storescp received from
    the same sender byte for byte, under a file meta with that transfer syntax."""
    send, options = sender
    with StoreSCP(tmp_path / "reference", ae_title="REFERENCE") as reference:
        send(sendable, reference.port, called_ae="REFERENCE", extra_args=options)
        received = _received(reference)
    assert set(received) == {_sop_uid(p) for p in sendable}
    since = time.time() - 0.05  # the file system's clock is coarser than time.time()
    assert send(sendable, radbridge.port, extra_args=options).returncode == 0
    _assert_spooled_as(radbridge, received, since)
    assert _echoes(radbridge)


def test_orthanc_as_a_sender_gets_every_instance_spooled_as_it_sent_it(
    radbridge: Radbridge, sendable: list[Path], tmp_path: Path
) -> None:
    """Orthanc's own C-STORE SCU (``POST /modalities/radbridge/store``) sends the CT slices
    and every encoding variant uploaded to it: Orthanc reports every instance sent and
    none failed, and radbridge spools the data sets Orthanc sends storescp byte for byte."""
    with StoreSCP(tmp_path / "reference", ae_title="REFERENCE") as reference:
        modalities = {
            "radbridge": ["RADBRIDGE", "127.0.0.1", radbridge.port],
            "reference": ["REFERENCE", "127.0.0.1", reference.port],
        }
        config = {"DicomModalities": modalities}
        with Orthanc(tmp_path / "orthanc", config=config) as orthanc:
            ids = [orthanc.request("POST", "/instances", p.read_bytes())["ID"] for p in sendable]
            order = json.dumps({"Resources": ids, "Synchronous": True}).encode()
            orthanc.request("POST", "/modalities/reference/store", order)
            received = _received(reference)
            since = time.time() - 0.05
            answer = orthanc.request("POST", "/modalities/radbridge/store", order)
    assert set(received) == {_sop_uid(p) for p in sendable}
    assert (answer["InstancesCount"], answer["FailedInstancesCount"]) == (len(sendable), 0)
    assert answer["RemoteAet"] == "RADBRIDGE"
    _assert_spooled_as(radbridge, received, since)
    assert _echoes(radbridge)


def _in_syntax(folder: Path, syntax: str, study_uid: str, series_uid: str) -> Path:
    """A small CT Part 10 file in ``syntax``: native 8-bit pixels for the uncompressed
    syntaxes, one encapsulated frame of noise for the others (a receiver stores it as it
    came, never decoding it)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = "PAT-SYNTAXES"
    ds.PatientName = "SYNTAX^TEST"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if UID(syntax).is_encapsulated:
        ds.PixelData = encapsulate([bytes(range(256)) + syntax.encode().ljust(64, b"\0")])
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = bytes(range(256))
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    path = folder / f"{syntax}.dcm"
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_every_listed_transfer_syntax_and_variant_on_one_association_of_many_contexts(
    radbridge: Radbridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom proposes one presentation context per transfer syntax of the conformance
    statement (the same CT SOP class in each) and per (SOP class, syntax) of the encoding
    variants, on one association: every context is accepted with its syntax, each
    C-STORE on its own context succeeds, each file is spooled byte for byte after a file
    meta naming the context's syntax, the statement's instances are indexed as one study,
    and the listener serves the next association."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the file's own bytes
    syntaxes = [uid for _, uid in table(DICOM_DOC, "Transfer syntaxes accepted (SCP)")]
    assert len(syntaxes) >= 19
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / "syntaxes"
    folder.mkdir()
    files = [_in_syntax(folder, ts, study_uid, series_uid) for ts in syntaxes]
    files += [v.path for v in encoding_variants(tmp_path / "variants")]
    pairs = {
        (str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)): None
        for m in map(read_file_meta_info, files)
    }
    ae = AE(ae_title="CT01")
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, syntax)
    since = time.time() - 0.05
    assoc = ae.associate("127.0.0.1", radbridge.port, ae_title="RADBRIDGE")
    assert assoc.is_established
    try:
        accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        assert accepted == set(pairs)
        statuses = {path.name: assoc.send_c_store(path).Status for path in files}
    finally:
        assoc.release()
    assert statuses == {path.name: 0x0000 for path in files}
    _assert_spooled_as(radbridge, {_sop_uid(p): p for p in files}, since)
    study = radbridge.study(study_uid)
    assert study["instances"] == len(syntaxes)
    assert study["patient"]["patient_id"] == "PAT-SYNTAXES"
    assert _echoes(radbridge)


# -- asynchronous operations window -----------------------------------------------------


def _with_user_item(request: bytes, item: bytes) -> bytes:
    """An A-ASSOCIATE-RQ (its User Information item last) with ``item`` added to that item."""
    at = request.rfind(b"\x50\x00")
    (length,) = struct.unpack_from(">H", request, at + 2)
    assert at + 4 + length == len(request), "the User Information item is not the last"
    body = request[6:at] + struct.pack(">BBH", 0x50, 0, length + len(item)) + request[at + 4 :]
    return pdu.header(PduType.A_ASSOCIATE_RQ, len(body) + len(item)) + body + item


def _user_items(accepted: pdu.Pdu) -> dict[int, bytes]:
    """The sub-items of an A-ASSOCIATE-AC's User Information item, by item type."""
    items: dict[int, bytes] = {}
    at = 68  # the fixed fields after the PDU header (PS3.8 Table 9-17)
    while at + 4 <= len(accepted.body):
        item_type, _, length = struct.unpack_from(">BBH", accepted.body, at)
        value = accepted.body[at + 4 : at + 4 + length]
        at += 4 + length
        if item_type == 0x50:
            while value:
                sub_type, _, sub_length = struct.unpack_from(">BBH", value)
                items[sub_type] = value[4 : 4 + sub_length]
                value = value[4 + sub_length :]
    return items


def test_asynchronous_operations_window_is_not_granted_and_pipelined_stores_all_answered(
    radbridge: Radbridge,
) -> None:
    """A requestor proposing an asynchronous operations window of 4 invoked and 4 performed
    gets the association with no window sub-item in the A-ASSOCIATE-AC (PS3.7 D.3.3.3:
    the default, one operation at a time); four C-STOREs sent back to back anyway are each
    answered, in order, with success, and each is stored."""
    window = struct.pack(">BBHHH", 0x53, 0, 4, 4, 4)
    request = _with_user_item(pdu.associate_rq(contexts=[(CT, [EXPLICIT])]), window)
    idents = [crafted.Identity(generate_uid(), generate_uid(), generate_uid()) for _ in range(4)]
    with HostilePeer(radbridge.port) as peer:
        assert peer.send(request)
        accepted = peer.next_pdu()
        assert accepted is not None and accepted.type == PduType.A_ASSOCIATE_AC
        assert accepted.accepted_contexts() == {1: EXPLICIT}
        items = _user_items(accepted)
        assert 0x51 in items and 0x53 not in items
        pipelined = b"".join(
            part
            for number, ident in enumerate(idents, 1)
            for part in pdu.c_store_rq(
                1,
                CT,
                ident.sop_instance_uid,
                crafted.dataset(ident),
                message_id=number,
                max_pdu=accepted.max_pdu(),
            )
        )
        assert peer.send(pipelined)
        answers = [peer.next_pdu(30) for _ in idents]
        assert peer.release()
    responses = []
    for answer in answers:
        assert answer is not None and answer.type == PduType.P_DATA_TF
        [(_context, control, fragment)] = list(answer.pdvs())
        assert control == 0x03  # one whole command set
        responses.append(pdu.read_command(fragment))
    assert [r.status for r in responses] == [0x0000] * 4
    assert [r.elements[(0, 0x0120)] for r in responses] == [
        struct.pack("<H", n) for n in (1, 2, 3, 4)
    ]
    assert all(len(_spooled(radbridge, i.sop_instance_uid)) == 1 for i in idents)


# -- broken senders ---------------------------------------------------------------------


def _associate(peer: HostilePeer) -> None:
    """Associate for CT; while the listener rejects the request, on a fresh connection
    again: the service's one association slot may still be held by the previous test's
    C-ECHO (released by the listener a moment after its answer), as a modality would."""
    for _attempt in range(50):
        answer = peer.associate(contexts=[(CT, [EXPLICIT])])
        assert answer is not None
        if answer.type == PduType.A_ASSOCIATE_AC:
            return
        assert answer.type == PduType.A_ASSOCIATE_RJ, answer
        time.sleep(0.1)
        peer.reconnect()
    raise AssertionError("the association slot was never free")


def _start_c_store(peer: HostilePeer, rb: Radbridge) -> crafted.Identity:
    """Associate, send a C-STORE's command and the first 100 bytes of its data set, and wait
    until the listener opened the spool file it receives the data set into."""
    _associate(peer)
    ident = crafted.Identity(generate_uid(), generate_uid(), generate_uid())
    command = pdu.command_set(0x0001, 1, CT, ident.sop_instance_uid, has_dataset=True)
    assert peer.send(pdu.p_data(1, command, command=True, last=True))
    assert peer.send(pdu.p_data(1, crafted.dataset(ident)[:100], command=False, last=False))
    wait_until(lambda: _tmp_files(rb), "the data set's spool file", timeout=10, interval=0.02)
    return ident


def _pdv(fragment: bytes, *, length: int | None = None) -> bytes:
    """A last data set fragment's PDV on context 1, with its true length or ``length``."""
    size = len(fragment) + 2 if length is None else length
    return struct.pack(">LBB", size, 1, 0x02) + fragment


def _the_rest(ident: crafted.Identity) -> bytes:
    return crafted.dataset(ident)[100:]


#: The rest of the data set in a PDU whose lengths do not add up.
WRONG_LENGTHS: dict[str, Callable[[bytes], bytes]] = {
    "a PDV longer than its PDU": lambda rest: pdu.pdu(
        PduType.P_DATA_TF, _pdv(rest, length=len(rest) + 102)
    ),
    "a PDU announcing fewer bytes than its PDV": lambda rest: (
        pdu.header(PduType.P_DATA_TF, len(rest) + 6 - 10) + _pdv(rest)
    ),
    "a PDV of 1 byte, shorter than its header": lambda rest: pdu.pdu(
        PduType.P_DATA_TF, _pdv(b"", length=1) + _pdv(rest)
    ),
    "a PDV of 0 bytes": lambda rest: pdu.pdu(PduType.P_DATA_TF, _pdv(b"", length=0)),
}


@pytest.mark.parametrize("broken", WRONG_LENGTHS.values(), ids=WRONG_LENGTHS.keys())
def test_pdu_of_the_wrong_length_mid_data_set_is_aborted_and_leaves_nothing(
    impatient: Radbridge, broken: Callable[[bytes], bytes]
) -> None:
    """A C-STORE's data set continued by a P-DATA-TF whose PDU and PDV lengths do not add
    up gets an A-ABORT (service provider, invalid PDU parameter value) and nothing else,
    the connection is closed, the partial file is removed, nothing is stored, the log says
    why, and the association slot is free for the next sender."""
    since = len(impatient.log_lines())
    with HostilePeer(impatient.port) as peer:
        ident = _start_c_store(peer, impatient)
        assert peer.send(broken(_the_rest(ident)))
        assert peer.wait_closed(10)
        assert [(p.type, p.abort) for p in peer.report.pdus[1:]] == [
            (PduType.A_ABORT, PROVIDER_INVALID_PARAMETER)
        ]
    wait_until(lambda: not _tmp_files(impatient), "the partial file removed", timeout=10)
    assert _spooled(impatient, ident.sop_instance_uid) == []
    problems = [
        line.get("problem")
        for line in impatient.log_lines()[since:]
        if line["event"] == "protocol error: connection aborted"
    ]
    assert problems == ["a presentation data value overruns its PDU"]
    wait_until(lambda: _echoes(impatient), "a C-ECHO after it", timeout=15)


def _associate_rq_announcing(change: int) -> bytes:
    """A valid A-ASSOCIATE-RQ whose PDU length says ``change`` bytes more (or fewer) than it
    holds; zero bytes follow when it says more."""
    request = pdu.associate_rq(contexts=[(CT, [EXPLICIT])])
    body = request[6:] + bytes(max(change, 0))
    return pdu.header(PduType.A_ASSOCIATE_RQ, len(request) - 6 + change) + body


@pytest.mark.parametrize("change", [-10, 10], ids=["fewer bytes", "more bytes"])
def test_association_request_of_the_wrong_length_is_aborted(
    impatient: Radbridge, change: int
) -> None:
    """An A-ASSOCIATE-RQ whose PDU length announces fewer or more bytes than its items hold
    gets an A-ABORT (service provider, invalid PDU parameter value) and no A-ASSOCIATE-AC,
    the connection is closed, and the association slot is free for the next sender."""
    with HostilePeer(impatient.port) as peer:
        assert peer.send(_associate_rq_announcing(change))
        assert peer.wait_closed(10)
        assert [(p.type, p.abort) for p in peer.report.pdus] == [
            (PduType.A_ABORT, PROVIDER_INVALID_PARAMETER)
        ]
    wait_until(lambda: _echoes(impatient), "a C-ECHO after it", timeout=15)


def test_pdu_announcing_more_bytes_than_its_pdvs_is_aborted_not_acknowledged(
    impatient: Radbridge,
) -> None:
    """A C-STORE's last data set PDU whose length announces 4 bytes more than its PDV (it
    swallows the head of the next PDU, a C-ECHO) is a malformed PDU: an A-ABORT (service
    provider, invalid PDU parameter value) comes back, no C-STORE answer, nothing stored."""
    with HostilePeer(impatient.port) as peer:
        ident = _start_c_store(peer, impatient)
        rest = _pdv(_the_rest(ident))
        assert peer.send(pdu.header(PduType.P_DATA_TF, len(rest) + 4) + rest)
        assert peer.send(pdu.c_echo_rq(1, message_id=2))
        assert peer.wait_closed(10)
        assert [(p.type, p.abort) for p in peer.report.pdus[1:]] == [
            (PduType.A_ABORT, PROVIDER_INVALID_PARAMETER)
        ]
    assert _spooled(impatient, ident.sop_instance_uid) == []
    wait_until(lambda: _echoes(impatient), "a C-ECHO after it", timeout=15)


def _c_store_before_acceptance(rb: Radbridge) -> tuple[list[pdu.Pdu], crafted.Identity]:
    """Send an A-ASSOCIATE-RQ and a whole C-STORE in one write, before any answer, until the
    connection ends; the PDUs that came back. The service's one association slot is free:
    every test before ends with a C-ECHO whose release was answered, and the listener gives
    an association's slot back before it answers its release."""
    ident = crafted.Identity(generate_uid(), generate_uid(), generate_uid())
    request = pdu.associate_rq(contexts=[(CT, [EXPLICIT])])
    store = pdu.c_store_rq(1, CT, ident.sop_instance_uid, crafted.dataset(ident))
    with HostilePeer(rb.port) as peer:
        assert peer.send(request + b"".join(store))
        assert peer.wait_closed(10)
    return list(peer.report.pdus), ident


def test_p_data_sent_before_the_association_is_accepted_is_aborted(
    impatient: Radbridge,
) -> None:
    """A requestor that sends its C-STORE right behind its A-ASSOCIATE-RQ, before any
    answer, gets an A-ABORT from the service provider and no A-ASSOCIATE-AC (PS3.8 AA-8:
    P-DATA while the acceptor decides); the connection is closed, nothing is stored, and
    the association slot is free for the next sender."""
    answered, ident = _c_store_before_acceptance(impatient)
    assert [(p.type, p.abort[0]) for p in answered] == [(PduType.A_ABORT, 0x02)]
    assert _spooled(impatient, ident.sop_instance_uid) == []
    assert _tmp_files(impatient) == []
    wait_until(lambda: _echoes(impatient), "a C-ECHO after it", timeout=15)


def test_p_data_sent_before_the_association_is_accepted_costs_no_traceback(
    impatient: Radbridge,
) -> None:
    """The same early C-STORE leaves no traceback in the service's log (a connection thread
    that dies of an exception), only its log lines."""
    offset = impatient.log_path.stat().st_size

    def logged() -> str:
        with impatient.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    answered, _ident = _c_store_before_acceptance(impatient)
    assert [p.type for p in answered] == [PduType.A_ABORT]
    wait_until(lambda: _echoes(impatient), "a C-ECHO after it", timeout=15)
    assert wait_until(lambda: "association aborted" in logged(), "the abort logged", timeout=10)
    deadline = time.monotonic() + 2  # a thread's traceback is printed as it ends
    while "Traceback" not in logged() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Traceback" not in logged()


# -- stalling senders -------------------------------------------------------------------


def _stall_mid_data_set(peer: HostilePeer, rb: Radbridge) -> crafted.Identity | None:
    return _start_c_store(peer, rb)


def _stall_mid_pdu(peer: HostilePeer, rb: Radbridge) -> crafted.Identity | None:
    ident = _start_c_store(peer, rb)
    assert peer.send(pdu.header(PduType.P_DATA_TF, 1000) + _pdv(b"\0" * 100, length=996))
    return ident


def _stall_mid_command(peer: HostilePeer, rb: Radbridge) -> crafted.Identity | None:
    _associate(peer)
    ident = crafted.Identity(generate_uid(), generate_uid(), generate_uid())
    command = pdu.command_set(0x0001, 1, CT, ident.sop_instance_uid, has_dataset=True)
    assert peer.send(pdu.p_data(1, command[:20], command=True, last=False))
    return ident


def _stall_associated(peer: HostilePeer, rb: Radbridge) -> crafted.Identity | None:
    _associate(peer)
    return None


def _stall_before_the_request(peer: HostilePeer, rb: Radbridge) -> crafted.Identity | None:
    return None


def _stall_in_the_request(peer: HostilePeer, rb: Radbridge) -> crafted.Identity | None:
    assert peer.send(pdu.associate_rq(contexts=[(CT, [EXPLICIT])])[:40])
    return None


#: How a sender stalls, the timer that must end it, and the line the log must hold (a
#: connection that never sent a byte is closed without one).
Stall = Callable[[HostilePeer, Radbridge], crafted.Identity | None]
STALLS: dict[str, tuple[Stall, float, str | None]] = {
    "before its association request (ARTIM)": (_stall_before_the_request, REQUEST_TIMEOUT, None),
    "inside its association request (ARTIM)": (
        _stall_in_the_request,
        REQUEST_TIMEOUT,
        "connection closed: no complete association request in time",
    ),
    "associated, sending nothing": (_stall_associated, NETWORK_TIMEOUT, "association aborted"),
    "in a command set": (_stall_mid_command, NETWORK_TIMEOUT, "association aborted"),
    "between two PDUs of a data set": (
        _stall_mid_data_set,
        NETWORK_TIMEOUT,
        "association ended mid-transfer; partial object removed",
    ),
    "inside a PDU of a data set": (
        _stall_mid_pdu,
        NETWORK_TIMEOUT,
        "association ended mid-transfer; partial object removed",
    ),
}


@pytest.mark.parametrize("stall", STALLS.values(), ids=STALLS.keys())
def test_stalled_sender_is_cut_off_by_its_timer_and_its_slot_given_back(
    impatient: Radbridge, stall: tuple[Stall, float, str | None]
) -> None:
    """A sender that goes silent is cut off once the timer for where it stopped ran out
    (the association request timeout before an A-ASSOCIATE-RQ, the network timeout after),
    with at most an A-ABORT and never a C-STORE answer; a data set it left unfinished is
    removed and not stored, the log says so, and its association slot is free again."""
    script, timer, logged = stall
    since = len(impatient.log_lines())
    with HostilePeer(impatient.port, timeout=30) as peer:
        ident = script(peer, impatient)
        started = time.monotonic()
        assert peer.wait_closed(15), "the stalled connection was kept open"
        waited = time.monotonic() - started
    assert waited >= timer - 0.25, f"closed after {waited:.2f} s, before its {timer} s timer"
    after = {p.type for p in peer.report.pdus} - {PduType.A_ASSOCIATE_AC}
    assert after <= {PduType.A_ABORT}
    wait_until(lambda: not _tmp_files(impatient), "the partial file removed", timeout=10)
    if ident is not None:
        assert _spooled(impatient, ident.sop_instance_uid) == []
    if logged is not None:
        wait_until(
            lambda: logged in [line["event"] for line in impatient.log_lines()[since:]],
            f"'{logged}' logged",
            timeout=10,
        )
    wait_until(lambda: _echoes(impatient), "a C-ECHO after it", timeout=15)
