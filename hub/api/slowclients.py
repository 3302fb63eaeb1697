"""Deadlines and connection caps for the HTTP listener (slowloris defence).

uvicorn has no deadline for receiving a request: `timeout_keep_alive` only runs between
requests and is cancelled by any byte, and `h11_max_incomplete_event_size` bounds the
size of a request head, not its duration. A client that sends a request line and then
one header byte every few seconds would hold a connection (and a file descriptor) for
ever. This module subclasses uvicorn's HTTP protocol (httptools when installed, else
h11; both keep the request in progress in `self.cycle`) and adds, per connection:

- a head deadline: the request line and all headers must arrive within
  `header_timeout_seconds` of the connection opening, or of the first byte of a
  following keep-alive request; otherwise the server answers 408 and closes;
- a body deadline: a request body must be complete within `body_timeout_seconds` of
  its head; otherwise the connection is closed (the application sees a disconnect);
- caps: at most `max_connections` open connections in all and
  `max_connections_per_ip` from one address; a connection beyond either is closed at
  once, before anything is read.

The timers are `loop.call_later` handles: no task per connection, nothing to poll.
Closings are logged as one aggregated line at most every few seconds, so a flood does
not flood the log.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hub.logging import get_logger

if TYPE_CHECKING:
    from hub.config import HttpSettings

log = get_logger("hub.api.http")

_LOG_EVERY_SECONDS = 10.0
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n"
                    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 48\r\n\r\n"
                    b"the request head was not complete within limits\n")


@dataclass
class ConnectionGuard:
    """The limits and the counts one listener shares between its connections."""

    header_timeout: float
    body_timeout: float
    max_connections: int
    max_per_ip: int
    open: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)  # reason -> count since last log
    _last_log: float = 0.0

    def admit(self, ip: str) -> str | None:
        """Count a new connection; the reason to refuse it, or None."""
        if self.open >= self.max_connections:
            return "too-many-connections"
        if self.per_ip.get(ip, 0) >= self.max_per_ip:
            return "too-many-connections-from-address"
        self.open += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        self.open -= 1
        left = self.per_ip.get(ip, 1) - 1
        if left:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)

    def record(self, reason: str) -> None:
        """Count a closed or refused connection; log the counts now and then."""
        self.closed[reason] = self.closed.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_SECONDS:
            log.warning("http connections closed or refused by the slow-client limits",
                        counts=dict(self.closed), open_connections=self.open,
                        header_timeout_seconds=self.header_timeout,
                        body_timeout_seconds=self.body_timeout,
                        max_connections=self.max_connections,
                        max_connections_per_ip=self.max_per_ip)
            self.closed.clear()
            self._last_log = now


def _base_protocol() -> type[asyncio.Protocol]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency
        from uvicorn.protocols.http.h11_impl import H11Protocol
        return H11Protocol
    return HttpToolsProtocol


def guarded_protocol(settings: HttpSettings) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class enforcing `settings`' deadlines and caps; pass it
    as `uvicorn.Config(http=...)`. Each call makes a new class with its own counts."""
    guard = ConnectionGuard(settings.header_timeout_seconds, settings.body_timeout_seconds,
                            settings.max_connections, settings.max_connections_per_ip)
    base: Any = _base_protocol()

    class GuardedProtocol(base):  # type: ignore[misc]
        """uvicorn's protocol plus a head deadline, a body deadline and caps."""

        _guard = guard

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._ip = ""
            self._admitted = False
            self._phase = "head"  # head | body | app | idle
            self._deadline: asyncio.TimerHandle | None = None

        # -- connection ------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            self._ip = str(peer[0]) if isinstance(peer, tuple) else ""
            refused = self._guard.admit(self._ip)
            if refused is not None:
                self._guard.record(refused)
                transport.abort()
                return
            self._admitted = True
            self._arm("head")

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            if self._admitted:
                self._admitted = False
                self._guard.release(self._ip)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._phase in ("idle", "app") and data:
                # The first bytes of the next request (keep-alive or pipelined).
                self._arm("head")
            before = self.cycle
            super().data_received(data)
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not before and cycle is not None:
                # A request head was completed in this chunk.
                if cycle.more_body:
                    self._arm("body")
                else:
                    self._settle()
            elif self._phase == "body" and cycle is not None and not cycle.more_body:
                self._settle()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._phase in ("app", "body"):
                self._cancel()
                self._phase = "idle"  # uvicorn's keep-alive timer runs now

        # -- timers ----------------------------------------------------------------

        def _arm(self, phase: str) -> None:
            self._cancel()
            self._phase = phase
            seconds = self._guard.header_timeout if phase == "head" else \
                self._guard.body_timeout
            self._deadline = self.loop.call_later(seconds, self._expired, phase)

        def _settle(self) -> None:
            self._cancel()
            self._phase = "app"

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self, phase: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            self._guard.record(f"{phase}-timeout")
            idle = self.cycle is None or self.cycle.response_complete
            if phase == "head" and idle:
                self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    return GuardedProtocol
