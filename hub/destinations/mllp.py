"""Destination type `mllp`: vital signs as HL7 v2 ORU^R01 over MLLP.

Each delivery's Bundle becomes one ORU^R01 (`hub.hl7v2.outbound`) with a control id
(MSH-10) derived from the delivery, so a retry resends the same id. The ACK decides:

- MSA-2 must equal our MSH-10; any other frame (an unsolicited or duplicate ACK, as
  node-hl7-server sends on a persistent connection) is ignored and reading goes on;
- AA/CA → delivered; AE/CE → retry; AR/CR → rejected with MSA-3/ERR text;
- no ACK within `ack_timeout_seconds`, a refused connection, a broken frame → retry.

With `connection = "persistent"` idle connections are reused. A peer that closes after
each message (hl7apy's MLLPServer) is noticed when the reused connection ends before an
ACK: the message is then sent once more on a fresh connection at once (the peer never
read it, or dedups it by MSH-10).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub import hookimpl
from hub.contracts import DestinationType, RegisterDestination
from hub.domain.model import OutboundDelivery, Outcome
from hub.hl7v2.framing import FrameReader, FramingError, frame
from hub.hl7v2.outbound import Ack, OruError, Party, build_oru, control_id, read_ack
from hub.hl7v2.wire import Hl7Error
from hub.logging import get_logger

log = get_logger("hub.destinations.mllp")


class MllpDestinationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(description="the receiver's host name or address")
    port: int = Field(ge=1, le=65535)
    connection: Literal["persistent", "per-message"] = Field(
        "persistent", description="reuse connections, or one connection per message")
    connect_timeout_seconds: float = Field(5.0, gt=0)
    ack_timeout_seconds: float = Field(30.0, gt=0)
    max_frame_bytes: int = Field(1_048_576, ge=1024)
    tls: bool = False
    ca_file: Path | None = Field(None, description="CA bundle for a private PKI")
    tls_cert_file: Path | None = Field(None, description="client certificate (mTLS)")
    tls_key_file: Path | None = Field(None, description="key for tls_cert_file")
    version: Literal["2.5", "2.5.1", "2.6"] = "2.6"
    processing_id: Literal["P", "T", "D"] = "P"
    sending_application: str = "TRYGGBRO"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""

    @model_validator(mode="after")
    def _tls_pair(self) -> MllpDestinationSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if not self.tls and (self.ca_file or self.tls_cert_file):
            raise ValueError("ca_file and tls_cert_file need tls = true")
        return self


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_frame_bytes: int) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = FrameReader(max_frame_bytes)
        self.pending: list[bytes] = []
        self.ignored = 0

    @property
    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def exchange(self, data: bytes, control: str) -> Ack:
        """Send one framed message; return the ACK whose MSA-2 is `control`."""
        self.writer.write(data)
        await self.writer.drain()
        while True:
            while self.pending:
                ack = read_ack(self.pending.pop(0))
                if ack.control_id == control:
                    return ack
                self.ignored += 1  # an unsolicited or duplicate ACK of an earlier message
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionResetError("the receiver closed the connection before "
                                           "the ACK")
            self.pending += self.frames.feed(chunk)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), timeout=2)


class MllpDestination:
    def __init__(self, name: str, settings: MllpDestinationSettings) -> None:
        self.name = name
        self.settings = settings
        self._idle: list[_Connection] = []
        self._ssl = self._tls_context()
        self.sender = Party(settings.sending_application, settings.sending_facility)
        self.receiver = Party(settings.receiving_application, settings.receiving_facility)

    def _tls_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(s.ca_file) if s.ca_file is not None else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            context.load_cert_chain(s.tls_cert_file, s.tls_key_file)
        return context

    def message(self, delivery: OutboundDelivery) -> tuple[str, str]:
        """(MSH-10, the ORU^R01 text) for a delivery. Raises OruError."""
        try:
            bundle = json.loads(delivery.payload)
        except ValueError:
            raise OruError("the payload is not JSON") from None
        control = control_id(self.name, delivery.id, delivery.bundle_id)
        text = build_oru(bundle, control=control, at=datetime.now(UTC), sender=self.sender,
                         receiver=self.receiver, version=self.settings.version,
                         processing_id=self.settings.processing_id)
        return control, text

    async def send(self, delivery: OutboundDelivery) -> Outcome:
        try:
            control, text = self.message(delivery)
        except OruError as exc:
            return Outcome.rejected(f"cannot build ORU^R01: {exc}")
        data = frame(text.encode("utf-8"))
        s = self.settings
        for _ in range(2):
            try:
                conn, reused = await self._acquire()
            except (OSError, TimeoutError) as exc:
                return Outcome.retry(f"cannot connect to {s.host}:{s.port}: "
                                     f"{type(exc).__name__}: {exc}")
            try:
                async with asyncio.timeout(s.ack_timeout_seconds):
                    ack = await conn.exchange(data, control)
            except (ConnectionError, BrokenPipeError, ssl.SSLError) as exc:
                await conn.close()
                if reused:
                    # The peer closed idle connections (hl7apy does after every message):
                    # drop the others too and resend on a fresh connection.
                    await self.aclose()
                    continue
                return Outcome.retry(f"connection lost before the ACK: {exc}")
            except TimeoutError:
                await conn.close()
                return Outcome.retry(f"no ACK for {control} within {s.ack_timeout_seconds:g} s")
            except (FramingError, Hl7Error) as exc:
                await conn.close()
                return Outcome.retry(f"unreadable answer from the receiver: {exc}")
            if conn.ignored:
                log.info("mllp ignored unsolicited or duplicate ACK frames",
                         destination=self.name, frames=conn.ignored)
                conn.ignored = 0
            await self._release(conn)
            return _outcome(ack)
        return Outcome.retry("the receiver closed two connections before the ACK")

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn, True
            await conn.close()
        s = self.settings
        async with asyncio.timeout(s.connect_timeout_seconds):
            reader, writer = await asyncio.open_connection(
                s.host, s.port, ssl=self._ssl, limit=65536)
        return _Connection(reader, writer, s.max_frame_bytes), False

    async def _release(self, conn: _Connection) -> None:
        if self.settings.connection == "persistent" and conn.usable:
            self._idle.append(conn)
        else:
            await conn.close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def _outcome(ack: Ack) -> Outcome:
    said = f"{ack.code}" + (f": {ack.text}" if ack.text else "")
    if ack.code in ("AA", "CA"):
        return Outcome.delivered(f"ACK {said}")
    if ack.code in ("AE", "CE"):
        return Outcome.retry(f"the receiver answered {said}")
    if ack.code in ("AR", "CR"):
        return Outcome.rejected(f"the receiver rejected the message: {said}")
    return Outcome.retry(f"the receiver answered an unknown MSA-1 {ack.code[:4]!r}")


def build_mllp_destination(name: str, settings: MllpDestinationSettings) -> MllpDestination:
    return MllpDestination(name, settings)


@hookimpl(trylast=True)
def hub_register_destinations(register: RegisterDestination) -> None:
    register(DestinationType("mllp", MllpDestinationSettings, build_mllp_destination))
