"""Reading a received object's header within bounds: deflate bombs, deep nesting.

pydicom inflates a Deflated Explicit VR Little Endian data set whole, in memory,
before it parses a byte of it: 0.3 MB that inflate to 300 MB cost 300 MB (and
more while parsing) even when only the header is wanted. :func:`read_header`
inflates lazily instead, only as far as the parse reads (it stops before the
pixel data), and refuses a data set whose inflated header passes
:data:`MAX_INFLATED_BYTES` or that inflates more than :data:`MAX_INFLATE_RATIO`
times once :data:`RATIO_GRACE_BYTES` are inflated. Pixel data is never inflated
here; the object is stored as it came.

Sequences nested deeper than pydicom's recursion allows (about 170 levels; real
objects nest a few) are refused the same way, as a data set radbridge cannot
understand, never as an exception escaping the handler.

Every refusal is an :class:`~broker.model.errors.InvalidDicomError`.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import FileDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from broker.model.errors import InvalidDicomError

#: Inflated header bytes read at most from a deflated data set (pixel data excluded).
MAX_INFLATED_BYTES = 64 * 1024 * 1024
#: Inflated / deflated bytes at most, checked once RATIO_GRACE_BYTES are inflated.
MAX_INFLATE_RATIO = 200
RATIO_GRACE_BYTES = 8 * 1024 * 1024
#: Bytes of compressed input read at a time, and inflated output produced at a time.
_INPUT_CHUNK = 64 * 1024
_OUTPUT_CHUNK = 1024 * 1024
#: Inflated bytes kept behind the read position (pydicom seeks back a few bytes).
_KEEP_BEHIND = 1024 * 1024

#: What pydicom raises for bytes it cannot parse (or decode, when a value is read).
PARSE_ERRORS = (
    pydicom.errors.InvalidDicomError,
    pydicom.errors.BytesLengthException,
    ValueError,
    EOFError,
    KeyError,
    TypeError,
    OSError,
    NotImplementedError,
    struct.error,
    zlib.error,
)


#: The ErrorComment is cut at 64 characters: say it first.
_TOO_DEEP = "sequences nested too deeply to be read"


class InflateLimitError(InvalidDicomError):
    """A deflated data set's header inflates past a limit."""


def _at_pixel_data(tag: Any, _vr: str | None, _length: int) -> bool:
    return int(tag) in {0x7FE00010, 0x7FE00009, 0x7FE00008}


class Inflating:
    """A read-only, forward-seeking file over a raw-deflate stream, inflated on demand."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = bytearray()
        self._base = 0  # stream offset of _buffer[0]
        self._position = 0
        self._fed = 0
        self._ended = False
        self.inflated = 0

    @property
    def name(self) -> str | None:
        return getattr(self._raw, "name", None)

    def _consumed(self) -> int:
        return self._fed - len(self._inflater.unconsumed_tail)

    def _inflate_to(self, end: int) -> None:
        while self._base + len(self._buffer) < end and not self._ended:
            data = self._inflater.unconsumed_tail
            if not data:
                data = self._raw.read(_INPUT_CHUNK)
                self._fed += len(data)
                if not data:  # the stream is cut short: what was inflated is all there is
                    self._buffer += self._inflater.flush()
                    self._ended = True
                    break
            out = self._inflater.decompress(data, _OUTPUT_CHUNK)
            self.inflated += len(out)
            self._check()
            self._buffer += out
            self._ended = self._inflater.eof
            self._trim()

    def _trim(self) -> None:
        """Drop what lies well behind the read position (or the seek target ahead)."""
        behind = min(self._position - _KEEP_BEHIND - self._base, len(self._buffer))
        if behind > _KEEP_BEHIND:
            del self._buffer[:behind]
            self._base += behind

    def _check(self) -> None:
        if self.inflated > MAX_INFLATED_BYTES:
            raise InflateLimitError(
                f"the deflated data set's header inflates past {MAX_INFLATED_BYTES >> 20} MiB"
            )
        if self.inflated > RATIO_GRACE_BYTES and self.inflated > MAX_INFLATE_RATIO * max(
            1, self._consumed()
        ):
            raise InflateLimitError(
                f"the deflated data set inflates more than {MAX_INFLATE_RATIO} times"
            )

    def read(self, size: int = -1) -> bytes:
        end = self._position + size if size >= 0 else MAX_INFLATED_BYTES + 1
        self._inflate_to(end)
        start = self._position - self._base
        data = bytes(self._buffer[start : end - self._base])
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        target = {0: offset, 1: self._position + offset}.get(whence)
        if target is None or target < self._base:
            raise OSError("a deflated data set is read forwards only")
        self._position = target
        return target

    def tell(self) -> int:
        return self._position


def _read_deflated(path: Path, specific_tags: list[Any] | None) -> FileDataset:
    with path.open("rb") as raw:
        preamble = read_preamble(raw, True)
        meta = pydicom.filereader._read_file_meta_info(raw)
        stream = Inflating(raw)
        dataset = read_dataset(
            stream,  # type: ignore[arg-type]
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=_at_pixel_data,
            defer_size=None,  # a deferred value would be re-read from the deflated file
            specific_tags=specific_tags,
        )
    ds = FileDataset(str(path), dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def read_header(
    path: Path,
    *,
    defer_size: int | str | None = 4096,
    specific_tags: list[Any] | None = None,
) -> FileDataset:
    """The data set up to (not including) the pixel data, within the limits above.

    Arguments are pydicom's ``dcmread``'s (always ``stop_before_pixels`` and
    ``force``); a deflated data set is read without deferring values, as they
    could not be read again later.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = pydicom.filereader.read_file_meta_info(path) if _has_preamble(path) else None
            if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                return _read_deflated(path, specific_tags)
            return pydicom.dcmread(
                path,
                stop_before_pixels=True,
                defer_size=defer_size,
                force=True,
                specific_tags=specific_tags,
            )
    except InvalidDicomError:
        raise
    except RecursionError as exc:
        raise InvalidDicomError(_TOO_DEEP) from exc
    except PARSE_ERRORS as exc:
        if _caused_by_recursion(exc):  # pydicom turns it into OSError inside a sequence
            raise InvalidDicomError(_TOO_DEEP) from exc
        # pydicom's message may quote the bytes it could not read: only its kind is said.
        raise InvalidDicomError(f"the dataset cannot be parsed ({type(exc).__name__})") from exc


def _caused_by_recursion(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, RecursionError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _has_preamble(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


__all__ = [
    "MAX_INFLATED_BYTES",
    "MAX_INFLATE_RATIO",
    "PARSE_ERRORS",
    "InflateLimitError",
    "read_header",
]
