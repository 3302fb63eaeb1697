"""The crash suite's checker can fail: lost, duplicate effect, unexpected, order."""

from __future__ import annotations

from tests.chaos.checker import Received, Sent, check


def sent(msg: str, seq: int, key: str = "p1", acked: bool = True,
         **effects: str) -> Sent:
    return Sent(msg, key, seq, acked, {d: frozenset([e]) for d, e in effects.items()})


MSGS = [sent("m1", 1, ehr="DetectedIssue/a", vitals="b1"),
        sent("m2", 2, ehr="Observation/b", vitals="b2"),
        sent("m3", 1, key="p2", ehr="MedicationDispense/c")]
ALL = [Received("ehr", "DetectedIssue/a", "DetectedIssue/a"), Received("vitals", "b1", "TB1"),
       Received("ehr", "MedicationDispense/c", "MedicationDispense/c"),
       Received("ehr", "Observation/b", "Observation/b"), Received("vitals", "b2", "TB2")]


def test_everything_received_once_in_order_passes():
    verdict = check(MSGS, ALL)
    assert verdict.ok, verdict
    assert verdict.summary()["lost"] == 0
    assert verdict.acked == 3


def test_a_missing_effect_of_an_acked_message_is_lost():
    verdict = check(MSGS, [r for r in ALL if r.effect != "b2"])
    assert not verdict.ok
    assert verdict.lost == [("m2", "vitals", "b2")]


def test_an_unacknowledged_message_may_be_missing_and_counts_as_recovered_when_not():
    unacked = [sent("m1", 1, acked=False, ehr="DetectedIssue/a"),
               sent("m9", 2, acked=False, ehr="DetectedIssue/z")]
    verdict = check(unacked, [Received("ehr", "DetectedIssue/a", "DetectedIssue/a")])
    assert verdict.ok
    assert verdict.recovered == 1
    assert verdict.lost == []


def test_one_effect_under_two_request_ids_is_a_duplicate_effect():
    verdict = check(MSGS, [*ALL, Received("vitals", "b1", "TB7")])
    assert not verdict.ok
    assert verdict.duplicate_effects == [("vitals", "b1", ["TB1", "TB7"])]


def test_the_same_request_again_is_reported_not_failed():
    verdict = check(MSGS, [Received("ehr", "DetectedIssue/a", "DetectedIssue/a"), *ALL])
    assert verdict.ok
    assert verdict.duplicate_requests == 1


def test_an_effect_nobody_sent_is_unexpected():
    verdict = check(MSGS, [*ALL, Received("ehr", "DetectedIssue/zz", "DetectedIssue/zz")])
    assert verdict.unexpected == [("ehr", "DetectedIssue/zz")]
    assert not verdict.ok


def test_a_later_message_first_breaks_per_key_order():
    swapped = [ALL[3], ALL[0], *ALL[1:3], ALL[4]]  # m2's Observation before m1's issue
    verdict = check(MSGS, swapped)
    assert verdict.order_violations == [("ehr", "p1", "m1", "m2")]
    assert not verdict.ok


def test_a_stale_resend_after_a_later_message_breaks_order():
    verdict = check(MSGS, [*ALL, Received("ehr", "DetectedIssue/a", "DetectedIssue/a")])
    assert verdict.order_violations == [("ehr", "p1", "m1", "m2")]


def test_order_is_per_destination_and_key():
    # p2's message before p1's, and vitals in another order than ehr: all fine.
    reordered = [ALL[2], ALL[1], ALL[0], ALL[4], ALL[3]]
    assert check(MSGS, reordered).ok
