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
import logging
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

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
    Decoded,
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
_level_check = logging.getLogger("hub.sources.mllp")  # the stdlib logger under `log`

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
        self._connections: set[_Connection] = set()
        self._closed: asyncio.Event | None = None  # set when the last connection closed
        self._tasks: set[asyncio.Task[Any]] = set()  # the rare messages not on the fast path
        self._per_ip: dict[str, int] = {}
        self._codes = {t.split("^")[0] for t in settings.message_types}
        self._types = set(settings.message_types)
        self.stopping = False
        self.port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        context = server_context(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
        # A connection is counted against the caps only once its TLS handshake is done
        # (the protocol's connection_made): the handshake gets frame_timeout_seconds
        # (asyncio's default is 60 s).
        tls: dict[str, Any] = {} if context is None else {
            "ssl": context, "ssl_handshake_timeout": s.frame_timeout_seconds}
        self.stopping = False
        self._closed = asyncio.Event()
        self._closed.set()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            # backlog as uvicorn's: asyncio's default (100) drops SYNs in a connection
            # burst, and a real sender's retry then waits a second or more.
            lambda: _Connection(self), s.host, s.port, backlog=2048, **tls)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mllp listener started", source=self.name, port=self.port,
                 tls=self.settings.tls_cert_file is not None)

    async def stop(self) -> None:
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        # Connections waiting between frames are closed at once; a message being read or
        # committed gets its ACK first (bounded), then its connection closes itself.
        for connection in list(self._connections):
            connection.close_if_idle()
        assert self._closed is not None
        if not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout=5)
        if not self._closed.is_set():
            for connection in list(self._connections):
                log.info("mllp connection closed at shutdown", source=self.name,
                         remote=connection.ip)
                connection.abort()
            for task in self._tasks:
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout=2)
        await self._server.wait_closed()
        self._server = None

    # -- connections --------------------------------------------------------------------

    def _admit_connection(self, connection: _Connection) -> bool:
        """Count a new connection against the caps; False: refused (the caller closes)."""
        ip = connection.ip
        if len(self._connections) >= self.settings.max_connections:
            log.warning("mllp connection refused: too many open connections",
                        source=self.name, limit=self.settings.max_connections)
            return False
        if self._per_ip.get(ip, 0) >= self.settings.max_connections_per_ip:
            log.warning("mllp connection refused: too many open connections from one "
                        "address", source=self.name, remote=ip,
                        limit=self.settings.max_connections_per_ip)
            return False
        self._connections.add(connection)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        assert self._closed is not None
        self._closed.clear()
        return True

    def _release_connection(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        ip = connection.ip
        left = self._per_ip.get(ip, 1) - 1
        if left:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)
        if not self._connections and self._closed is not None:
            self._closed.set()

    def _spawn(self, connection: _Connection, handling: Any) -> None:
        """Finish a message in a task (schema check, reused control id: off the fast
        path); its answer goes back to the connection when the task is done."""
        task = asyncio.get_running_loop().create_task(handling)
        self._tasks.add(task)
        task.add_done_callback(connection.task_done)

    # -- one message --------------------------------------------------------------------

    def _start_message(self, data: bytes, connection: _Connection) -> bytes | object | None:
        """Handle one frame as far as it goes without waiting: the answer to send at once
        (a refusal; None: the sender asked for none), or `_PENDING` when the answer
        comes later through `connection.finish` (after the commit).

        Raises ConnectionAbortedError when the message cannot be committed: the caller
        closes the connection without an ACK.
        """
        ip = connection.ip
        if self.settings.validation == "schema":
            self._spawn(connection, self._handle(data, ip))
            return _PENDING
        received_at = datetime.now(UTC)
        try:
            decoded = self._check(data)
        except _Refused as refused:
            return self._refuse(refused, received_at, ip)
        header = decoded.header
        raw, answer = self._entry(data, header, decoded.codec, received_at, ip)
        try:
            future = self.intake.submit_nowait(raw)
        except Exception as exc:
            self._not_stored(header, ip, exc)
        connection.committing = (raw, answer, header, received_at)
        future.add_done_callback(connection.committed)
        return _PENDING

    def _committed(self, connection: _Connection,
                   future: asyncio.Future[IntakeResult]) -> None:
        """The commit holding a fast-path message returned: answer it."""
        committing = connection.committing
        assert committing is not None
        connection.committing = None
        raw, answer, header, received_at = committing
        exc = future.exception()
        if exc is not None:
            with contextlib.suppress(ConnectionAbortedError):
                self._not_stored(header, connection.ip, exc)  # logs it
            connection.lost_unstored()
            return
        result = future.result()
        if result.duplicate and not result.same_body:
            self._spawn(connection, self._answer(raw, answer, header, result, received_at,
                                                 connection.ip))
            return
        connection.finish(self._settled(answer, header, result))

    async def _handle(self, data: bytes, ip: str) -> bytes | None:
        """Handle one frame in a task; the ACK bytes to send (None: the sender asked for
        none). The fast path (`_start_message`) does the same without a task.

        Raises ConnectionAbortedError when the message could not be committed: the
        caller closes the connection without an ACK.
        """
        received_at = datetime.now(UTC)
        try:
            header, codec = await self._admit(data)
        except _Refused as refused:
            return self._refuse(refused, received_at, ip)
        raw, answer = self._entry(data, header, codec, received_at, ip)
        result = await self._submit(raw, header, ip)
        return await self._answer(raw, answer, header, result, received_at, ip)

    def _entry(self, data: bytes, header: Header, codec: str, received_at: datetime,
               ip: str) -> tuple[RawMessage, bytes]:
        """The journal row for an accepted message, with the positive ACK stored in it."""
        ack = build_ack(header, ack_code(header, ACCEPT), at=received_at)
        answer = ack.encode(codec, errors="replace")
        raw = RawMessage(
            source=self.name, dedup_key=header.dedup_key,
            content_type=f"{CONTENT_TYPE}; charset={codec}", body=data,
            received_at=received_at,
            transport={"protocol": "mllp", "remote": ip, "charset": codec,
                       "message_type": header.message_type, "version": header.version},
            answer=answer)
        return raw, answer

    async def _answer(self, raw: RawMessage, answer: bytes, header: Header,
                      result: IntakeResult, received_at: datetime, ip: str) -> bytes | None:
        if result.duplicate and not result.same_body:
            reused = await self._reused_control_id(raw, result.id, header, ip)
            if isinstance(reused, _Refused):
                return self._refuse(reused, received_at, ip)
            result = reused
        return self._settled(answer, header, result)

    def _settled(self, answer: bytes, header: Header, result: IntakeResult) -> bytes | None:
        """The answer once the message's journal row is final."""
        if result.duplicate:
            log.info("mllp resend answered with the stored ACK", source=self.name,
                     message_id=result.id, message_type=header.message_type)
            if result.answer is not None:
                return result.answer if self._wanted(header, ACCEPT) else None
        elif _level_check.isEnabledFor(logging.DEBUG):
            # Checked here: a filtered structlog call still costs ~5 µs per message.
            log.debug("mllp message accepted", source=self.name, message_id=result.id,
                      message_type=header.message_type)
        return answer if self._wanted(header, ACCEPT) else None

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
            self._not_stored(header, ip, exc)
        return result

    def _not_stored(self, header: Header, ip: str, exc: BaseException) -> NoReturn:
        log.error("could not journal an HL7 message; closing the connection without "
                  "an ACK so the sender resends", source=self.name, remote=ip,
                  message_type=header.message_type, error=type(exc).__name__)
        raise ConnectionAbortedError("not stored") from None

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
        """Decode and check a frame, with the schema check when configured; raises
        `_Refused` with what the ACK must say."""
        decoded = self._check(data)
        if self.settings.validation == "schema":
            from hub.hl7v2 import schema

            try:
                await asyncio.to_thread(schema.check, decoded.text)
            except Hl7Error as exc:
                raise _Refused(decoded.header, REJECT if exc.reject else ERROR,
                               exc) from None
        return decoded.header, decoded.codec

    def _check(self, data: bytes) -> Decoded:
        """Decode a frame and check its MSH against what this source takes (no schema
        check); raises `_Refused` with what the ACK must say."""
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
        return decoded

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


_PENDING = object()  # the answer comes later, through `_Connection.finish`
# Frames read ahead of the one being handled: past this, reading pauses (TCP flow control
# then holds the sender back), as the one-read-at-a-time stream server did implicitly.
_QUEUED_FRAMES = 16


class _Connection(asyncio.Protocol):
    """One MLLP connection on a plain asyncio protocol.

    Bytes go straight from `data_received` into the incremental frame splitter; the
    frames are handled one at a time, in order (one outstanding message keeps the
    sender's order), and each ACK is written from the commit's callback — no stream
    objects, task or timeout object per message. One timer per connection enforces the
    idle, frame and ACK-write deadlines: deadlines are plain numbers updated per frame,
    and the timer, when it fires, either closes the connection or re-arms itself for
    the deadline that now applies.
    """

    def __init__(self, source: MllpSource) -> None:
        self.source = source
        self.settings = source.settings
        self.frames = FrameReader(source.settings.max_frame_bytes)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.queued: deque[bytes] = deque()
        self.queued_bytes = 0
        self.busy = False  # a message is being committed or answered
        self.committing: tuple[RawMessage, bytes, Header, datetime] | None = None
        self.counted = False  # holds a slot under max_connections / max_connections_per_ip
        self.lost = False
        self.tls = False
        self.closing = False
        self.eof = False
        self.reading_paused = False
        self.writing_paused = False
        self.idle_deadline = 0.0
        self.frame_deadline = 0.0
        self.write_deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    # -- transport callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if isinstance(peer, tuple) else ""
        if self.source.stopping or not self.source._admit_connection(self):
            self.closing = True
            transport.close()
            return
        self.counted = True
        self.tls = transport.get_extra_info("sslcontext") is not None
        # Between frames the idle deadline counts from the connection or the last frame,
        # not from the last byte: CR/LF trickled between frames do not keep a slot.
        self.idle_deadline = self.loop.time() + self.settings.idle_timeout_seconds
        self._arm(self.idle_deadline)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        frames = self.frames
        was_mid = frames.mid_frame
        try:
            complete = frames.feed(data)
        except FramingError as exc:
            log.warning("mllp framing error; closing the connection",
                        source=self.source.name, remote=self.ip, reason=str(exc))
            self.close()
            return
        if frames.mid_frame and (not was_mid or complete):
            # The frame deadline counts from the start block: bytes trickled into the
            # frame do not extend it.
            self.frame_deadline = self.loop.time() + self.settings.frame_timeout_seconds
            self._arm(self.frame_deadline)
        if complete:
            for message in complete:
                self.queued.append(message)
                self.queued_bytes += len(message)
            if not self.busy:
                self._pump()
            if self.busy and not self.reading_paused and not self.closing and (
                    len(self.queued) >= _QUEUED_FRAMES
                    or self.queued_bytes >= self.settings.max_frame_bytes):
                self.reading_paused = True
                self._transport().pause_reading()
        elif self.source.stopping:
            self.close_if_idle()

    def eof_received(self) -> bool:
        error = self.frames.eof_error()
        if error is not None:
            log.warning("mllp framing error; closing the connection",
                        source=self.source.name, remote=self.ip, reason=str(error))
            self.close()
            return False
        self.eof = True
        # A sender that half-closed after its last frame still gets the ACKs it waits
        # for: the connection closes once they are written (TLS has no half-close).
        if (self.busy or self.queued) and not self.tls:
            return True
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.closing:
            log.info("mllp connection lost", source=self.source.name, remote=self.ip,
                     error=type(exc).__name__)
        self.closing = True
        self.lost = True
        self.queued.clear()
        self._cancel_timer()
        self._release()

    def _release(self) -> None:
        """Give the slot back once the connection is gone and its message in flight, if
        any, is committed or failed (shutdown waits for that)."""
        if self.counted and self.lost and not self.busy:
            self.counted = False
            self.source._release_connection(self)

    def pause_writing(self) -> None:
        # The ACKs are not read: no further message is handled until they are, and a
        # sender that never reads them must not hold the slot.
        self.writing_paused = True
        self.write_deadline = self.loop.time() + self.settings.frame_timeout_seconds
        self._arm(self.write_deadline)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.busy and not self.closing:
            self._pump()

    # -- messages -----------------------------------------------------------------------

    def _pump(self) -> None:
        """Handle the queued frames in order until one has to wait for its commit."""
        source = self.source
        while self.queued and not self.busy and not self.writing_paused \
                and not self.closing:
            message = self.queued.popleft()
            self.queued_bytes -= len(message)
            try:
                answer = source._start_message(message, self)
            except ConnectionAbortedError:
                self.lost_unstored()
                return
            except Exception:
                log.exception("mllp connection failed", source=source.name, remote=self.ip)
                self.close()
                return
            if answer is _PENDING:
                self.busy = True
                return
            if answer is not None:
                assert isinstance(answer, bytes)
                self._transport().write(frame(answer))
        if self.busy or self.closing:
            return
        if self.reading_paused:
            self.reading_paused = False
            self._transport().resume_reading()
        if not self.queued:
            self.idle_deadline = self.loop.time() + self.settings.idle_timeout_seconds
            self._arm(self.idle_deadline)
            if self.eof or source.stopping:
                self.close_if_idle()

    def committed(self, future: asyncio.Future[IntakeResult]) -> None:
        try:
            self.source._committed(self, future)
        except Exception:
            log.exception("mllp connection failed", source=self.source.name, remote=self.ip)
            self.busy = False
            self.close()
            self._release()

    def finish(self, answer: bytes | None) -> None:
        """The answer to the message in flight (None: none to send)."""
        self.busy = False
        if self.closing:
            self._release()
            return
        if answer is not None:
            self._transport().write(frame(answer))
        self._pump()

    def task_done(self, task: asyncio.Task[Any]) -> None:
        self.source._tasks.discard(task)
        if task.cancelled():
            self.busy = False
            self.close()
            self._release()
            return
        exc = task.exception()
        if isinstance(exc, ConnectionAbortedError):
            self.lost_unstored()
        elif exc is not None:
            log.error("mllp connection failed", source=self.source.name, remote=self.ip,
                      exc_info=exc)
            self.busy = False
            self.close()
            self._release()
        else:
            self.finish(task.result())

    def lost_unstored(self) -> None:
        """The message could not be committed (already logged): close without an ACK;
        every MLLP sender reads that as "not delivered, resend"."""
        self.busy = False
        log.info("mllp connection lost", source=self.source.name, remote=self.ip,
                 error=ConnectionAbortedError.__name__)
        self.close()
        self._release()

    # -- closing and deadlines ----------------------------------------------------------

    def close_if_idle(self) -> None:
        """Close at shutdown (or after the sender's EOF) unless a message is being read,
        committed or answered; such a connection closes itself once it is answered."""
        if self.busy or self.queued or self.frames.mid_frame or self.closing:
            return
        if self.source.stopping and not self.eof:
            log.info("mllp connection closed at shutdown", source=self.source.name,
                     remote=self.ip)
        self.close()

    def close(self) -> None:
        self.closing = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    def _arm(self, deadline: float) -> None:
        """Make the timer fire no later than `deadline` (it is moved only earlier: when it
        fires early, it re-arms itself for the deadline then in force)."""
        if self.timer is not None:
            if self.timer_at <= deadline:
                return
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        if self.closing:
            return
        s = self.settings
        now = self.loop.time()
        if self.writing_paused:
            if now >= self.write_deadline:
                log.warning("mllp sender does not read its ACKs; closing the connection",
                            source=self.source.name, remote=self.ip,
                            frame_timeout_seconds=s.frame_timeout_seconds)
                self.abort()  # close() would wait for the unread ACKs to be flushed
                return
            self._arm(self.write_deadline)
        elif self.busy or self.queued:
            # A message is being committed: reads are not timed meanwhile (the
            # stream server did not read while it waited for a commit either).
            self._arm(now + s.frame_timeout_seconds)
        elif self.frames.mid_frame:
            if now >= self.frame_deadline:
                log.warning("mllp frame not complete in time; closing the connection",
                            source=self.source.name, remote=self.ip,
                            frame_timeout_seconds=s.frame_timeout_seconds,
                            received_bytes=self.frames.buffered)
                self.close()
                return
            self._arm(self.frame_deadline)
        else:
            if now >= self.idle_deadline:
                log.info("mllp connection idle; closing it", source=self.source.name,
                         remote=self.ip, idle_timeout_seconds=s.idle_timeout_seconds)
                self.close()
                return
            self._arm(self.idle_deadline)


def build_mllp_source(name: str, settings: MllpSourceSettings, intake: Any) -> MllpSource:
    for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(settings, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"sources.{name}.{key}: {path} is not a file")
    return MllpSource(name, settings, intake)


@hookimpl(trylast=True)
def hub_register_sources(register: RegisterSource) -> None:
    register(SourceType("mllp", MllpSourceSettings, build_mllp_source))
