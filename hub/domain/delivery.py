"""The delivery state machine: what happens to a delivery after each outcome.

Pure: the caller supplies the clock and the random source, so every branch is testable.
Policy (reliability.md §3.2, goal R8): alarms retry without limit with a short cap and
are never dead-lettered for transient errors; other deliveries retry up to a limit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from hub.domain.model import DeliveryState, Outcome, OutcomeKind

# Retry-After beyond this is treated as this: a misbehaving server must not park an
# alarm for days.
MAX_RETRY_AFTER_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 1.0
    cap_seconds: float = 900.0  # 15 min for ordinary deliveries
    alarm_cap_seconds: float = 60.0
    max_attempts: int = 25  # ordinary deliveries only; alarms have no limit
    escalate_after_attempts: int = 5  # alarms still undelivered after this many: escalate
    pause_seconds: float = 60.0  # a paused destination is probed again after this

    def backoff(self, attempt: int, alarm: bool, rng: random.Random) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random.

        Never zero (unlike full jitter), so a flapping receiver is not hammered.
        """
        cap = self.alarm_cap_seconds if alarm else self.cap_seconds
        exp = min(cap, self.base_seconds * (2 ** max(0, attempt - 1)))
        return float(exp / 2 + rng.uniform(0, exp / 2))


@dataclass(frozen=True, slots=True)
class Transition:
    """The new state of a delivery after one attempt."""

    state: DeliveryState
    not_before: datetime
    error: str | None
    escalate: bool = False  # an alarm that keeps failing: page a human
    pause_destination_until: datetime | None = None


def next_transition(
    outcome: Outcome,
    *,
    attempt: int,
    alarm: bool,
    policy: RetryPolicy,
    now: datetime,
    rng: random.Random,
) -> Transition:
    """Decide the delivery's next state from one attempt's outcome."""
    if outcome.kind is OutcomeKind.DELIVERED:
        return Transition(DeliveryState.DELIVERED, now, None)
    if outcome.kind is OutcomeKind.AWAITING:
        if outcome.correlation_id is None or outcome.deadline is None:
            return Transition(DeliveryState.PENDING, now + timedelta(seconds=policy.base_seconds),
                              "awaiting outcome without correlation id or deadline")
        return Transition(DeliveryState.AWAITING_RECEIPT, outcome.deadline, None)
    if outcome.kind is OutcomeKind.REJECTED:
        return Transition(DeliveryState.DEAD, now, outcome.detail, escalate=alarm)
    if outcome.kind is OutcomeKind.PAUSE:
        wait = max(policy.pause_seconds, _bounded(outcome.retry_after))
        until = now + timedelta(seconds=wait)
        return Transition(
            DeliveryState.PENDING, until, outcome.detail, escalate=True,
            pause_destination_until=until,
        )
    # RETRY. A 429 is the server throttling us, not a failure: it never dead-letters.
    if not alarm and attempt >= policy.max_attempts and outcome.status_code != 429:
        return Transition(
            DeliveryState.DEAD, now, f"gave up after {attempt} attempts: {outcome.detail}"
        )
    delay = max(policy.backoff(attempt, alarm, rng), _bounded(outcome.retry_after))
    escalate = alarm and attempt >= policy.escalate_after_attempts
    return Transition(
        DeliveryState.PENDING, now + timedelta(seconds=delay), outcome.detail, escalate
    )


def _bounded(retry_after: float | None) -> float:
    if retry_after is None or retry_after < 0:
        return 0.0
    return min(retry_after, MAX_RETRY_AFTER_SECONDS)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date, RFC 9110)."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
