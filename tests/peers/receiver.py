"""Minimal recording HTTP/1.1 receiver (a stand-in for any HTTP peer the hub delivers to).

Why: tests need to see exactly what the hub sent and in which order (per-key PUT ordering),
and benchmarks need a sink that is not the bottleneck. So this is a bare asyncio.Protocol,
no HTTP framework: keep-alive and pipelining, Content-Length bodies only, one pre-rendered
response shared by all requests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http import HTTPStatus
from types import TracebackType
from typing import Any, NamedTuple, Self

from ._aio import LoopThread, TcpListener, settle

HOST = "127.0.0.1"
_HEADER_LIMIT = 64 * 1024
_HEAD_END = b"\r\n\r\n"


class RecordedRequest(NamedTuple):
    """One received request; a plain tuple ``(method, path, headers, body, time)``."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased; repeated headers joined with ", "."""
    body: bytes
    time: float
    """time.monotonic() when the request was complete."""


def fhir_effects(request: RecordedRequest) -> list[str]:
    """The resources a FHIR write request puts, as "Type/id", in the order it puts them:
    each entry of a transaction/batch Bundle POSTed at the base, or the URL of a PUT."""
    if request.method == "PUT":
        return ["/".join(request.path.rstrip("/").split("/")[-2:])]
    if request.method != "POST":
        return []
    try:
        bundle = json.loads(request.body)
    except ValueError:
        return []
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return []
    return [str(e["request"]["url"]) for e in bundle.get("entry", [])
            if isinstance(e, dict) and (e.get("request") or {}).get("method") == "PUT"]


class _Response(NamedTuple):
    keep_alive: bytes
    close: bytes
    head_only_keep_alive: bytes
    head_only_close: bytes


def _render(status: int, headers: dict[str, str], body: bytes) -> _Response:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    no_body = status in (204, 304) or 100 <= status < 200
    names = {k.lower() for k in headers}
    lines = [f"HTTP/1.1 {status} {reason}"]
    if "content-type" not in names and not no_body:
        lines.append("Content-Type: application/json")
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    lines.append(f"Content-Length: {0 if no_body else len(body)}")
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    payload = b"" if no_body else body
    ka, cl = head + b"\r\n", head + b"Connection: close\r\n\r\n"
    return _Response(ka + payload, cl + payload, ka, cl)


def _encode_body(body: bytes | object) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")


_Head = tuple[str, str, dict[str, str], bool, int, int]


class _Protocol(asyncio.Protocol):
    """Per-connection parser; keeps partially received requests in one bytearray."""

    __slots__ = ("_buf", "_owner", "_pending", "_transport")

    def __init__(self, owner: RecordingReceiver) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        # Parsed head waiting for its body:
        # (method, path, headers, keep_alive, body_start, body_end).
        self._pending: _Head | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._owner._closing:
            transport.abort()
            return
        self._owner._transports.add(transport)
        self._owner._connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._owner._transports.discard(self._transport)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        transport = self._transport
        owner = self._owner
        while transport is not None:
            pending = self._pending
            if pending is None:
                end = buf.find(_HEAD_END)
                if end < 0:
                    if len(buf) > _HEADER_LIMIT:
                        self._fail(431)
                    return
                try:
                    pending = self._parse_head(bytes(buf[:end]), end + 4)
                except ValueError:
                    self._fail(400)
                    return
                if pending is None:  # chunked: unsupported on purpose, fail loudly
                    self._fail(501)
                    return
                self._pending = pending
            method, path, headers, keep_alive, body_start, body_end = pending
            if len(buf) < body_end:
                return
            body = bytes(buf[body_start:body_end])
            del buf[:body_end]
            self._pending = None
            owner._record(RecordedRequest(method, path, headers, body, time.monotonic()))
            response = owner._response
            if method == "HEAD":
                transport.write(
                    response.head_only_keep_alive if keep_alive else response.head_only_close
                )
            else:
                transport.write(response.keep_alive if keep_alive else response.close)
            if not keep_alive:
                transport.close()
                return

    @staticmethod
    def _parse_head(head: bytes, head_len: int) -> _Head | None:
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return None
        length = int(headers.get("content-length", "0") or "0")
        if length < 0:
            raise ValueError("negative Content-Length")
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        return method, path, headers, keep_alive, head_len, head_len + length

    def _fail(self, status: int) -> None:
        if self._transport is not None:
            reason = HTTPStatus(status).phrase
            self._transport.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n"
                f"Connection: close\r\n\r\n".encode()
            )
            self._transport.close()
        self._buf.clear()


class RecordingReceiver:
    """Loopback HTTP/1.1 sink that answers every request alike and records each one.

    Usage::

        with RecordingReceiver() as rx:
            deliver_to(rx.url)
            assert [r.path for r in rx.requests()] == [...]
    """

    def __init__(
        self,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        body: bytes | object = b"{}",
        port: int = 0,
    ) -> None:
        self._requested_port = port
        self._port: int | None = None
        self._status = status
        self._headers = dict(headers or {})
        self._body = _encode_body(body)
        self._response = _render(status, self._headers, self._body)
        self._records: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._waiters = 0
        self._transports: set[asyncio.Transport] = set()
        self._connections = 0
        self._listener: TcpListener | None = None
        self._accepting: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._loop_thread = LoopThread("recording-receiver")

    # -- configuration (any thread) ------------------------------------------------------------

    def set_status(
        self,
        code: int,
        headers: dict[str, str] | None = None,
        *,
        body: bytes | object | None = None,
    ) -> None:
        """Answer future requests with ``code``, extra ``headers`` and (optionally) a new body."""
        if body is not None:
            self._body = _encode_body(body)
        self._status = code
        self._headers = dict(headers or {})
        self._response = _render(code, self._headers, self._body)  # one atomic swap

    def set_body(self, body: bytes | object) -> None:
        """Answer future requests with this body (bytes verbatim, anything else as JSON)."""
        self.set_status(self._status, self._headers, body=body)

    # -- records -------------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._records.append(request)
            if self._waiters:
                self._cond.notify_all()

    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far, in arrival order."""
        with self._cond:
            return list(self._records)

    def take(self) -> list[RecordedRequest]:
        """The requests received so far, in arrival order, forgetting them (long runs)."""
        with self._cond:
            taken, self._records = self._records, []
            return taken

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._cond:
            self._records.clear()

    def count(self) -> int:
        """Number of recorded requests."""
        with self._cond:
            return len(self._records)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests are recorded; return them (raise on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            try:
                while len(self._records) < n:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(
                            f"only {len(self._records)} of {n} requests after {timeout} s"
                        )
                    self._cond.wait(remaining)
                return list(self._records)
            finally:
                self._waiters -= 1

    @property
    def connections(self) -> int:
        """TCP connections accepted since start."""
        return self._connections

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Listening port (valid after start())."""
        if self._port is None:
            raise RuntimeError("RecordingReceiver is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> int:
        """Start serving on 127.0.0.1 in a background thread; return the port."""
        self._loop_thread.start()
        self._closing = False
        try:
            self._port = self._loop_thread.run(self._open())
        except BaseException:
            self._loop_thread.stop()
            raise
        return self._port

    async def _open(self) -> int:
        loop = asyncio.get_running_loop()
        self._listener = TcpListener(loop, self._on_accept, HOST, self._requested_port)
        return self._listener.open()

    def _on_accept(self, sock: socket.socket) -> None:
        if self._closing:
            sock.close()
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: _Protocol(self), sock))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    def stop(self) -> None:
        """Close the listener and all connections, then stop the thread (records are kept)."""
        if not self._loop_thread.running:
            return
        try:
            self._loop_thread.run(self._close())
        finally:
            self._loop_thread.stop()
            self._port = None

    async def _close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.close()
        if self._accepting:  # let just-accepted sockets become transports we can abort
            await asyncio.wait(set(self._accepting), timeout=5)
        for transport in list(self._transports):
            transport.abort()
        await settle()  # connection_lost callbacks really close the sockets

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
