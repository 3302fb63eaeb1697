"""TCP fault-injection proxy between the hub and a peer.

Why: retry, back-off and circuit-breaker code must be exercised against real socket failures
(refused, reset, silent peer, 429/503 with Retry-After) that a healthy peer never produces.
The proxy runs its own event loop in a background thread so tests can flip modes while the hub
is mid-flight; set_mode() returns only once the new mode is in effect.

Modes (applied to new connections; by default live connections of another mode are dropped so
pooled keep-alive connections cannot bypass the fault):

* ``pass``        forward bytes both ways to the target;
* ``refuse``      close the listening socket (clients get ECONNREFUSED); reopened on the same port
                  when another mode is set;
* ``reset``       accept, then close with RST (SO_LINGER 0);
* ``blackhole``   accept and read, never answer;
* ``http_status`` answer each HTTP/1.1 request itself with a fixed status, headers and JSON body
                  (keep-alive supported), without contacting the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self, get_args

from ._aio import LoopThread, TcpListener, settle

Mode = Literal["pass", "refuse", "reset", "blackhole", "http_status"]
MODES: frozenset[str] = frozenset(get_args(Mode))

HOST = "127.0.0.1"
_CHUNK = 64 * 1024
_HEADER_LIMIT = 1024 * 1024
_CONNECT_TIMEOUT = 5.0
_REBIND_TIMEOUT = 3.0
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class _Reply:
    """Pre-rendered http_status answer (rendered once per set_mode, not per request)."""

    status: int
    head: bytes
    body: bytes


@dataclass(eq=False)
class _Conn:
    """One accepted client socket; its stream writer once wrapped; its upstream in pass mode."""

    mode: Mode
    sock: socket.socket
    client: asyncio.StreamWriter | None = None
    upstream: asyncio.StreamWriter | None = None
    dropped: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def _render_reply(status: int, headers: Mapping[str, str] | None, body: object) -> _Reply:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    if body is None:
        payload = json.dumps({"error": reason, "status": status, "source": "faultproxy"}).encode()
    elif isinstance(body, bytes):
        payload = body
    else:
        payload = json.dumps(body).encode()
    names = {k.lower() for k in (headers or {})}
    lines = [f"HTTP/1.1 {status} {reason}"]
    if "content-type" not in names:
        lines.append("Content-Type: application/json")
    lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    no_body = status in (204, 304) or 100 <= status < 200
    lines.append(f"Content-Length: {0 if no_body else len(payload)}")
    return _Reply(
        status, ("\r\n".join(lines) + "\r\n").encode("latin-1"), b"" if no_body else payload
    )


class FaultProxy:
    """Loopback TCP proxy with switchable failure modes; see the module docstring."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        mode: Mode = "pass",
        port: int = 0,
        status: int = 503,
        headers: Mapping[str, str] | None = None,
        body: object = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
        self.target_host = target_host
        self.target_port = target_port
        self._mode: Mode = mode
        self._reply = _render_reply(status, headers, body)
        self._requested_port = port
        self._port: int | None = None
        self._loop_thread = LoopThread(f"faultproxy-{target_host}:{target_port}")
        self._listener: TcpListener | None = None
        self._closing = False
        self._conns: set[_Conn] = set()
        self._connections = 0
        self._requests_answered = 0
        self._bytes_blackholed = 0

    # -- public API (test thread) --------------------------------------------------------------

    @property
    def port(self) -> int:
        """Listening port (stable across refuse/reopen)."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, handy for HTTP targets."""
        return f"http://{HOST}:{self.port}"

    @property
    def mode(self) -> Mode:
        """Current mode (as last set)."""
        return self._mode

    @property
    def connections(self) -> int:
        """Connections accepted since start (or reset_counters), in every mode."""
        return self._connections

    @property
    def requests_answered(self) -> int:
        """HTTP requests answered by the proxy itself in http_status mode."""
        return self._requests_answered

    @property
    def active_connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._conns)

    def reset_counters(self) -> None:
        """Zero the counters (runs on the loop thread, so no update is lost)."""
        self._loop_thread.run(self._reset_counters())

    def start(self) -> int:
        """Start the loop thread, bind 127.0.0.1 (port 0 unless given) and return the port."""
        self._loop_thread.start()
        self._closing, self._listener = False, None
        try:
            self._loop_thread.run(self._open_listener())
            if self._mode == "refuse":
                self._loop_thread.run(self._close_listener())
        except BaseException:
            self._loop_thread.stop()
            raise
        return self.port

    def set_mode(
        self,
        mode: Mode,
        *,
        status: int = 503,
        headers: Mapping[str, str] | None = None,
        body: object = None,
        drop_existing: bool = True,
    ) -> None:
        """Switch mode (thread-safe; effective when this returns).

        ``status``/``headers``/``body`` configure http_status replies (``body`` None gives a small
        JSON error object; bytes are sent verbatim; anything else is JSON-encoded). With
        ``drop_existing`` open connections of a different mode are closed (RST when switching to
        ``reset``, FIN otherwise).
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
        reply = _render_reply(status, headers, body)
        self._loop_thread.run(self._apply_mode(mode, reply, drop_existing))

    def stop(self) -> None:
        """Close the listener and every connection, then stop the loop thread."""
        if not self._loop_thread.running:
            return
        try:
            self._loop_thread.run(self._shutdown())
        finally:
            self._loop_thread.stop()
            self._port = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- loop thread ---------------------------------------------------------------------------

    async def _reset_counters(self) -> None:
        self._connections = self._requests_answered = self._bytes_blackholed = 0

    async def _open_listener(self) -> None:
        if self._listener is None:
            loop = asyncio.get_running_loop()
            self._listener = TcpListener(loop, self._on_accept, HOST, self._requested_port)
            self._port = self._listener.open()
            return
        deadline = time.monotonic() + _REBIND_TIMEOUT
        while True:
            try:
                self._listener.open()
                return
            except OSError as exc:
                # Reopening after "refuse": the port is only taken if another socket grabbed
                # it while it was closed; give that a moment, then fail loudly.
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"FaultProxy cannot re-listen on {HOST}:{self.port}: {exc}"
                    ) from exc
                await asyncio.sleep(0.05)

    async def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()

    async def _apply_mode(self, mode: Mode, reply: _Reply, drop_existing: bool) -> None:
        self._reply = reply
        self._mode = mode
        if mode == "refuse":
            await self._close_listener()
        else:
            await self._open_listener()
        if drop_existing:
            for conn in list(self._conns):
                if conn.mode != mode:
                    self._drop(conn, rst=mode == "reset")
        await settle()  # dropped transports really close before set_mode() returns

    async def _shutdown(self) -> None:
        self._closing = True
        await self._close_listener()
        conns = list(self._conns)
        for conn in conns:
            self._drop(conn, rst=False)
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            # Closed transports end the handlers on their own; cancel only stragglers
            # (cancelling a handler mid-read makes asyncio log a spurious traceback).
            _, stragglers = await asyncio.wait(tasks, timeout=_CONNECT_TIMEOUT)
            for task in stragglers:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:
            if conn.client is None:  # handler never got to wrap its socket
                conn.sock.close()
        await settle()

    @staticmethod
    def _drop(conn: _Conn, *, rst: bool) -> None:
        """Close a live connection; the handler notices (EOF) and cleans up."""
        conn.dropped = True
        if rst:
            _set_rst_on_close(conn.sock)
        for writer in (conn.client, conn.upstream):
            if writer is None:
                continue
            if rst:
                _abort_with_rst(writer)
            else:
                writer.close()

    def _on_accept(self, sock: socket.socket) -> None:
        """Synchronous accept hook: count, apply reset at once, else hand over to a task."""
        self._connections += 1
        mode = self._mode
        if self._closing or mode == "refuse":
            sock.close()
            return
        if mode == "reset":
            _set_rst_on_close(sock)
            sock.close()
            return
        conn = _Conn(mode=mode, sock=sock)
        self._conns.add(conn)
        conn.task = asyncio.get_running_loop().create_task(self._serve(conn))

    async def _serve(self, conn: _Conn) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=conn.sock, limit=_HEADER_LIMIT)
            conn.client = writer
            if conn.dropped:
                return
            if conn.mode == "pass":
                await self._forward(conn, reader)
            elif conn.mode == "blackhole":
                while data := await reader.read(_CHUNK):
                    self._bytes_blackholed += len(data)
            elif conn.mode == "http_status":
                await self._answer_http(reader, writer)
        except (
            ConnectionError,
            OSError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # client went away or sent garbage: the connection simply ends
        finally:
            self._conns.discard(conn)
            if writer is None:
                conn.sock.close()
            for w in (writer, conn.upstream):
                if w is not None and not w.is_closing():
                    w.close()

    async def _forward(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        assert conn.client is not None
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), _CONNECT_TIMEOUT
            )
        except (TimeoutError, OSError):
            _abort_with_rst(conn.client)  # target down: look like it to the client
            return
        conn.upstream = up_writer
        if conn.dropped:  # mode changed while we were connecting upstream
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, conn.client))

    async def _answer_http(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # client closed between requests
            except asyncio.LimitOverrunError:
                writer.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
                await writer.drain()
                return
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            version = rest.rpartition(" ")[2]
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                await _discard_chunked(reader)
            elif length := int(headers.get("content-length", "0") or "0"):
                await reader.readexactly(length)
            connection = headers.get("connection", "").lower()
            close = "close" in connection or (
                version == "HTTP/1.0" and "keep-alive" not in connection
            )
            reply = self._reply
            writer.write(reply.head + (b"Connection: close\r\n\r\n" if close else b"\r\n"))
            if method.upper() != "HEAD":
                writer.write(reply.body)
            await writer.drain()
            self._requests_answered += 1
            if close:
                return


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy one direction until EOF, then half-close; abort the other side on errors."""
    try:
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()
        if not dst.is_closing() and dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        dst.transport.abort()


async def _discard_chunked(reader: asyncio.StreamReader) -> None:
    """Consume a chunked request body (sizes, data, trailers)."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return
        await reader.readexactly(size + 2)


def _set_rst_on_close(sock: Any) -> None:
    """SO_LINGER 0: closing sends a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close a stream so the peer sees a TCP RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        _set_rst_on_close(sock)
    writer.transport.abort()
