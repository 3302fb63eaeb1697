"""The `sia-dc09` source type: an asyncio TCP receiver for DC-09 frames.

Panels keep one connection open and send frame after frame; each frame is answered on
the same connection, in order. The answer to a frame is:

- ACK only after `await intake.submit(raw)` returned, i.e. after the commit that holds
  the frame (a duplicate is ACKed again and creates nothing); a NULL link test without an
  account is ACKed without being stored;
- NAK for a frame that arrived damaged (no LF…CR framing, wrong length, wrong CRC), whose
  timestamp is outside the window, or that could not be stored: the panel sends it again;
- DUH for a frame that arrived intact but cannot be taken (encrypted, unknown id token,
  unreadable header or data, an account not in `accounts`, a missing timestamp when one
  is required): a resend would not help, the panel reports it or tries its backup path.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.contracts import SourceType
from hub.domain.model import RawMessage
from hub.logging import get_logger
from tryggbro_siadc09.adapter import CONTENT_TYPE
from tryggbro_siadc09.content import parse_records
from tryggbro_siadc09.frame import Answer, FrameError, answer_frame, dedup_key, parse_frame

log = get_logger("tryggbro_siadc09.source")
MAX_DC09_FRAME = 1 + 8 + 0xFFF + 1  # LF, CRC and length, the longest body, CR


class SiaDc09Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(ge=0, le=65535, description="TCP port (0: any free port, for tests)")
    max_frame_bytes: int = Field(
        1024, ge=64, le=MAX_DC09_FRAME,
        description="longest frame taken; longer input is answered NAK and the connection "
        "closed")
    idle_timeout_seconds: float = Field(
        300.0, gt=0, description="close a connection that sent nothing for this long")
    max_connections: int = Field(256, ge=1, le=100_000,
                                 description="connections served at once; more are closed")
    timestamp_past_seconds: int = Field(
        40, ge=0, description="how old a frame's timestamp may be (DC-09: 40 s)")
    timestamp_future_seconds: int = Field(
        20, ge=0, description="how far ahead of the receiver's clock it may be (DC-09: 20 s)")
    require_timestamp: bool = Field(
        True, description="DUH a frame without timestamp (the window cannot be checked)")
    accounts: list[str] = Field(
        default_factory=list,
        description="account numbers taken (hex, 3-16); empty: any account")

    @field_validator("accounts")
    @classmethod
    def _hex_accounts(cls, value: list[str]) -> list[str]:
        for account in value:
            if not (3 <= len(account) <= 16) or any(c not in "0123456789abcdefABCDEF"
                                                     for c in account):
                raise ValueError(f"account {account!r} must be 3-16 hex digits")
        return [a.upper() for a in value]


class SiaDc09Source:
    """One configured DC-09 receiver."""

    def __init__(self, name: str, settings: SiaDc09Settings, intake: Any) -> None:
        self.name = name
        self.settings = settings
        self.intake = intake
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._accounts = frozenset(settings.accounts)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port = 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the DC-09 source is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.settings.host, self.settings.port,
            limit=self.settings.max_frame_bytes)
        log.info("DC-09 receiver listening", source=self.name, host=self.settings.host,
                 port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            for task in list(self._connections):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) else ""
        if len(self._connections) >= self.settings.max_connections:
            log.warning("DC-09 connection refused: max_connections reached", source=self.name,
                        remote=remote, max_connections=self.settings.max_connections)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._frames(reader, writer, remote)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      remote: str) -> None:
        while True:
            try:
                chunk = await asyncio.wait_for(reader.readuntil(b"\r"),
                                               self.settings.idle_timeout_seconds)
            except TimeoutError:
                log.info("DC-09 connection idle; closed", source=self.name, remote=remote,
                         idle_timeout_seconds=self.settings.idle_timeout_seconds)
                return
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    log.warning("DC-09 connection closed in the middle of a frame; "
                                "the partial frame was discarded", source=self.name,
                                remote=remote, bytes=len(exc.partial))
                return
            except asyncio.LimitOverrunError:
                log.warning("DC-09 input longer than max_frame_bytes without a frame end "
                            "(CR); answered NAK and closed the connection", source=self.name,
                            remote=remote, max_frame_bytes=self.settings.max_frame_bytes)
                writer.write(answer_frame(Answer.NAK, None, datetime.now(UTC)))
                await writer.drain()
                return
            writer.write(await self.handle_frame(chunk, remote))
            await writer.drain()

    async def handle_frame(self, chunk: bytes, remote: str = "") -> bytes:
        """Check, journal and answer one frame (LF … CR, maybe after stray bytes)."""
        now = datetime.now(UTC)
        start = chunk.find(b"\n")
        if start > 0:
            log.warning("DC-09 bytes before the frame start (LF) discarded", source=self.name,
                        remote=remote, bytes=start)
            chunk = chunk[start:]
        try:
            frame = parse_frame(chunk)
            if not frame.account:
                if frame.message_type == "NULL":
                    return answer_frame(Answer.ACK, frame.header, now)  # a bare link test
                raise FrameError(Answer.DUH, "no-account", "the frame has no #account",
                                 frame.header)
            if self._accounts and frame.account.upper() not in self._accounts:
                raise FrameError(Answer.DUH, "unknown-account",
                                 "the account is not among this receiver's accounts",
                                 frame.header)
            if frame.timestamp is None:
                if self.settings.require_timestamp:
                    raise FrameError(Answer.DUH, "no-timestamp",
                                     "the frame has no timestamp and require_timestamp is on",
                                     frame.header)
            else:
                skew = (frame.timestamp - now).total_seconds()
                if not (-self.settings.timestamp_past_seconds <= skew
                        <= self.settings.timestamp_future_seconds):
                    raise FrameError(Answer.NAK, "timestamp-out-of-window",
                                     f"timestamp is {skew:+.0f} s from the receiver's clock "
                                     f"(window -{self.settings.timestamp_past_seconds} s … "
                                     f"+{self.settings.timestamp_future_seconds} s)",
                                     frame.header)
            parse_records(frame)
            key = dedup_key(frame, now)
        except FrameError as exc:
            sequence = exc.header.sequence if exc.header else None
            log.warning("DC-09 frame not taken", source=self.name, remote=remote,
                        answer=str(exc.answer), reason=exc.reason, detail=exc.detail,
                        sequence=sequence)
            return answer_frame(exc.answer, exc.header, now)
        raw = RawMessage(source=self.name, dedup_key=key, content_type=CONTENT_TYPE,
                         body=chunk, received_at=now,
                         transport={"remote": remote, "protocol": "sia-dc09",
                                    "token": frame.message_type,
                                    "sequence": frame.header.sequence})
        try:
            result = await self.intake.submit(raw)
        except Exception as exc:
            log.error("DC-09 frame could not be journaled; answered NAK so the panel resends",
                      source=self.name, remote=remote, error=type(exc).__name__,
                      sequence=frame.header.sequence)
            return answer_frame(Answer.NAK, frame.header, now)
        log.info("DC-09 frame accepted", source=self.name, message_id=result.id,
                 duplicate=result.duplicate, token=frame.message_type,
                 sequence=frame.header.sequence)
        return answer_frame(Answer.ACK, frame.header, now)


def build_source(name: str, settings: SiaDc09Settings, intake: Any) -> SiaDc09Source:
    return SiaDc09Source(name, settings, intake)


SOURCE_TYPE = SourceType("sia-dc09", SiaDc09Settings, build_source)
