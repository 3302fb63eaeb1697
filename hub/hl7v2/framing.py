"""MLLP framing: ``<VT 0x0B> message <FS 0x1C><CR 0x0D>`` (reliability.md §2.3).

`FrameReader` is a pure, incremental reader: feed it whatever bytes a socket returned
(a frame may arrive split at any byte) and it hands back the complete frames. It does
not resynchronise: bytes other than CR/LF between frames, a start byte inside a frame,
an end byte not followed by CR, or a frame above the cap raise `FramingError`, and the
caller closes the connection (the sender resends what it has no ACK for).
"""

from __future__ import annotations

START = b"\x0b"
END = b"\x1c\x0d"
_VT = 0x0B
_FS = 0x1C
_CR = 0x0D
_BETWEEN = b"\r\n"  # tolerated between frames (some senders end a frame with an extra LF)


class FramingError(Exception):
    """The byte stream is not MLLP; the text names what was wrong (never the content)."""


def frame(message: bytes) -> bytes:
    """Wrap one message in MLLP start and end blocks."""
    return START + message + END


class FrameReader:
    """Split an MLLP byte stream into frames, with a size cap."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._in_frame = False
        self._scanned = 0  # bytes of the current frame already searched for the end block
        self.offset = 0  # bytes consumed so far on this stream (for error messages)

    @property
    def mid_frame(self) -> bool:
        """True once a start block was read and the frame is not yet complete."""
        return self._in_frame

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the frames they completed (payload without the blocks)."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        while buf:
            if not self._in_frame:
                skip = 0
                while skip < len(buf) and buf[skip] in _BETWEEN:
                    skip += 1
                if skip:
                    del buf[:skip]
                    self.offset += skip
                if not buf:
                    break
                if buf[0] != _VT:
                    raise FramingError(
                        f"byte 0x{buf[0]:02X} at stream offset {self.offset} where a frame "
                        "start block (0x0B) was expected")
                del buf[:1]
                self.offset += 1
                self._in_frame = True
                self._scanned = 0
            end = buf.find(_FS, self._scanned)
            limit = len(buf) if end < 0 else end
            nested = buf.find(_VT, self._scanned, limit)
            if nested >= 0:
                raise FramingError(
                    f"a start block (0x0B) at stream offset {self.offset + nested} inside an "
                    "unfinished frame")
            if limit > self.max_frame_bytes:
                raise FramingError(
                    f"frame exceeds max_frame_bytes = {self.max_frame_bytes}")
            if end < 0 or end + 1 >= len(buf):
                self._scanned = limit
                break
            if buf[end + 1] != _CR:
                raise FramingError(
                    f"end block 0x1C at stream offset {self.offset + end} is followed by "
                    f"0x{buf[end + 1]:02X}, not 0x0D")
            frames.append(bytes(buf[:end]))
            del buf[:end + 2]
            self.offset += end + 2
            self._in_frame = False
            self._scanned = 0
        return frames

    def eof_error(self) -> FramingError | None:
        """What is wrong if the stream ends now (None: it ended between frames)."""
        if self._in_frame:
            return FramingError(f"the connection closed mid-frame after {len(self._buf)} "
                                "bytes of the message (discarded; the sender must resend)")
        return None
