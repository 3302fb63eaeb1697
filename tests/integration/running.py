"""Run a hub's real stages inside a test's event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from hub.runtime import Hub


@asynccontextmanager
async def running(hub: Hub, *, serve_http: bool = False) -> AsyncIterator[Hub]:
    """Processing and dispatch in this loop; the intake writer runs too, so a test can
    `await hub.intake.submit(...)` as a source would."""
    if not serve_http:
        hub.intake.start()
    ready = asyncio.Event()
    task = asyncio.create_task(hub.run(serve_http=serve_http, ready=ready.set,
                                       handle_signals=False))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    assert ready.is_set(), "hub did not start within 30 s"
    try:
        yield hub
    finally:
        hub.stop()
        await asyncio.wait_for(task, timeout=30)
        if not serve_http:
            hub.intake.stop()


async def wait_until(predicate: Callable[[], Any], timeout: float = 20.0,
                     interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
