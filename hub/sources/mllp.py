"""Source type `mllp`: HL7 v2 over MLLP (asyncio TCP, optional TLS).

Per connection, frames are handled one at a time, in order (one outstanding message
per connection keeps each sender's order). For each frame:

1. decode it by MSH-18 and read only the MSH (`hub.hl7v2.wire`, microseconds);
2. refuse what this source does not take — AR/CR with HL7 table 0357 code 200 (message
   type), 201 (trigger event), 202 (processing id), or the decoder's reason — nothing
   is stored;
3. optionally check it against the HL7 schema with hl7apy (`validation = "schema"`) —
   AE/CE with hl7apy's reason;
4. build the positive ACK (AA, or CA in enhanced mode), journal the message *with that
   ACK* (`await intake.submit`, returns after the group commit), and only then send it.
   A resend (same MSH-3|MSH-4|MSH-10, same bytes) gets the stored ACK byte for byte and
   creates nothing; the same key with a different body is refused AR/CR code 205 and
   logged as an anomaly.

If the commit fails the connection is closed without an ACK: every MLLP sender reads a
missing ACK as "not delivered, resend", whereas many treat AE as a content error for a
human and do not resend (docs/mllp.md). Broken framing closes the connection after a
log line. Logs never carry message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub import hookimpl
from hub.contracts import RegisterSource, SourceType
from hub.domain.model import RawMessage
from hub.errors import ConfigError
from hub.hl7v2.framing import FrameReader, FramingError, frame
from hub.hl7v2.wire import (
    ACCEPT,
    CHARSETS,
    ERROR,
    MAX_DEDUP_KEY,
    REJECT,
    Header,
    Hl7Error,
    ack_code,
    ack_wanted,
    build_ack,
    decode,
    parse_header,
    without_msh7,
)
from hub.logging import get_logger
from hub.store.repository import IntakeResult
from hub.tls import server_context

log = get_logger("hub.sources.mllp")

CONTENT_TYPE = "application/hl7-v2"
DEFAULT_MESSAGE_TYPES = [
    "ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A08", "ADT^A11", "ADT^A13",
    "ADT^A28", "ADT^A31", "ADT^A40", "ORU^R01",
]


class MllpSourceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(2575, ge=0, le=65535, description="TCP port (0: any free port)")
    max_frame_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    idle_timeout_seconds: float = Field(
        300.0, gt=0, description="close a connection when no frame starts this long after "
        "it opened or after its last frame (CR/LF between frames do not count as activity)")
    frame_timeout_seconds: float = Field(
        60.0, gt=0, description="a frame must be complete this long after its start block")
    max_connections: int = Field(256, ge=1, le=100_000)
    max_connections_per_ip: int = Field(32, ge=1, le=100_000)
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: enables TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA(s): when set, senders must present a client certificate")
    default_charset: str = Field(
        "UNICODE UTF-8", description="HL7 table 0211 name used when MSH-18 is empty")
    message_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MESSAGE_TYPES),
        description="accepted MSH-9 as CODE^EVENT (CODE^* for every event)")
    processing_ids: list[str] = Field(default_factory=lambda: ["P"])
    validation: Literal["none", "schema"] = Field(
        "none", description="schema: check each message with hl7apy before storing it")
    accept_acks: Literal["always", "msh15"] = Field(
        "always", description="always: answer every message (CA/CE/CR in enhanced mode); "
        "msh15: send the accept ACK only as MSH-15 asks (NE never, ER, SU)")
    control_id_reuse: Literal["accept", "reject"] = Field(
        "accept", description="a different message under a stored MSH-3|4|10: accept: "
        "journal it as a new message (logged as an anomaly); reject: AR/CR code 205")

    @field_validator("default_charset")
    @classmethod
    def _known_charset(cls, value: str) -> str:
        if value.upper() not in CHARSETS:
            raise ValueError(f"not an HL7 table 0211 set this hub decodes "
                             f"(one of: {', '.join(CHARSETS)})")
        return value.upper()

    @field_validator("message_types")
    @classmethod
    def _types_shape(cls, value: list[str]) -> list[str]:
        for item in value:
            code, sep, event = item.partition("^")
            if not sep or not code or not event:
                raise ValueError(f"{item!r}: write message types as CODE^EVENT, e.g. ADT^A01")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> MllpSourceSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self


class _Refused(Exception):
    """The message is answered without being stored."""

    def __init__(self, header: Header | None, outcome: str, error: Hl7Error) -> None:
        super().__init__(error.text)
        self.header = header
        self.outcome = outcome
        self.error = error


class MllpSource:
    """A running MLLP listener: `start()` binds, `stop()` closes; `port` is the bound port."""

    def __init__(self, name: str, settings: MllpSourceSettings, intake: Any) -> None:
        self.name = name
        self.settings = settings
        self.intake = intake
        self.codec = CHARSETS[settings.default_charset]
        self._server: asyncio.Server | None = None
        self._active: set[asyncio.Task[Any]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()  # between frames: safe to cancel
        self._per_ip: dict[str, int] = {}
        self._codes = {t.split("^")[0] for t in settings.message_types}
        self._types = set(settings.message_types)
        self.port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        context = server_context(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
        # A connection is counted against the caps only once its TLS handshake is done:
        # the handshake gets frame_timeout_seconds (asyncio's default is 60 s).
        tls: dict[str, Any] = {} if context is None else {
            "ssl": context, "ssl_handshake_timeout": s.frame_timeout_seconds}
        self._server = await asyncio.start_server(
            # backlog as uvicorn's: asyncio's default (100) drops SYNs in a connection
            # burst, and a real sender's retry then waits a second or more.
            self._accept, s.host, s.port, limit=65536, backlog=2048, **tls)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mllp listener started", source=self.name, port=self.port,
                 tls=self.settings.tls_cert_file is not None)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Connections waiting between frames are closed at once; a message being read or
        # committed gets its ACK first (bounded).
        for task in self._waiting:
            task.cancel()
        if self._active:
            _, pending = await asyncio.wait(set(self._active), timeout=5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        await self._server.wait_closed()
        self._server = None

    # -- connections --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else ""
        task = asyncio.current_task()
        assert task is not None
        if len(self._active) >= self.settings.max_connections:
            log.warning("mllp connection refused: too many open connections",
                        source=self.name, limit=self.settings.max_connections)
            await _close(writer)
            return
        if self._per_ip.get(ip, 0) >= self.settings.max_connections_per_ip:
            log.warning("mllp connection refused: too many open connections from one "
                        "address", source=self.name, remote=ip,
                        limit=self.settings.max_connections_per_ip)
            await _close(writer)
            return
        self._active.add(task)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        try:
            await self._serve(reader, writer, ip)
        except asyncio.CancelledError:
            log.info("mllp connection closed at shutdown", source=self.name, remote=ip)
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("mllp connection lost", source=self.name, remote=ip,
                     error=type(exc).__name__)
        except Exception:
            log.exception("mllp connection failed", source=self.name, remote=ip)
        finally:
            self._active.discard(task)
            left = self._per_ip.get(ip, 1) - 1
            if left:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     ip: str) -> None:
        s = self.settings
        frames = FrameReader(s.max_frame_bytes)
        loop = asyncio.get_running_loop()
        frame_deadline = 0.0
        # Between frames the idle deadline counts from the connection or the last frame,
        # not from the last byte: CR/LF trickled between frames do not keep a slot.
        idle_deadline = loop.time() + s.idle_timeout_seconds
        task = asyncio.current_task()
        assert task is not None
        while True:
            if frames.mid_frame:
                timeout = frame_deadline - loop.time()
            else:
                timeout = idle_deadline - loop.time()
                self._waiting.add(task)
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    data = await reader.read(65536)
            except TimeoutError:
                if frames.mid_frame:
                    log.warning("mllp frame not complete in time; closing the connection",
                                source=self.name, remote=ip,
                                frame_timeout_seconds=s.frame_timeout_seconds,
                                received_bytes=frames.buffered)
                else:
                    log.info("mllp connection idle; closing it", source=self.name,
                             remote=ip, idle_timeout_seconds=s.idle_timeout_seconds)
                return
            finally:
                self._waiting.discard(task)
            if not data:
                error = frames.eof_error()
                if error is not None:
                    log.warning("mllp framing error; closing the connection",
                                source=self.name, remote=ip, reason=str(error))
                return
            was_mid = frames.mid_frame
            try:
                complete = frames.feed(data)
            except FramingError as exc:
                log.warning("mllp framing error; closing the connection",
                            source=self.name, remote=ip, reason=str(exc))
                return
            for message in complete:
                answer = await self._handle(message, ip)
                if answer is None:
                    continue
                writer.write(frame(answer))
                if not writer.transport.get_write_buffer_size():
                    # The socket took the whole ACK (the usual case): nothing to wait for,
                    # and no timeout object or timer per message. A lost connection shows
                    # at the next read.
                    continue
                try:
                    # A sender that does not read its ACKs must not hold the slot.
                    async with asyncio.timeout(s.frame_timeout_seconds):
                        await writer.drain()
                except TimeoutError:
                    log.warning("mllp sender does not read its ACKs; closing the "
                                "connection", source=self.name, remote=ip,
                                frame_timeout_seconds=s.frame_timeout_seconds)
                    return
            if complete:
                idle_deadline = loop.time() + s.idle_timeout_seconds
            # The frame deadline counts from the start block: bytes trickled into the
            # frame do not extend it.
            if frames.mid_frame and (not was_mid or complete):
                frame_deadline = loop.time() + s.frame_timeout_seconds

    # -- one message --------------------------------------------------------------------

    async def _handle(self, data: bytes, ip: str) -> bytes | None:
        """Handle one frame; the ACK bytes to send (None: the sender asked for none).

        Raises ConnectionAbortedError when the message could not be committed: the
        caller closes the connection without an ACK.
        """
        received_at = datetime.now(UTC)
        try:
            header, codec = await self._admit(data)
        except _Refused as refused:
            return self._refuse(refused, received_at, ip)
        outcome = ACCEPT
        ack = build_ack(header, ack_code(header, outcome), at=received_at)
        answer = ack.encode(codec, errors="replace")
        raw = RawMessage(
            source=self.name, dedup_key=header.dedup_key,
            content_type=f"{CONTENT_TYPE}; charset={codec}", body=data,
            received_at=received_at,
            transport={"protocol": "mllp", "remote": ip, "charset": codec,
                       "message_type": header.message_type, "version": header.version},
            answer=answer)
        result = await self._submit(raw, header, ip)
        if result.duplicate and not result.same_body:
            reused = await self._reused_control_id(raw, result.id, header, ip)
            if isinstance(reused, _Refused):
                return self._refuse(reused, received_at, ip)
            result = reused
        if result.duplicate:
            log.info("mllp resend answered with the stored ACK", source=self.name,
                     message_id=result.id, message_type=header.message_type)
            if result.answer is not None:
                return result.answer if self._wanted(header, outcome) else None
        else:
            log.debug("mllp message accepted", source=self.name, message_id=result.id,
                      message_type=header.message_type)
        return answer if self._wanted(header, outcome) else None

    def _wanted(self, header: Header, outcome: str) -> bool:
        """Whether to send the accept ACK. MLLP senders wait for an answer on the socket
        whatever MSH-15 says (the Microsoft samples send NE and then block), and an
        unneeded ACK is discarded, whereas a missing one stalls the sender: by default
        every message is answered; `accept_acks = "msh15"` follows table 0155."""
        return self.settings.accept_acks == "always" or ack_wanted(header, outcome)

    async def _submit(self, raw: RawMessage, header: Header, ip: str) -> IntakeResult:
        try:
            result: IntakeResult = await self.intake.submit(raw)
        except Exception as exc:
            log.error("could not journal an HL7 message; closing the connection without "
                      "an ACK so the sender resends", source=self.name, remote=ip,
                      message_type=header.message_type, error=type(exc).__name__)
            raise ConnectionAbortedError("not stored") from None
        return result

    async def _reused_control_id(self, raw: RawMessage, stored_id: int, header: Header,
                                 ip: str) -> IntakeResult | _Refused:
        """The stored message under this MSH-3|4|10 has other bytes.

        A resend rebuilt with a fresh MSH-7 timestamp is the same message: it gets the
        stored ACK. Anything else is a different message reusing the control id (senders
        do after a restart, and copied templates do). By default it is journaled as a new
        message under the key + a digest of its content, so nothing a sender was told is
        stored can be refused later; `control_id_reuse = "reject"` answers AR/CR 205.
        """
        stored = await asyncio.to_thread(self.intake.repo.body_and_answer, stored_id)
        if stored is not None and without_msh7(stored[0]) == without_msh7(raw.body):
            log.info("mllp resend with a new MSH-7 answered with the stored ACK",
                     source=self.name, message_id=stored_id, message_type=header.message_type)
            return IntakeResult(stored_id, duplicate=True, same_body=True, answer=stored[1])
        if self.settings.control_id_reuse == "reject":
            log.warning("anomaly: a different message reuses a stored dedup key "
                        "(MSH-3|MSH-4|MSH-10); refused", source=self.name, remote=ip,
                        message_id=stored_id, message_type=header.message_type)
            return _Refused(header, REJECT, Hl7Error(
                "MSH-10 was already used by this sender (MSH-3/MSH-4) for a different "
                "message; send a new message control id", code="205", location="MSH-10"))
        digest = hashlib.sha256(without_msh7(raw.body)).hexdigest()[:16]
        key = f"{raw.dedup_key}#{digest}"
        if len(key) > MAX_DEDUP_KEY:
            key = "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
        log.warning("anomaly: a different message reuses a stored dedup key "
                    "(MSH-3|MSH-4|MSH-10); journaled as a new message", source=self.name,
                    remote=ip, stored_message_id=stored_id, message_type=header.message_type)
        result = await self._submit(replace(raw, dedup_key=key), header, ip)
        # The digest names the content: a copy under the new key is a resend of it.
        return replace(result, same_body=True)

    async def _admit(self, data: bytes) -> tuple[Header, str]:
        """Decode and check a frame; raises `_Refused` with what the ACK must say."""
        try:
            decoded = decode(data, default_charset=self.codec)
        except Hl7Error as exc:
            raise _Refused(_best_effort_header(data), REJECT if exc.reject else ERROR,
                           exc) from None
        header = decoded.header
        s = self.settings
        if header.message_type not in self._types and \
                f"{header.message_code}^*" not in self._types:
            accepted = ", ".join(s.message_types)
            if header.message_code not in self._codes:
                error = Hl7Error(f"message type {header.message_code[:10]} is not accepted "
                                 f"here (accepted: {accepted})", code="200",
                                 location="MSH-9")
            else:
                error = Hl7Error(f"event {header.message_type[:20]} is not accepted here "
                                 f"(accepted: {accepted})", code="201", location="MSH-9")
            raise _Refused(header, REJECT, error)
        if header.processing_id not in s.processing_ids:
            error = Hl7Error(f"processing id {header.processing_id[:3] or '(empty)'} is not "
                             f"accepted here (accepted: {', '.join(s.processing_ids)})",
                             code="202", location="MSH-11")
            raise _Refused(header, REJECT, error)
        if s.validation == "schema":
            from hub.hl7v2 import schema

            try:
                await asyncio.to_thread(schema.check, decoded.text)
            except Hl7Error as exc:
                raise _Refused(header, REJECT if exc.reject else ERROR, exc) from None
        return header, decoded.codec

    def _refuse(self, refused: _Refused, received_at: datetime, ip: str) -> bytes | None:
        header, error = refused.header, refused.error
        # hl7apy's reasons may quote a value: logged by kind only (the ACK has the text).
        kind = getattr(error, "kind", None)
        reason = f"schema check failed ({kind}); the reason is in the ACK" if kind \
            else error.text
        log.warning("hl7 message refused", source=self.name, remote=ip,
                    ack=ack_code(header, refused.outcome), code=error.code,
                    location=error.location, reason=reason)
        if header is not None and not self._wanted(header, refused.outcome):
            return None
        ack = build_ack(header, ack_code(header, refused.outcome), at=received_at,
                        text=error.text, error=error)
        codec = CHARSETS.get(header.charset.upper(), self.codec) if header else "ascii"
        return ack.encode(codec, errors="replace")


def _best_effort_header(data: bytes) -> Header | None:
    """The MSH read as Latin-1, for an ACK that echoes MSH-10 when the rest failed."""
    try:
        text = data.lstrip(b"\xef\xbb\xbf\r\n").decode("iso-8859-1")
        return parse_header(text.replace("\r\n", "\r").replace("\n", "\r"))
    except Hl7Error:
        return None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), timeout=2)


def build_mllp_source(name: str, settings: MllpSourceSettings, intake: Any) -> MllpSource:
    for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(settings, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"sources.{name}.{key}: {path} is not a file")
    return MllpSource(name, settings, intake)


@hookimpl(trylast=True)
def hub_register_sources(register: RegisterSource) -> None:
    register(SourceType("mllp", MllpSourceSettings, build_mllp_source))
