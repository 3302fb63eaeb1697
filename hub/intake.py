"""Intake: journal what a source received, durably, before the source answers.

Messages from all sources go through one writer thread that commits them in groups:
many messages per transaction (one fsync), each sender answered only after the commit
that holds its message returned. Group commit is how intake stays fast without
weakening "acknowledge only what is on disk" (ARCHITECTURE §1, invariant 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from hub.domain.model import RawMessage
from hub.faults import crashpoint
from hub.logging import get_logger
from hub.store.journal import JournalWriter, open_journal_writer
from hub.store.repository import IntakeResult, Repository

log = get_logger("hub.intake")


@dataclass
class _Pending:
    raw: RawMessage
    future: asyncio.Future[IntakeResult]
    loop: asyncio.AbstractEventLoop


_STOP = object()


class Intake:
    """The single path into the journal. `await submit(raw)` returns after the commit."""

    def __init__(self, repo: Repository, max_batch: int = 256,
                 on_committed: Callable[[], None] | None = None,
                 priorities: Mapping[str, int] | None = None) -> None:
        self.repo = repo
        self.max_batch = max_batch
        self.on_committed = on_committed
        # Processing priority per source (its adapter's `intake_priority`): alarms are
        # journalled so that processing takes them ahead of other traffic.
        self.priorities: Mapping[str, int] = priorities or {}
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._writer: JournalWriter | None = None

    def start(self) -> None:
        if self._thread is None:
            self._writer = open_journal_writer(self.repo)
            self._thread = threading.Thread(target=self._run, name="intake-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def submit(self, raw: RawMessage) -> IntakeResult:
        """Journal `raw`; returns once it is committed (or raises if it could not be)."""
        return await self.submit_nowait(raw)

    def submit_nowait(self, raw: RawMessage) -> asyncio.Future[IntakeResult]:
        """Queue `raw` for the next group commit; the future settles once it is committed
        (or with the reason it could not be). For protocol callbacks (the MLLP source)
        that answer from the future's callback instead of a task per message. Must be
        called on a running event loop."""
        if self._thread is None:
            raise RuntimeError("intake is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IntakeResult] = loop.create_future()
        self._queue.put(_Pending(self._prioritised(raw), future, loop))
        return future

    def submit_sync(self, raw: RawMessage) -> IntakeResult:
        """Journal one message from synchronous code (replay, CLI), committing at once."""
        return self.repo.insert_messages([self._prioritised(raw)])[0]

    def _prioritised(self, raw: RawMessage) -> RawMessage:
        priority = self.priorities.get(raw.source)
        if priority is None or priority == raw.priority:
            return raw
        return replace(raw, priority=priority)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stopping = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._commit([p for p in batch if isinstance(p, _Pending)])
            if stopping:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        assert self._writer is not None
        try:
            results = self._writer.insert([p.raw for p in batch])
        except Exception as exc:
            log.error("intake commit failed; senders get no acknowledgement",
                      batch=len(batch), error=type(exc).__name__)
            _wake(batch, [exc] * len(batch))
            return
        crashpoint("after_commit_before_ack")
        _wake(batch, results)
        if self.on_committed is not None and any(not r.duplicate for r in results):
            self.on_committed()


def _wake(batch: list[_Pending], outcomes: Sequence[IntakeResult | BaseException]) -> None:
    """Hand a batch's outcomes to the event loops: one wake-up per loop, not per message
    (each `call_soon_threadsafe` writes to the loop's self-pipe and wakes it)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[IntakeResult],
                                                        IntakeResult | BaseException]]] = {}
    for p, outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(p.loop, []).append((p.future, outcome))
    for loop, items in by_loop.items():
        # RuntimeError: the loop was closed meanwhile, nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[asyncio.Future[IntakeResult],
                              IntakeResult | BaseException]]) -> None:
    for future, outcome in items:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
