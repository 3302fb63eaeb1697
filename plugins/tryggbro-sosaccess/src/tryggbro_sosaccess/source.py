"""Source type `sos-access`: an asyncio TCP receiver for SOS Access v4 transmitters.

One XML document per connection, answered on the same socket, then closed. An alarm or a
ping is answered `status 0` only after `await intake.submit(raw)` returned, i.e. after
the commit that holds it; if it could not be stored the answer is `status 5` ("neither
treated nor distributed"), on which a transmitter resends or fails over. Nothing that is
refused (bad login, malformed or oversize XML, a missing mandatory element) is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub.domain.model import RawMessage
from hub.errors import ConfigError
from hub.logging import get_logger
from hub.tls import server_context
from tryggbro_sosaccess.protocol import (
    ALARM,
    CONTENT_TYPE,
    NEW_AUTH,
    PING,
    Document,
    DocumentReader,
    ProtocolError,
    Status,
    answer,
    dedup_key,
    key_part,
    redact,
)

log = get_logger("tryggbro_sosaccess.source")


class SosAccessSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(21090, ge=0, le=65535, description="TCP port (0: any free port)")
    credentials_env: str = Field(
        description="env var with the transmitters' logins: comma-separated "
        "transmittercode:authentication pairs")
    receiver_id: str | None = Field(
        None, description="when set, an alarm's <receiver> must equal it (else status 4)")
    max_document_bytes: int = Field(16_384, ge=512, le=1_048_576)
    read_timeout_seconds: float = Field(10.0, gt=0, le=300)
    max_connections: int = Field(64, ge=1, le=10_000)
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: enables TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file")

    @model_validator(mode="after")
    def _tls_pair(self) -> SosAccessSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


def parse_credentials(value: str) -> dict[str, bytes]:
    """`code:auth,code:auth` → {transmitter code: authentication}."""
    found: dict[str, bytes] = {}
    for item in value.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        code, sep, auth = item.partition(":")
        if not sep or not code.strip() or not auth.strip():
            raise ValueError("expected comma-separated transmittercode:authentication pairs")
        found[code.strip()] = auth.strip().encode("latin-1")
    if not found:
        raise ValueError("no transmittercode:authentication pairs")
    return found


class SosAccessSource:
    """A running receiver: `start()` binds, `stop()` closes; `port` is the bound port."""

    def __init__(self, name: str, settings: SosAccessSettings, intake: Any,
                 credentials: Mapping[str, bytes]) -> None:
        self.name = name
        self.settings = settings
        self.intake = intake
        self._credentials = dict(credentials)
        self._server: asyncio.Server | None = None
        self._active: set[asyncio.Task[Any]] = set()
        self.port: int | None = None

    async def start(self) -> None:
        s = self.settings
        self._server = await asyncio.start_server(
            self._accept, s.host, s.port, ssl=server_context(s.tls_cert_file, s.tls_key_file))
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("sos-access receiver listening", source=self.name, port=self.port,
                 tls=self.settings.tls_cert_file is not None)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._active:
            _, pending = await asyncio.wait(set(self._active), timeout=5)
            for task in pending:
                task.cancel()
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._active) >= self.settings.max_connections:
            log.warning("sos-access connection refused: too many open connections",
                        source=self.name, limit=self.settings.max_connections)
            writer.close()
            return
        assert task is not None
        self._active.add(task)
        try:
            reply = await self._serve(reader, writer)
            if reply is not None:
                await self._send(reader, writer, reply)
        except asyncio.CancelledError:
            log.warning("sos-access connection closed at shutdown", source=self.name)
        except Exception:
            log.exception("sos-access connection failed", source=self.name)
        finally:
            self._active.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=2)

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bytes | None:
        """Read one document and handle it; the answer to send, or None to just close."""
        doc_reader = DocumentReader(self.settings.max_document_bytes)
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.settings.read_timeout_seconds):
                while True:
                    data = await reader.read(4096)
                    if not data:
                        if not chunks:
                            return None  # connected and closed without sending: nothing to say
                        raise doc_reader.error(Status.INVALID_XML,
                                               "the connection closed before the document "
                                               "was complete")
                    chunks.append(data)
                    if doc_reader.feed(data):
                        break
            doc = doc_reader.document()
        except TimeoutError:
            if not chunks:
                return None
            return self._refuse(doc_reader.error(
                Status.INVALID_XML, f"the document was not complete within "
                f"{self.settings.read_timeout_seconds:g} s"))
        except ProtocolError as exc:
            return self._refuse(exc)
        received_at = datetime.now(UTC)
        status, info = await self._handle(doc, b"".join(chunks), received_at, writer)
        return answer(doc.kind, status, info, doc.reference, received_at)

    def _refuse(self, exc: ProtocolError) -> bytes:
        log.warning("sos-access document refused", source=self.name, status=int(exc.status),
                    document=exc.kind or "(unknown)")
        return answer(exc.kind, exc.status, exc.info, exc.reference, datetime.now(UTC))

    async def _send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    data: bytes) -> None:
        """Answer, then wait (briefly, bounded) for the sender to close: closing with
        unread input would reset the connection and could destroy the answer in flight."""
        writer.write(data)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.drain(), timeout=self.settings.read_timeout_seconds)
            async with asyncio.timeout(min(self.settings.read_timeout_seconds, 2.0)):
                discarded = 0
                while (chunk := await reader.read(65536)) and discarded < 1_048_576:
                    discarded += len(chunk)

    def _authorised(self, doc: Document) -> bool:
        given = (doc.get("authentication") or "").encode("latin-1", errors="replace")
        expected = self._credentials.get(doc.transmitter_code)
        # Compare even for an unknown transmitter, so timing does not tell which exist.
        ok = hmac.compare_digest(given, expected if expected is not None else b"\0" * 15)
        if doc.kind == ALARM and self.settings.receiver_id is not None:
            ok &= doc.get("receiver") == self.settings.receiver_id
        return ok and expected is not None

    async def _handle(self, doc: Document, body: bytes, received_at: datetime,
                      writer: asyncio.StreamWriter) -> tuple[Status, str]:
        if not self._authorised(doc):
            log.warning("sos-access login refused", source=self.name, document=doc.kind)
            return Status.NOT_AUTHORIZED, ("wrong combination of transmitter, receiver and "
                                           "authentication")
        if doc.kind == NEW_AUTH:
            return Status.SYSTEM_ERROR, "this receiver does not issue new authentication"
        if doc.kind not in (ALARM, PING):  # pragma: no cover - the reader allows no other
            return Status.INVALID_XML, f"<{doc.kind}> is not handled"
        # Without a sender's key, every document is its own message (never a resend).
        key = dedup_key(doc, body) or f"{'alarm' if doc.kind == ALARM else 'ping'}:" \
            f"{key_part(doc.transmitter_code)}:rx:{uuid.uuid4()}"
        peer = writer.get_extra_info("peername")
        transport = {"protocol": "sos-access-v4", "document": doc.kind,
                     "remote": str(peer[0]) if isinstance(peer, tuple) else ""}
        raw = RawMessage(source=self.name, dedup_key=key, content_type=CONTENT_TYPE,
                         body=redact(body), received_at=received_at, transport=transport)
        try:
            result = await self.intake.submit(raw)
        except Exception as exc:
            log.error("could not journal an sos-access document; answered status 5",
                      source=self.name, document=doc.kind, error=type(exc).__name__)
            return Status.NOT_TREATED, "not stored: the message is NOT accepted, send it again"
        log.info("sos-access document accepted", source=self.name, document=doc.kind,
                 message_id=result.id, duplicate=result.duplicate)
        return Status.OK, "OK"


def build_sos_access_source(name: str, settings: SosAccessSettings,
                            intake: Any) -> SosAccessSource:
    value = os.environ.get(settings.credentials_env)
    if not value:
        raise ConfigError(f"sources.{name}.credentials_env: environment variable "
                          f"{settings.credentials_env} is not set")
    try:
        credentials = parse_credentials(value)
    except ValueError as exc:
        raise ConfigError(f"sources.{name}.credentials_env ({settings.credentials_env}): "
                          f"{exc}") from None
    for key in ("tls_cert_file", "tls_key_file"):
        path = getattr(settings, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"sources.{name}.{key}: {path} is not a file")
    return SosAccessSource(name, settings, intake, credentials)
