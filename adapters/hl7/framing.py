"""MLLP framing: ``<VT> message <FS><CR>``, out of a byte stream that may misbehave.

:class:`FrameReader` is fed whatever the socket gives and returns the complete
frames: several in one read, one spread over many reads, bytes between frames
(dropped and counted), a frame abandoned by a new ``<VT>`` (dropped), and a
frame larger than the limit (its head kept, the rest skipped, reported as
:class:`Oversized` so the listener can refuse it).
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
HEAD_BYTES = 4096
"""How much of an oversized frame is kept: enough for its MSH, to answer it."""


def frame(message: bytes) -> bytes:
    """``message`` wrapped in MLLP start and end blocks."""
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True, slots=True)
class Oversized:
    """A frame longer than the limit: its first bytes and its whole size."""

    head: bytes
    size: int


class FrameReader:
    """Incremental MLLP deframer for one connection."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.junk_bytes = 0
        """Bytes seen outside any frame (dropped)."""
        self.abandoned = 0
        """Frames cut short by a new start block (dropped)."""
        self._buffer = bytearray()
        self._in_frame = False
        self._oversized = False
        self._size = 0
        self._after_end = False

    @property
    def pending(self) -> int:
        """Bytes of a frame begun but not ended (lost if the connection closes now)."""
        return self._size if self._in_frame else 0

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        """The frames that ``data`` completes, in order."""
        frames: list[bytes | Oversized] = []
        pos, end = 0, len(data)
        if self._after_end and data[:1] == CARRIAGE_RETURN:
            pos = 1
        self._after_end = False
        while pos < end:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self.junk_bytes += end - pos
                    break
                self.junk_bytes += start - pos
                self._in_frame, self._oversized, self._size = True, False, 0
                self._buffer.clear()
                pos = start + 1
                continue
            stop = data.find(END_BLOCK, pos)
            restart = data.find(START_BLOCK, pos, stop if stop >= 0 else end)
            if restart >= 0:
                self.abandoned += 1
                self._in_frame = False
                pos = restart
                continue
            upto = stop if stop >= 0 else end
            self._take(data, pos, upto)
            if stop < 0:
                break
            if self._oversized:
                frames.append(Oversized(bytes(self._buffer), self._size))
            else:
                frames.append(bytes(self._buffer))
            self._buffer.clear()
            self._in_frame = False
            pos = stop + 1
            if pos == end:
                self._after_end = True
            elif data[pos : pos + 1] == CARRIAGE_RETURN:
                pos += 1
        return frames

    def _take(self, data: bytes, start: int, stop: int) -> None:
        size = stop - start
        self._size += size
        if self._oversized:
            return
        if self._size > self.max_bytes:
            self._oversized = True
            keep = max(0, HEAD_BYTES - len(self._buffer))
            self._buffer += data[start : start + min(size, keep)]
            del self._buffer[HEAD_BYTES:]
            return
        self._buffer += data[start:stop]
