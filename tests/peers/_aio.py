"""Shared plumbing for the in-process peers: a loop thread and a leak-free TCP listener.

Why: the fault proxy and the recording receiver must keep serving sockets while the test
thread makes blocking calls, and must leave no thread, task or socket behind after stop().
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_STOP_TIMEOUT = 10.0
_SETTLE_ROUNDS = 10


async def settle(rounds: int = _SETTLE_ROUNDS) -> None:
    """Run a few loop iterations so scheduled callbacks (e.g. transports really closing) run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class LoopThread:
    """Owns one event loop and the thread that runs it.

    A plain ``SelectorEventLoop`` is used on purpose: the peers must behave the same whatever
    event-loop policy (e.g. uvloop) the process under test has installed.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; raises if start() has not been called."""
        if self._loop is None:
            raise RuntimeError(f"{self._name}: event loop is not running (call start() first)")
        return self._loop

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Create the loop and run it in a daemon thread (so a crashed test cannot hang exit)."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name}: already started")
        loop = asyncio.SelectorEventLoop()
        ready = threading.Event()

        def runner() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                _drain_and_close(loop)

        thread = threading.Thread(target=runner, name=self._name, daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        if not ready.wait(_STOP_TIMEOUT):
            raise RuntimeError(f"{self._name}: event loop thread did not start")

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = _STOP_TIMEOUT) -> T:
        """Run a coroutine on the loop from another thread and return its result (blocking)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        """Stop the loop, cancel leftover tasks, close the loop and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"{self._name}: event loop thread did not stop")
        self._loop = self._thread = None


def _drain_and_close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await every task still pending so nothing leaks past stop()."""
    try:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(settle())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


class TcpListener:
    """Non-blocking listening socket whose accepts are handed to a synchronous callback.

    Why not ``asyncio.Server``: on Python 3.11, closing a Server while an accept is in flight
    makes ``_accept_connection2`` fail an assertion silently and leak the accepted socket, so
    a client stays connected to nothing. Here accept() and the hand-over happen in one
    callback, so close() is atomic: every socket is either owned by the callback or was never
    accepted (and gets ECONNREFUSED/RST from the kernel).
    Must be used from the loop's own thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_accept: Callable[[socket.socket], None],
        host: str,
        port: int = 0,
        backlog: int = 1024,
    ) -> None:
        self._loop = loop
        self._on_accept = on_accept
        self._host = host
        self._port = port
        self._backlog = backlog
        self._sock: socket.socket | None = None

    @property
    def port(self) -> int:
        """Bound port (the real one once open() has run with port 0)."""
        return self._port

    @property
    def listening(self) -> bool:
        return self._sock is not None

    def open(self) -> int:
        """Bind (SO_REUSEADDR, same port as before if any), listen and start accepting."""
        if self._sock is not None:
            return self._port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_readable)
        return self._port

    def close(self) -> None:
        """Stop accepting and close the socket; pending kernel connections are reset."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _on_readable(self) -> None:
        for _ in range(self._backlog):  # bounded: one busy listener must not starve the loop
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED, EMFILE...: drop this accept, keep listening
                return
            conn.setblocking(False)
            self._on_accept(conn)
