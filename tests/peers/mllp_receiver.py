"""Recording MLLP receiver: answers every HL7 v2 message AA and remembers what it got.

Why: the crash suite checks what an MLLP destination peer actually received (MSH-10,
OBR-3) and in which order. The framing is written out here (VT … FS CR, HL7 v2 Appendix C)
so that the peer shares no code with the hub it checks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType
from typing import NamedTuple, Self

from ._aio import LoopThread, settle

HOST = "127.0.0.1"
START, END = b"\x0b", b"\x1c\x0d"


class MllpMessage(NamedTuple):
    control_id: str  # MSH-10
    obr3: str  # OBR-3 filler order number, first component ("" when absent)
    text: str
    time: float


def _fields(text: str, segment: str) -> list[str]:
    for line in text.split("\r"):
        if line.startswith(segment + "|"):
            return line.split("|")
    return []


def _ack(text: str) -> bytes:
    msh = _fields(text, "MSH")
    control = msh[9] if len(msh) > 9 else ""
    version = msh[11] if len(msh) > 11 else "2.6"
    stamp = time.strftime("%Y%m%d%H%M%S")
    return (f"MSH|^~\\&|PEER||TRYGGBRO||{stamp}||ACK|A{control}|P|{version}\r"
            f"MSA|AA|{control}").encode()


class RecordingMllpReceiver:
    """Loopback MLLP server on port 0 (or a given port) in a background thread."""

    def __init__(self, port: int = 0) -> None:
        self._requested_port = port
        self._port: int | None = None
        self._records: list[MllpMessage] = []
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop_thread = LoopThread("recording-mllp")

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("RecordingMllpReceiver is not started")
        return self._port

    def messages(self) -> list[MllpMessage]:
        with self._lock:
            return list(self._records)

    def take(self) -> list[MllpMessage]:
        """The messages so far, in arrival order, forgetting them."""
        with self._lock:
            taken, self._records = self._records, []
            return taken

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        buf = b""
        try:
            while chunk := await reader.read(65536):
                buf += chunk
                while (end := buf.find(END)) >= 0:
                    start = buf.find(START)
                    frame, buf = buf[start + 1:end] if 0 <= start < end else b"", buf[end + 2:]
                    text = frame.decode("utf-8", "replace")
                    msh, obr = _fields(text, "MSH"), _fields(text, "OBR")
                    with self._lock:
                        self._records.append(MllpMessage(
                            msh[9] if len(msh) > 9 else "",
                            obr[3].split("^")[0] if len(obr) > 3 else "", text,
                            time.monotonic()))
                    writer.write(START + _ack(text) + END)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _open(self) -> int:
        self._server = await asyncio.start_server(self._handle, HOST, self._requested_port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await settle()

    def start(self) -> int:
        self._loop_thread.start()
        self._port = self._loop_thread.run(self._open())
        return self._port

    def stop(self) -> None:
        if not self._loop_thread.running:
            return
        try:
            self._loop_thread.run(self._close())
        finally:
            self._loop_thread.stop()
            self._port = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
