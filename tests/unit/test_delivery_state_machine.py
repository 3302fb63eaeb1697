"""The delivery state machine: every outcome, alarms vs ordinary deliveries."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from hub.domain.delivery import (
    MAX_RETRY_AFTER_SECONDS,
    RetryPolicy,
    next_transition,
    parse_retry_after,
)
from hub.domain.model import DeliveryState, Outcome

NOW = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
POLICY = RetryPolicy(base_seconds=1, cap_seconds=900, alarm_cap_seconds=60, max_attempts=5,
                     escalate_after_attempts=3, pause_seconds=60)


def step(outcome, attempt=1, alarm=False, seed=1):
    return next_transition(outcome, attempt=attempt, alarm=alarm, policy=POLICY, now=NOW,
                           rng=random.Random(seed))


def test_delivered_is_terminal_without_error():
    t = step(Outcome.delivered("ok", 200))
    assert t.state is DeliveryState.DELIVERED
    assert t.error is None


def test_rejected_goes_to_dead_letter_and_alarms_escalate():
    ordinary = step(Outcome.rejected("HTTP 400: bad code", 400))
    alarm = step(Outcome.rejected("HTTP 400: bad code", 400), alarm=True)
    assert ordinary.state is DeliveryState.DEAD
    assert not ordinary.escalate
    assert alarm.state is DeliveryState.DEAD
    assert alarm.escalate
    assert "bad code" in alarm.error


def test_retry_backs_off_exponentially_within_jitter_bounds():
    for attempt in range(1, 5):
        exp = min(900, 2 ** (attempt - 1))
        for seed in range(50):
            t = step(Outcome.retry("503"), attempt=attempt, seed=seed)
            delay = (t.not_before - NOW).total_seconds()
            assert exp / 2 <= delay <= exp, (attempt, delay)
            assert t.state is DeliveryState.PENDING


def test_backoff_never_exceeds_its_cap():
    policy = RetryPolicy(base_seconds=1, cap_seconds=900, max_attempts=1000)
    for attempt in (20, 60, 999):
        delay = policy.backoff(attempt, alarm=False, rng=random.Random(attempt))
        assert 450 <= delay <= 900
        assert 30 <= policy.backoff(attempt, alarm=True, rng=random.Random(attempt)) <= 60


def test_ordinary_delivery_gives_up_after_max_attempts():
    t = step(Outcome.retry("timeout"), attempt=POLICY.max_attempts)
    assert t.state is DeliveryState.DEAD
    assert "gave up after 5 attempts" in t.error


def test_throttling_429_never_dead_letters():
    t = step(Outcome.retry("HTTP 429", 429, 30.0), attempt=POLICY.max_attempts + 10)
    assert t.state is DeliveryState.PENDING
    assert t.not_before - NOW >= timedelta(seconds=30)
    assert step(Outcome.retry("HTTP 503", 503), attempt=POLICY.max_attempts).state \
        is DeliveryState.DEAD


def test_alarm_never_dies_on_transient_errors_and_caps_at_alarm_cap():
    for attempt in (5, 50, 5000):
        t = step(Outcome.retry("connection refused"), attempt=attempt, alarm=True)
        assert t.state is DeliveryState.PENDING
        assert (t.not_before - NOW) <= timedelta(seconds=POLICY.alarm_cap_seconds)
        assert t.escalate  # past escalate_after_attempts


def test_alarm_escalates_only_after_threshold():
    assert not step(Outcome.retry("x"), attempt=2, alarm=True).escalate
    assert step(Outcome.retry("x"), attempt=3, alarm=True).escalate


def test_retry_after_is_honoured_and_bounded():
    t = step(Outcome.retry("429", 429, retry_after=120), attempt=1, alarm=True)
    assert (t.not_before - NOW).total_seconds() >= 120
    t = step(Outcome.retry("429", 429, retry_after=10**9), attempt=1)
    assert (t.not_before - NOW).total_seconds() <= MAX_RETRY_AFTER_SECONDS


def test_pause_holds_the_delivery_and_the_destination():
    t = step(Outcome.pause("HTTP 401", 401))
    assert t.state is DeliveryState.PENDING
    assert t.pause_destination_until == NOW + timedelta(seconds=60)
    assert t.not_before == t.pause_destination_until
    assert t.escalate


@pytest.mark.parametrize(("header", "expected"), [
    ("30", 30.0),
    (" 0 ", 0.0),
    ("Fri, 20 Nov 2026 21:02:00 GMT", 120.0),
    ("Fri, 20 Nov 2026 20:00:00 GMT", 0.0),  # in the past: no wait
    ("soon", None),
    ("", None),
    (None, None),
])
def test_parse_retry_after(header, expected):
    assert parse_retry_after(header, NOW) == expected
