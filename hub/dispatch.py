"""Dispatch: deliveries leave through their destination plugins.

One dispatcher per destination, so a slow or failing destination never delays another.
It leases due deliveries (alarms first, one in flight per order key), sends them
concurrently, and records each outcome with the delivery's next state (see
`hub.domain.delivery`). Alarms are never given up on for transient errors: they keep
retrying with a short cap, and escalate.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from hub.config import DestinationSettings
from hub.contracts import Destination
from hub.domain.delivery import MAX_RETRY_AFTER_SECONDS, RetryPolicy, next_transition
from hub.domain.model import (
    DeliveryState,
    OutboundDelivery,
    Outcome,
    OutcomeKind,
    TransportAction,
    is_alarm,
)
from hub.domain.privacy import safe_error_text
from hub.faults import crashpoint
from hub.logging import bound_message, get_logger
from hub.store.repository import AttemptRecord, ClaimedDelivery, Repository

log = get_logger("hub.dispatch")

# Expired leases (a worker that died or hung; leases last `lease_seconds`, minutes) are
# returned to pending at most this often, not on every round.
LEASE_SWEEP_SECONDS = 5.0


def policy_from(settings: DestinationSettings) -> RetryPolicy:
    r = settings.retry
    return RetryPolicy(
        base_seconds=r.base_seconds, cap_seconds=r.cap_seconds,
        alarm_cap_seconds=r.alarm_cap_seconds, max_attempts=r.max_attempts,
        escalate_after_attempts=r.escalate_after_attempts, pause_seconds=r.pause_seconds,
    )


class Dispatcher:
    def __init__(self, name: str, destination: Destination, repo: Repository,
                 settings: DestinationSettings, worker: str, hook: Any,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.destination = destination
        self.repo = repo
        self.settings = settings
        self.policy = policy_from(settings)
        self.worker = worker
        self.hook = hook
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._limit = asyncio.Semaphore(settings.concurrency)
        self._next_transport_check = 0.0
        # A Retry-After (429, 503) is about the server, not one delivery: nothing is
        # sent to this destination before it has passed (time.monotonic()).
        self._hold_until = 0.0
        self._failing = False  # the last outcome seen was a retry: the destination is down
        self._last_full = False  # the last round claimed a whole batch
        self._next_lease_sweep = 0.0  # time.monotonic() of the next expired-lease sweep

    async def run(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Deliver until `stop` is set; wake early when new deliveries are planned."""
        while not stop.is_set():
            wake.clear()  # before the round: a wake-up during the round is not lost
            try:
                sent = await self.run_once()
            except Exception:
                log.exception("dispatch round failed; retrying", destination=self.name)
                sent = 0
            try:
                if await self.check_transport():
                    sent = sent or 1  # a resend may be due now
            except Exception:
                log.exception("transport status check failed; trying again later",
                              destination=self.name)
            if sent:
                # More may be due: per-key FIFO caps a round at one delivery per key, so a
                # round smaller than the batch does not mean the backlog is empty.
                continue
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
            _, pending = await asyncio.wait(waiters, timeout=self.settings.poll_seconds,
                                            return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    async def run_once(self) -> int:
        """One round: claim, send, record. Returns the number of deliveries attempted."""
        if time.monotonic() < self._hold_until:
            return 0
        if await asyncio.to_thread(self.repo.paused_until, self.name) is not None:
            return 0
        # The read-only probe keeps an idle dispatcher off the write lock; after a full
        # round more is almost surely due, so the probe would only cost a statement.
        if not self._last_full and not await asyncio.to_thread(self.repo.has_due, self.name):
            return 0
        clock = time.monotonic()
        sweep = clock >= self._next_lease_sweep
        if sweep:
            self._next_lease_sweep = clock + LEASE_SWEEP_SECONDS
        claimed = await asyncio.to_thread(
            self.repo.claim_deliveries, self.name, self.worker, self.settings.batch_size,
            self.settings.lease_seconds, sweep)
        self._last_full = len(claimed) >= self.settings.batch_size
        if not claimed:
            return 0
        crashpoint("after_claim")
        group = getattr(self.destination, "events_per_request", 1)
        if group > 1 and hasattr(self.destination, "send_many") and len(claimed) > 1:
            chunks = self._requests(claimed, group)
            grouped = await asyncio.gather(*(self._send_many(c) for c in chunks))
            results = [r for chunk in grouped for r in chunk]
        else:
            results = list(await asyncio.gather(*(self._send(c) for c in claimed)))
        crashpoint("after_send_before_mark")
        self._hold(results)
        await self._record(claimed, results)
        await self._after_outage(results)
        return len(claimed)

    async def _after_outage(self, results: Sequence[tuple[Outcome, datetime, datetime]]
                            ) -> None:
        """When a failing destination delivers again, what backs off is made due now."""
        kinds = {o.kind for o, _, _ in results}
        if OutcomeKind.RETRY in kinds:
            self._failing = True
        elif OutcomeKind.DELIVERED in kinds and self._failing:
            self._failing = False
            n = await asyncio.to_thread(self.repo.recovered, self.name)
            if n:
                log.info("destination answers again; backlog due now", destination=self.name,
                         deliveries=n)

    def _hold(self, results: Sequence[tuple[Outcome, datetime, datetime]]) -> None:
        """Honour the longest Retry-After of a retry outcome for the whole destination."""
        waits = [o.retry_after for o, _, _ in results
                 if o.kind is OutcomeKind.RETRY and o.retry_after and o.retry_after > 0]
        if waits:
            wait = min(max(waits), MAX_RETRY_AFTER_SECONDS)
            self._hold_until = max(self._hold_until, time.monotonic() + wait)
            log.warning("destination asked us to wait (Retry-After)", destination=self.name,
                        seconds=wait)

    async def check_transport(self, now: float | None = None) -> int:
        """Ask the destination the transport state of its awaiting deliveries (only a
        destination with `check_transport(ref) -> TransportCheck`, at most every
        `transport_check_seconds`), and record what changed. Returns how many deliveries
        were made due again (RESEND)."""
        check = getattr(self.destination, "check_transport", None)
        if check is None:
            return 0
        clock = time.monotonic() if now is None else now
        every = float(getattr(self.destination, "transport_check_seconds", 60.0))
        if clock < self._next_transport_check:
            return 0
        self._next_transport_check = clock + every
        resent = 0
        for delivery_id, ref in await asyncio.to_thread(self.repo.awaiting_transport,
                                                        self.name):
            result = await check(ref)
            if result is None:  # not answerable now (transport down): next round
                continue
            if not await asyncio.to_thread(self.repo.record_transport, delivery_id, result):
                continue
            where = {"destination": self.name, "delivery_id": delivery_id,
                     "transport_state": result.state}
            if result.action is TransportAction.DEAD:
                log.error("dead letter: the transport refused the message", **where,
                          reason=safe_error_text(result.detail))
            elif result.action is TransportAction.DELIVERED:
                log.info("delivered: the receiver's status confirms it", **where)
            elif result.action is TransportAction.RESEND:
                resent += 1
                log.warning("the transport gave up; sending again", **where,
                            reason=safe_error_text(result.detail))
            else:
                log.info("transport state", **where)
        return resent

    def _requests(self, claimed: Sequence[ClaimedDelivery], group: int
                  ) -> list[Sequence[ClaimedDelivery]]:
        """Consecutive runs of `claimed`, one request each: as the destination sizes them
        (`request_sizes(payloads)`, e.g. to stay under the server's limit on entries per
        transaction), else `group` deliveries each."""
        sizes: list[int] = []
        plan = getattr(self.destination, "request_sizes", None)
        if plan is not None:
            try:
                sizes = list(plan([c.payload for c in claimed]))
            except Exception:  # a plugin bug must not hold the claimed deliveries
                log.exception("request_sizes failed; grouping by events_per_request",
                              destination=self.name)
        if sum(sizes) != len(claimed) or any(size < 1 for size in sizes):
            sizes = [group] * -(-len(claimed) // group)
        chunks, start = [], 0
        for size in sizes:
            chunks.append(claimed[start:start + size])
            start += size
        return chunks

    def _outbound(self, claimed: ClaimedDelivery) -> OutboundDelivery:
        return OutboundDelivery(
            id=claimed.id, message_id=claimed.message_id, destination=self.name,
            payload=claimed.payload, bundle_id=claimed.bundle_id, priority=claimed.priority,
            attempt=claimed.attempt,
        )

    async def _send_many(self, chunk: Sequence[ClaimedDelivery]
                         ) -> list[tuple[Outcome, datetime, datetime]]:
        async with self._limit:
            started = datetime.now(UTC)
            try:
                outcomes = await self.destination.send_many(  # type: ignore[attr-defined]
                    [self._outbound(c) for c in chunk])
                if len(outcomes) != len(chunk):
                    raise ValueError(f"send_many returned {len(outcomes)} outcomes "
                                     f"for {len(chunk)} deliveries")
            except Exception as exc:  # a plugin bug must not lose the deliveries
                outcomes = [Outcome.retry(safe_error_text(f"{type(exc).__name__}: {exc}"))
                            ] * len(chunk)
            finished = datetime.now(UTC)
            return [(o if isinstance(o, Outcome) else Outcome.retry("not an Outcome"),
                     started, finished) for o in outcomes]

    async def _send(self, claimed: ClaimedDelivery) -> tuple[Outcome, datetime, datetime]:
        delivery = self._outbound(claimed)
        async with self._limit:
            started = datetime.now(UTC)
            try:
                outcome = await self.destination.send(delivery)
            except Exception as exc:  # a plugin bug must not lose the delivery
                outcome = Outcome.retry(safe_error_text(f"{type(exc).__name__}: {exc}"))
            if not isinstance(outcome, Outcome):  # plugins are not type-checked
                outcome = Outcome.retry(  # type: ignore[unreachable]
                    f"destination returned {type(outcome).__name__}")
            return outcome, started, datetime.now(UTC)

    async def _record(self, claimed: Sequence[ClaimedDelivery],
                      results: Sequence[tuple[Outcome, datetime, datetime]]) -> None:
        now = datetime.now(UTC)
        records = []
        for c, (outcome, started, finished) in zip(claimed, results, strict=True):
            alarm = is_alarm(c.priority)
            t = next_transition(outcome, attempt=c.attempt, alarm=alarm, policy=self.policy,
                                now=now, rng=self.rng)
            records.append(AttemptRecord(
                delivery_id=c.id, attempt=c.attempt, started_at=started, finished_at=finished,
                outcome=outcome.kind.value, status_code=outcome.status_code,
                detail=outcome.detail, retry_after=outcome.retry_after, new_state=t.state,
                not_before=t.not_before, error=t.error, escalate=t.escalate,
                pause_until=t.pause_destination_until,
                correlation_id=outcome.correlation_id
                if t.state is DeliveryState.AWAITING_RECEIPT else None,
                receipt_deadline=t.not_before
                if t.state is DeliveryState.AWAITING_RECEIPT else None,
                transport_ref=outcome.transport_ref
                if t.state is DeliveryState.AWAITING_RECEIPT else None,
            ))
        lost = set(await asyncio.to_thread(self.repo.record_attempts, self.worker, self.name,
                                           records))
        for c, r, (outcome, _, _) in zip(claimed, records, results, strict=True):
            with bound_message(c.message_id, delivery_id=c.id, destination=self.name):
                self._log(c, r, outcome, c.id in lost)
                try:
                    self.hook.hub_delivery_outcome(
                        delivery_id=c.id, destination=self.name, outcome=outcome,
                        state=r.new_state.value, alarm=is_alarm(c.priority))
                except Exception:
                    log.exception("hub_delivery_outcome hook failed")

    def _log(self, c: ClaimedDelivery, r: AttemptRecord, outcome: Outcome, lost: bool) -> None:
        if lost:
            log.warning("outcome recorded after the lease was lost; the delivery was retaken",
                        outcome=outcome.kind.value)
        elif r.new_state is DeliveryState.DELIVERED:
            log.info("delivered", attempt=c.attempt, status=outcome.status_code)
        elif r.new_state is DeliveryState.AWAITING_RECEIPT:
            log.info("accepted; awaiting receipt", attempt=c.attempt,
                     status=outcome.status_code, correlation_id=outcome.correlation_id,
                     deadline=r.not_before)
        elif r.new_state is DeliveryState.DEAD:
            log.error("dead letter: kept until an operator acts", attempt=c.attempt,
                      status=outcome.status_code, reason=outcome.detail,
                      alarm=is_alarm(c.priority))
        elif outcome.kind is OutcomeKind.PAUSE:
            log.error("destination paused", reason=outcome.detail, until=r.not_before)
        elif r.escalate:
            log.error("alarm still undelivered: escalate", attempt=c.attempt,
                      reason=outcome.detail, next_attempt=r.not_before)
        else:
            log.warning("delivery failed; will retry", attempt=c.attempt,
                        status=outcome.status_code, reason=outcome.detail,
                        next_attempt=r.not_before)
