"""The site-to-hub link's pure parts: the wire format (manifest, parts, unpacking with every
checksum), the bandwidth bucket and the time windows."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from adapters.link.pacing import TokenBucket, Windows
from adapters.link.parts import Manifest, StudyStream, TransferError, compress, unpack
from broker.model.vendor import TRANSPORTS, TransportContext


def _part10(path: Path, uid: str, payload: bytes) -> Path:
    """A minimal Part 10 file: preamble, file meta with ``uid``, then ``payload``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(buffer.getvalue() + payload)
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Three files of different sizes (one of them larger than a part)."""
    sizes = (5000, 300, 12000)
    return [
        _part10(tmp_path / f"{n}.dcm", f"1.2.3.{n}", bytes([n + 1]) * size)
        for n, size in enumerate(sizes)
    ]


def _unpacked(manifest: Manifest, parts: dict[int, bytes]) -> list[bytes]:
    out: list[io.BytesIO] = []

    class Kept(io.BytesIO):
        def close(self) -> None:
            pass

    def open_instance(_n: int, _entry: object) -> io.BytesIO:
        out.append(Kept())
        return out[-1]

    unpack(manifest, parts.__getitem__, open_instance)
    return [b.getvalue() for b in out]


@pytest.mark.parametrize("codec", ["zstd", "zlib"])
def test_a_study_cut_into_parts_unpacks_to_the_same_files(files: list[Path], codec: str) -> None:
    """Parts of 4 KiB cut across file boundaries; unpacked in order they give every file
    back byte for byte, and the manifest names each file's SOP Instance UID."""
    stream = StudyStream("1.2.3", files, codec=codec, part_bytes=4096)  # type: ignore[arg-type]
    manifest = stream.manifest()
    assert len(manifest.parts) == -(-sum(p.stat().st_size for p in files) // 4096)
    assert [i.sop_instance_uid for i in manifest.instances] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    parts = {p.index: stream.part(p.index) for p in manifest.parts}
    assert _unpacked(manifest, parts) == [f.read_bytes() for f in files]
    assert Manifest.model_validate_json(manifest.model_dump_json()).key() == manifest.key()


def test_a_part_that_does_not_match_its_checksum_is_refused(files: list[Path]) -> None:
    """A part replaced by another part's bytes fails its checksum by index."""
    stream = StudyStream("1.2.3", files, part_bytes=4096)
    manifest = stream.manifest()
    parts = {p.index: stream.part(p.index) for p in manifest.parts}
    parts[2] = parts[1]
    with pytest.raises(TransferError, match="part 2 does not match its checksum"):
        _unpacked(manifest, parts)


def test_a_forged_manifest_cannot_pass_an_instance_off(files: list[Path]) -> None:
    """A manifest whose parts match what was sent but whose instance checksum is another's
    is refused at that instance; one whose sizes do not add up is not a manifest."""
    stream = StudyStream("1.2.3", files, part_bytes=4096)
    manifest = stream.manifest()
    forged_instances = list(manifest.instances)
    forged_instances[1] = forged_instances[1].model_copy(update={"sha256": "0" * 64})
    forged = manifest.model_copy(update={"instances": forged_instances})
    parts = {p.index: stream.part(p.index) for p in manifest.parts}
    with pytest.raises(TransferError, match="instance 1 does not match its checksum"):
        _unpacked(forged, parts)
    data = manifest.model_dump() | {"size": manifest.size + 1}
    with pytest.raises(ValueError, match="do not add up"):
        Manifest.model_validate(data)


def test_a_part_that_swells_beyond_its_size_is_refused(files: list[Path]) -> None:
    """A part whose compressed bytes decompress to more than its stated size is refused
    (read no further than the size allows)."""
    stream = StudyStream("1.2.3", files[:1], part_bytes=4096)
    manifest = stream.manifest()
    bomb = compress("zstd", b"\0" * 10_000_000)
    parts = {p.index: stream.part(p.index) for p in manifest.parts}
    parts[0] = bomb
    forged_parts = list(manifest.parts)
    forged_parts[0] = forged_parts[0].model_copy(update={"sha256": _sha(bomb)})
    forged = manifest.model_copy(update={"parts": forged_parts})
    with pytest.raises(TransferError, match="raw bytes"):
        _unpacked(forged, parts)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_bucket_keeps_a_link_under_its_rate() -> None:
    """10 KB through a 1 KB/s bucket (starting with a second's worth) waits 9 seconds on
    its clock; small takes within the saved second do not wait."""
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(1000, clock=lambda: now[0], sleep=sleep)
    bucket.take(500)
    assert slept == []
    for _ in range(19):
        bucket.take(500)
    assert now[0] == pytest.approx(9.0)


def test_a_sends_bucket_starts_empty_so_sends_in_a_row_make_no_burst() -> None:
    """Five sends of 500 B one after another, each with its own empty 1 KB/s bucket (as a
    link's sends get), take 2.5 seconds on its clock: none starts with a saved second."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    for _ in range(5):
        TokenBucket(1000, clock=lambda: now[0], sleep=sleep, full=False).take(500)
    assert now[0] == pytest.approx(2.5)


def test_a_links_bandwidth_is_shared_by_its_concurrency() -> None:
    """A link of 8 MB/s for a vendor of concurrency 4 paces each send at 2 MB/s: four sends
    at once, wherever they run, stay under 8 MB/s."""
    settings = {"url": "https://hub.example", "token": "t", "bandwidth": "8MB"}
    for concurrency, rate in ((1, 8_000_000), (4, 2_000_000)):
        context = TransportContext("hub", concurrency=concurrency)
        link = TRANSPORTS.get("radbridge").from_params("hub", settings, context)
        assert link.rate == rate  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("utc", "until"),
    [
        ("2026-05-01T13:00:00", None),  # 21:00 in Shanghai: inside 20:00-06:00
        ("2026-05-01T21:30:00", None),  # 05:30 the next morning: still inside
        ("2026-05-01T22:00:00", "2026-05-02T04:00:00"),  # 06:00: closed until 12:00
        ("2026-05-02T05:30:00", "2026-05-02T12:00:00"),  # 13:30: closed until 20:00
        ("2026-05-01T03:00:00", "2026-05-01T04:00:00"),  # 11:00: the lunch window opens first
    ],
)
def test_windows_are_in_the_sites_timezone_and_cross_midnight(utc: str, until: str | None) -> None:
    """``20:00-06:00`` and ``12:00-13:30`` in Asia/Shanghai: open inside either (across
    midnight too); outside, closed until the next one opens."""
    windows = Windows(["20:00-06:00", "12:00-13:30"], "Asia/Shanghai")
    now = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    expected = None if until is None else datetime.fromisoformat(until).replace(tzinfo=UTC)
    assert windows.closed_until(now) == expected


@pytest.mark.parametrize("text", ["8:00-9:00", "20:00-20:00", "25:00-01:00", "20:00"])
def test_a_window_that_is_not_one_says_what_is_valid(text: str) -> None:
    """A malformed or empty window is refused with the valid form."""
    with pytest.raises(ValueError, match="window"):
        Windows([text], "UTC")
