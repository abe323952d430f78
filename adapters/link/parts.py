"""The link's wire format: a study as one stream cut into compressed, checksummed parts.

The site lays a job's files end to end (in the job's order) as one stream of
``size`` bytes and cuts it into parts of ``part_bytes`` (the last one shorter).
Each part travels compressed on its own (``zstd``, or ``zlib`` where zstd is
not installed), so a part can be sent again, and checked, alone. The manifest,
sent first, says everything the hub checks before the study becomes visible::

    {
      "format": "radbridge-transfer/1",
      "study_instance_uid": "1.2.…",
      "codec": "zstd",                       # zstd | zlib
      "part_bytes": 4194304,                 # raw bytes per part (the last: the rest)
      "size": 10485760,                      # the whole stream, raw
      "sha256": "…",                         # of the whole stream, raw
      "instances": [{"sop_instance_uid": "1.2.…", "size": 524288, "sha256": "…"}, …],
      "parts": [{"index": 0, "size": 4194304, "sha256": "…"}, …]   # sha256 of the part as sent
    }

The manifest's own SHA-256 (:meth:`Manifest.key`, of its canonical JSON) names the
transfer: the same study sent again (a retry after a cut) is the same transfer.
Pure apart from reading the files: no network, no store.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydicom.filereader import read_file_meta_info

from broker.model.errors import AdapterError

try:  # a maintained binding of zstd; zlib (standard library) where it is not installed
    import zstandard
except ImportError:  # pragma: no cover - zstandard is a dependency
    zstandard = None  # type: ignore[assignment]

#: What a corrupt compressed part raises.
_CORRUPT: tuple[type[Exception], ...] = (zlib.error, ValueError) + (
    (zstandard.ZstdError,) if zstandard is not None else ()
)
FORMAT: Literal["radbridge-transfer/1"] = "radbridge-transfer/1"
Codec = Literal["zstd", "zlib"]
#: The most raw bytes in one part (a hub refuses a manifest with larger parts).
MAX_PART_BYTES = 64 * 1024 * 1024
#: The default raw bytes per part: small enough to resend cheaply after a cut.
PART_BYTES = 4 * 1024 * 1024
ZSTD_LEVEL = 3
ZLIB_LEVEL = 6
_READ = 1024 * 1024
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class TransferError(AdapterError):
    """A transfer's manifest, parts or instances do not agree (corrupt, cut, or forged)."""


def default_codec() -> Codec:
    """zstd when its binding is installed, else zlib."""
    return "zstd" if zstandard is not None else "zlib"


class InstanceEntry(BaseModel):
    """One file of the study, in stream order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sop_instance_uid: Annotated[str, Field(min_length=1, max_length=64)]
    size: Annotated[int, Field(ge=1)]
    sha256: Sha256


class PartEntry(BaseModel):
    """One part: its place, its raw size, and the SHA-256 of its compressed bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: Annotated[int, Field(ge=0)]
    size: Annotated[int, Field(ge=1)]
    sha256: Sha256


class Manifest(BaseModel):
    """What a transfer carries (see the module docstring); checked when it is built or read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["radbridge-transfer/1"] = FORMAT
    study_instance_uid: Annotated[str, Field(min_length=1, max_length=64)]
    codec: Codec
    part_bytes: Annotated[int, Field(ge=1, le=MAX_PART_BYTES)]
    size: Annotated[int, Field(ge=1)]
    sha256: Sha256
    instances: Annotated[list[InstanceEntry], Field(min_length=1, max_length=100_000)]
    parts: Annotated[list[PartEntry], Field(min_length=1, max_length=1_000_000)]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if sum(i.size for i in self.instances) != self.size:
            raise ValueError("the instances' sizes do not add up to the stream's size")
        expected = -(-self.size // self.part_bytes)
        if [p.index for p in self.parts] != list(range(expected)):
            raise ValueError(
                f"parts must be numbered 0..{expected - 1} in order "
                f"({self.size} bytes in parts of {self.part_bytes})"
            )
        for part in self.parts:
            if part.size != self.raw_size(part.index):
                raise ValueError(f"part {part.index} has {part.size} raw bytes, not the cut's")
        return self

    def raw_size(self, index: int) -> int:
        """How many raw bytes part ``index`` holds."""
        return min(self.part_bytes, self.size - index * self.part_bytes)

    def key(self) -> str:
        """The SHA-256 of the manifest's canonical JSON: the transfer's name at the hub."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def compress(codec: Codec, data: bytes) -> bytes:
    """One part, compressed (deterministic: the same bytes give the same part)."""
    if codec == "zstd":
        if zstandard is None:
            raise TransferError("zstd is not installed here; valid codec: zlib")
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    return zlib.compress(data, ZLIB_LEVEL)


def decompress(codec: Codec, data: bytes, size: int) -> bytes:
    """A part's raw bytes, read no further than ``size`` + 1 (a forged part cannot swell)."""
    try:
        if codec == "zstd":
            if zstandard is None:
                raise TransferError("zstd is not installed on this hub; send with codec zlib")
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
                raw = reader.read(size + 1)
        else:
            raw = zlib.decompressobj().decompress(data, size + 1)
    except _CORRUPT as exc:
        raise TransferError(f"a part cannot be decompressed: {exc}") from exc
    if len(raw) != size:
        raise TransferError(f"a part holds {len(raw)} raw bytes; its manifest says {size}")
    return raw


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StudyStream:
    """A job's files as one stream: its manifest, and any of its parts, compressed."""

    def __init__(
        self,
        study_uid: str,
        files: Sequence[Path],
        *,
        codec: Codec | None = None,
        part_bytes: int = PART_BYTES,
    ) -> None:
        if not files:
            raise TransferError("a transfer needs at least one file")
        self.study_uid = study_uid
        self.files = list(files)
        self.codec: Codec = codec or default_codec()
        self.part_bytes = part_bytes
        try:
            self.sizes = [p.stat().st_size for p in self.files]
        except OSError as exc:
            raise TransferError(f"cannot read the spool: {exc}") from exc
        self.size = sum(self.sizes)

    def _read(self, start: int, length: int) -> bytes:
        """``length`` bytes of the stream from ``start``."""
        out = bytearray()
        offset = 0
        for path, size in zip(self.files, self.sizes, strict=True):
            if offset + size <= start:
                offset += size
                continue
            with path.open("rb") as fp:
                fp.seek(max(0, start - offset))
                out += fp.read(length - len(out))
            offset += size
            if len(out) >= length or offset >= start + length:
                break
        if len(out) != length:
            raise TransferError("a spool file changed size while it was sent")
        return bytes(out)

    def raw_part(self, index: int) -> bytes:
        start = index * self.part_bytes
        return self._read(start, min(self.part_bytes, self.size - start))

    def part(self, index: int) -> bytes:
        """Part ``index`` as it travels (compressed)."""
        return compress(self.codec, self.raw_part(index))

    def manifest(self) -> Manifest:
        """Read every file once: the instances' and the parts' checksums."""
        whole = hashlib.sha256()
        instances = []
        for path in self.files:
            digest = hashlib.sha256()
            with path.open("rb") as fp:
                while chunk := fp.read(_READ):
                    digest.update(chunk)
                    whole.update(chunk)
            try:
                uid = str(read_file_meta_info(path).get("MediaStorageSOPInstanceUID", ""))
            except Exception as exc:  # pydicom's errors vary; the file cannot be sent as is
                raise TransferError(f"{path.name} has no readable file meta: {exc}") from exc
            instances.append({"sop_instance_uid": uid, "size": path.stat().st_size})
            instances[-1]["sha256"] = digest.hexdigest()
        count = -(-self.size // self.part_bytes)
        parts = [
            {"index": i, "size": min(self.part_bytes, self.size - i * self.part_bytes)}
            | {"sha256": sha256(self.part(i))}
            for i in range(count)
        ]
        try:
            return Manifest.model_validate(
                {
                    "study_instance_uid": self.study_uid,
                    "codec": self.codec,
                    "part_bytes": self.part_bytes,
                    "size": self.size,
                    "sha256": whole.hexdigest(),
                    "instances": instances,
                    "parts": parts,
                }
            )
        except ValueError as exc:
            raise TransferError(f"the study cannot be described for the hub: {exc}") from exc


def unpack(
    manifest: Manifest,
    read_part: Callable[[int], bytes],
    open_instance: Callable[[int, InstanceEntry], Any],
) -> None:
    """Decompress every part in order and write the instances, checking everything.

    ``read_part(index)`` gives a part as it arrived; ``open_instance(n, entry)`` a
    writable binary file for the ``n``-th instance (closed here). Raises
    :class:`TransferError` at the first part, instance or stream checksum that does
    not agree with the manifest (what was written is the caller's to remove).
    """
    whole = hashlib.sha256()
    entries = iter(enumerate(manifest.instances))
    first = next(entries)
    current: tuple[int, InstanceEntry] | None = first
    out = open_instance(*first)
    left = first[1].size
    digest = hashlib.sha256()
    try:
        for part in manifest.parts:
            data = read_part(part.index)
            if sha256(data) != part.sha256:
                raise TransferError(f"part {part.index} does not match its checksum")
            raw = memoryview(decompress(manifest.codec, data, part.size))
            whole.update(raw)
            while raw:
                if current is None:
                    raise TransferError("the stream is longer than its instances")
                take = raw[:left]
                out.write(take)
                digest.update(take)
                left -= len(take)
                raw = raw[len(take) :]
                if left == 0:
                    out.close()
                    if digest.hexdigest() != current[1].sha256:
                        raise TransferError(f"instance {current[0]} does not match its checksum")
                    current = next(entries, None)
                    if current is not None:
                        out = open_instance(*current)
                        left = current[1].size
                        digest = hashlib.sha256()
    finally:
        out.close()
    if current is not None:
        raise TransferError("the stream ended before its last instance")
    if whole.hexdigest() != manifest.sha256:
        raise TransferError("the study does not match its checksum")


def iter_chunks(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (a paced request body)."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])
