"""Serve an ASGI app with uvicorn on 127.0.0.1 (port 0) in a thread of its own, optionally
over TLS with client certificates required (mutual TLS).

Why: the authorization-server and protected-FHIR peers answer real HTTP(S) while the test
thread makes blocking calls; stop() leaves no thread, task or socket behind.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn

from ._aio import LoopThread

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServerTls:
    """Server certificate chain and key (PEM files); with `client_ca` the client must
    present a certificate issued by that CA (mutual TLS)."""

    cert_chain: Path
    key: Path
    client_ca: Path | None = None


class AsgiPeer:
    def __init__(self, app: Any, name: str, tls: ServerTls | None = None) -> None:
        self.app = app
        self.tls = tls
        self.port = 0
        self._thread = LoopThread(name)
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._serve_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{HOST}:{self.port}"

    def start(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]
        options: dict[str, Any] = {}
        if self.tls is not None:
            options.update(ssl_certfile=str(self.tls.cert_chain), ssl_keyfile=str(self.tls.key))
            if self.tls.client_ca is not None:
                options.update(ssl_ca_certs=str(self.tls.client_ca),
                               ssl_cert_reqs=ssl.CERT_REQUIRED)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", loop="asyncio",
            **options))
        self._server.capture_signals = _no_signals  # type: ignore[method-assign,assignment]
        self._thread.start()
        server = self._server

        async def begin() -> None:
            self._serve_task = asyncio.get_running_loop().create_task(server.serve([sock]))
            while not server.started:
                if self._serve_task.done():
                    self._serve_task.result()
                await asyncio.sleep(0.01)

        try:
            self._thread.run(begin())
        except BaseException:
            self._thread.stop()
            sock.close()
            raise
        return self.port

    def stop(self) -> None:
        if self._server is None:
            return
        server = self._server
        server.should_exit = True

        async def end() -> None:
            if self._serve_task is not None:
                await asyncio.wait_for(self._serve_task, timeout=10)

        try:
            self._thread.run(end(), timeout=15)
        finally:
            self._thread.stop()
            if self._sock is not None:
                self._sock.close()
            self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class AppPeer:
    """Base of a peer that serves its Starlette/ASGI `self.app` through an `AsgiPeer`;
    set `self.app` and call `super().__init__(name)`. A context manager."""

    app: Any

    def __init__(self, name: str) -> None:
        self._asgi = AsgiPeer(self.app, name)

    @property
    def port(self) -> int:
        return self._asgi.port

    @property
    def url(self) -> str:
        return self._asgi.url

    def start(self) -> int:
        self._asgi.app = self.app  # a test may wrap the app (e.g. a header-dropping proxy)
        return self._asgi.start()

    def stop(self) -> None:
        self._asgi.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _NoSignals:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _no_signals() -> _NoSignals:
    return _NoSignals()
