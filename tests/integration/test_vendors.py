"""Vendor transports: the registry, settings validation, and DICOM push against real storescp.

What every transport must do (send, retry or give up, idempotent retry, cancel) is the
shared contract suite in tests/integration/contracts/; this file pins what is particular
to the ``dicom`` transport and to the registry."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from adapters.dicom.client import RequestorAssociation
from adapters.dicom.dimse import PDV
from adapters.dicom.file_meta import read_file_meta
from adapters.dicom.sending import BATCH_BYTES
from adapters.dicom.synthetic import encoding_variants, generate_large_study, generate_study
from adapters.vendors.base import VendorRejectedError, VendorUnavailableError
from adapters.vendors.dicom import (
    DicomPushError,
    DicomPushSettings,
    DicomTransport,
)
from adapters.vendors.http import HttpSettings
from broker.model.errors import ConfigError
from broker.model.vendor import TRANSPORTS, TransportContext, is_retryable
from tests.jobs_data import sending_job
from tests.memory import PeakRss
from tests.peers import LOOPBACK, StoreSCP, dataset_bytes, free_port
from tests.scripted_scp import ScriptedStoreSCP

JOB = sending_job(1, "lungai", "1.2.3")
MIB = 1024 * 1024


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A dcmtk storescp accepting every transfer syntax and keeping what it gets bit for bit."""
    with StoreSCP(tmp_path / "received", ae_title="VENDOR") as peer:
        yield peer


def _transport(port: int, **params: object) -> DicomTransport:
    settings = {"ae_title": "VENDOR", "host": LOOPBACK, "port": port, "timeout": 10, **params}
    transport = DicomPushSettings.from_params("lungai", settings)
    assert isinstance(transport, DicomTransport)
    return transport


def test_unknown_transport_suggests_the_closest_name() -> None:
    """A typo names the closest transport; every designed transport is registered."""
    with pytest.raises(
        ConfigError, match="no such vendor transport 'dicomweb2'; did you mean 'dicomweb'"
    ):
        TRANSPORTS.get("dicomweb2")
    assert TRANSPORTS.get("dicom") is DicomPushSettings
    assert TRANSPORTS.get("http") is HttpSettings
    assert {"dicom", "dicomweb", "http"} <= set(TRANSPORTS.names())


def test_register_refuses_a_second_class_for_a_name() -> None:
    """Two different classes cannot claim one transport name."""

    class Other(DicomPushSettings):
        type: Literal["dicom"] = "dicom"

    with pytest.raises(ConfigError, match="'dicom' is registered twice"):
        TRANSPORTS.register(Other)
    assert TRANSPORTS.get("dicom") is DicomPushSettings


def test_transport_is_built_from_its_settings_with_the_service_context() -> None:
    """The settings model builds the running transport; what it sends to comes from them."""
    settings = DicomPushSettings(ae_title="LUNGAI", host="10.0.0.5", port=104, timeout="2m")
    transport = settings.build(TransportContext("lungai"))
    assert isinstance(transport, DicomTransport)
    assert repr(transport) == "DicomTransport('lungai', LUNGAI@10.0.0.5:104)"
    assert transport.settings.timeout == 120
    assert settings.endpoint() == ("10.0.0.5", 104)
    assert settings.sender_ae_titles() == ("LUNGAI",)
    assert transport.cancel(JOB) is False  # DICOM has no way to call a sent study back


def test_settings_are_validated_with_the_field_named() -> None:
    """Bad transport settings fail at load, naming the vendor, the field and what is valid."""
    with pytest.raises(ConfigError) as err:
        DicomPushSettings.from_params("lungai", {"ae_title": "A" * 17, "port": 0, "colour": 1})
    text = "\n".join(err.value.problems)
    assert "vendors.lungai.transport.ae_title: String should have at most 16 characters" in text
    assert "vendors.lungai.transport.host: Field required" in text
    assert "vendors.lungai.transport.port: Input should be greater than or equal to 1" in text
    assert "vendors.lungai.transport.colour: Extra inputs are not permitted" in text
    transport = _transport(104)
    assert transport.settings.calling_ae == "RADBRIDGE" and transport.settings.timeout == 10


def test_every_encoding_arrives_byte_for_byte(scp: StoreSCP, tmp_path: Path) -> None:
    """Compressed, big endian, deflated, multi-frame and undefined-length files go as stored."""
    files = [v.path for v in encoding_variants(tmp_path / "variants")]
    outcome = _transport(scp.port).send(JOB, files)
    assert outcome.instances == len(files)
    assert outcome.bytes == sum(p.stat().st_size for p in files)
    received = scp.files()
    assert sorted(dataset_bytes(p) for p in received) == sorted(dataset_bytes(p) for p in files)


def test_vendor_with_a_4_kib_maximum_pdu_gets_every_dataset_byte_for_byte(
    tmp_path: Path,
) -> None:
    """A vendor announcing a 4 KiB maximum PDU gets each data set in PDUs that fit, as
    stored (storescp refuses a longer PDU)."""
    files = [v.path for v in encoding_variants(tmp_path / "variants")]
    with StoreSCP(tmp_path / "small-pdu", ae_title="VENDOR", extra_args=["-pdu", "4096"]) as peer:
        outcome = _transport(peer.port).send(JOB, files)
        received = peer.files()
    assert outcome.instances == len(files)
    assert sorted(dataset_bytes(p) for p in received) == sorted(dataset_bytes(p) for p in files)


def test_vendor_announcing_no_maximum_pdu_gets_every_dataset_byte_for_byte(
    tmp_path: Path,
) -> None:
    """A vendor announcing no maximum PDU length (pynetdicom with 0) gets each data set
    in PDUs of the sender's own size, several a write, as stored, single and multi-frame,
    from a few bytes to several MiB."""
    files = [v.path for v in encoding_variants(tmp_path / "variants")]
    files += generate_large_study(tmp_path / "large", 6 * MIB, instance_bytes=3 * MIB)
    with ScriptedStoreSCP(maximum_pdu=0) as peer:
        outcome = _transport(peer.port).send(JOB, files)
    assert outcome.instances == len(files)
    stored = {p: read_file_meta(p) for p in files}
    expected = {m.sop_instance_uid: p.read_bytes()[m.offset :] for p, m in stored.items()}
    assert peer.data_sets == expected


def test_vendor_that_stalls_is_a_retryable_failure_after_the_timeout(tmp_path: Path) -> None:
    """A vendor that takes the data set and never answers in time: a retryable error that
    says so, after the transport's timeout, not a hang (the vendor would answer after 12 s;
    the timeout is 3 s, which a loaded machine's association request also needs)."""
    files = generate_study("ct_head", tmp_path / "s", instances=2, rows=16, columns=16)
    with ScriptedStoreSCP(stall=12.0) as peer:
        transport = _transport(peer.port, timeout=3)
        started = time.monotonic()
        with pytest.raises(
            DicomPushError, match=r"no C-STORE response for I0001\.dcm .*\(timed out\)"
        ) as err:
            transport.send(JOB, files)
        assert time.monotonic() - started < 10
    assert is_retryable(transport, err.value)


def _with_data_set_length(source: Path, length: int, out: Path) -> Path:
    """A copy of ``source`` whose data set is exactly ``length`` bytes (a private OB
    element pads it)."""
    ds = dcmread(source)
    block = ds.private_block(0x0009, "RADBRIDGE PADDING", create=True)
    block.add_new(0x00, "OB", b"")
    ds.save_as(out, enforce_file_format=True)
    pad = length - (out.stat().st_size - read_file_meta(out).offset)
    assert pad >= 0 and pad % 2 == 0, pad
    block[0x00].value = b"\x5a" * pad
    ds.save_as(out, enforce_file_format=True)
    assert out.stat().st_size - read_file_meta(out).offset == length
    return out


def test_data_sets_ending_on_a_pdu_or_a_batch_boundary_arrive_whole(tmp_path: Path) -> None:
    """With a 4 KiB maximum PDU, data sets of exactly three PDUs, exactly two of the
    sender's batches (one read and one write of many PDUs each), and two batches and two
    bytes: each arrives byte for byte, its last PDU marked last (storescp would wait
    for more otherwise, and the send time out)."""
    [source] = generate_study("ct_head", tmp_path / "s", instances=1, rows=16, columns=16)
    chunk = 4096 - PDV.size  # data bytes per PDU at storescp's -pdu 4096
    batch = BATCH_BYTES // chunk * chunk
    lengths = [3 * chunk, 2 * batch, 2 * batch + 2]
    files = []
    for n, length in enumerate(lengths):
        [copy] = generate_study("ct_head", tmp_path / f"c{n}", instances=1, rows=16, columns=16)
        files.append(_with_data_set_length(copy, length, tmp_path / f"exact-{length}.dcm"))
    with StoreSCP(tmp_path / "small-pdu", ae_title="VENDOR", extra_args=["-pdu", "4096"]) as peer:
        outcome = _transport(peer.port, timeout=5).send(JOB, files)
        received = peer.files()
    assert outcome.instances == len(lengths)
    assert sorted(dataset_bytes(p) for p in received) == sorted(dataset_bytes(p) for p in files)
    assert source.exists()


def test_vendor_that_stops_reading_mid_data_set_is_a_retryable_failure_after_the_timeout(
    tmp_path: Path,
) -> None:
    """storescp sleeping after the first PDU of a 24 MiB data set (its receive window
    fills, the sender's writes stop): a retryable error that says the vendor took no
    data, after the transport's timeout, not a hang; the connection, cut mid PDU, is
    closed rather than aborted (an abort would wait another timeout for a peer that
    no longer reads); nothing is stored."""
    files = generate_large_study(tmp_path / "large", 24 * MIB, instance_bytes=24 * MIB)
    with StoreSCP(
        tmp_path / "stalling", ae_title="VENDOR", fork=False, extra_args=["--sleep-during", "60"]
    ) as peer:
        transport = _transport(peer.port, timeout=2)
        started = time.monotonic()
        with pytest.raises(DicomPushError, match=r"I\d+\.dcm .*took no data for 2 s") as err:
            transport.send(JOB, files)
        assert 2 <= time.monotonic() - started < 3.5
        assert peer.files() == []
    assert is_retryable(transport, err.value)


def test_vendor_that_aborts_mid_data_set_is_a_retryable_failure(tmp_path: Path) -> None:
    """storescp aborting the association while a 24 MiB data set arrives: the error
    names the abort (not a bare connection reset), is retryable, and nothing is stored."""
    files = generate_large_study(tmp_path / "large", 24 * MIB, instance_bytes=24 * MIB)
    with StoreSCP(
        tmp_path / "aborting", ae_title="VENDOR", fork=False, extra_args=["--abort-during"]
    ) as peer:
        transport = _transport(peer.port)
        with pytest.raises(DicomPushError, match="the peer aborted the association") as err:
            transport.send(JOB, files)
        assert peer.files() == []
    assert is_retryable(transport, err.value)


def test_large_study_is_streamed_not_buffered(tmp_path: Path) -> None:
    """Pushing a ~300 MB study of 32 MiB instances grows this process's RSS by far less
    than one instance (the sender holds one batch of PDUs), and every byte arrives."""
    files = generate_large_study(tmp_path / "large", 300_000_000, instance_bytes=32 * MIB)
    total = sum(p.stat().st_size for p in files)
    with StoreSCP(tmp_path / "received", ae_title="VENDOR") as peer:
        with PeakRss() as rss:
            outcome = _transport(peer.port, timeout=60).send(JOB, files)
        received = peer.files()
    assert outcome.bytes == total > 290_000_000
    assert rss.growth < 16 * MIB, f"RSS grew {rss.growth / MIB:.0f} MiB for {total / MIB:.0f}"
    digests = {hashlib.sha256(dataset_bytes(p)).digest() for p in received}
    assert digests == {hashlib.sha256(dataset_bytes(p)).digest() for p in files}


def test_unreadable_file_is_not_retryable(scp: StoreSCP, tmp_path: Path) -> None:
    """A spool file that is not DICOM makes the job dead, not retried."""
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    transport = _transport(scp.port)
    with pytest.raises(VendorRejectedError) as err:
        transport.send(JOB, [bad])
    assert not is_retryable(transport, err.value)
    assert not isinstance(err.value, VendorUnavailableError)


def test_vendor_down_is_a_retryable_failure(tmp_path: Path) -> None:
    """A study sent to a port where nothing listens raises a retryable error naming the peer."""
    files = generate_study("ct_head", tmp_path / "s", instances=1, rows=16, columns=16)
    transport = _transport(free_port())
    with pytest.raises(DicomPushError, match=r"no association with VENDOR at 127\.0\.0\.1") as err:
        transport.send(JOB, files)
    assert is_retryable(transport, err.value)


def test_vendor_refusing_the_association_is_a_retryable_failure(tmp_path: Path) -> None:
    """A storescp that refuses every association gets nothing; the error is retryable.

    storescp --refuse closes the connection right after its A-ASSOCIATE-RJ: on a busy
    machine the close can overtake the rejection (pynetdicom's own AE then reports an abort
    about one time in ten), so either wording names the failed association."""
    files = generate_study("ct_head", tmp_path / "s", instances=1, rows=16, columns=16)
    with StoreSCP(tmp_path / "refusing", ae_title="VENDOR", extra_args=["--refuse"]) as peer:
        transport = _transport(peer.port)
        refused = "rejected the association|no association with VENDOR"
        with pytest.raises(DicomPushError, match=refused) as err:
            transport.send(JOB, files)
        assert peer.files() == []
    assert is_retryable(transport, err.value)


def test_a_response_the_reactor_takes_goes_back_to_the_sender() -> None:
    """pynetdicom's reactor sometimes takes a C-STORE response before ``send_c_store`` waits
    for it and drops it as "unexpected" (the C-STORE then times out, seen once in a full
    test run); the push association puts it back on the DIMSE queue instead. Driven
    directly, because the race cannot be provoked on demand."""
    assoc = RequestorAssociation(AE(), "requestor")
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 7
    response.Status = 0x0000
    assert response.is_valid_response and not response.is_valid_request
    assoc._serve_request(response, 1)
    assert assoc.dimse.msg_queue.get_nowait() == (1, response)
