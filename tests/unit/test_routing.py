"""Routing rules: first match wins; decisions of several plugins combine safely."""

from datetime import UTC, datetime

from hub.domain.model import Category, DeviceRef, Enrolment, Event, PersonId
from hub.domain.routing import RouteAction, RouteDecision, RouteMatch, RouteRule, evaluate

WHEN = datetime(2026, 11, 20, tzinfo=UTC)


def event(category=Category.SAFETY_ALARM, code="3", kind="alarm.raised", severity="high"):
    return Event(source="vendor", business_key="a1", kind=kind, category=category,
                 occurred_at=WHEN, device=DeviceRef("d1"), code=code, severity=severity)


ENROLMENT = Enrolment("vendor", "d1", PersonId("urn:oid:2.16.578.1.12.4.1.4.1", "01819012012"),
                      "0301")
RULES = [
    RouteRule("tests", RouteMatch(kinds=("device.*",)), RouteAction.FILTER),
    RouteRule("oslo-supervision", RouteMatch(codes=("4.*",), municipalities=("0301",)),
              RouteAction.DELIVER, ("ehr",)),
    RouteRule("alarms", RouteMatch(categories=("safety_alarm",)), RouteAction.DELIVER,
              ("ehr", "response-centre"), priority=120),
]


def test_first_match_wins_and_carries_rule_name_and_priority():
    d = evaluate(RULES, event(), ENROLMENT)
    assert d == RouteDecision(RouteAction.DELIVER, ("alarms",), ("ehr", "response-centre"), 120)


def test_glob_kinds_filter():
    d = evaluate(RULES, event(category=Category.DEVICE_HEALTH, kind="device.heartbeat",
                              code=None), ENROLMENT)
    assert d is not None
    assert d.action is RouteAction.FILTER
    assert d.rules == ("tests",)


def test_code_globs_and_municipality_need_an_enrolment():
    supervision = event(category=Category.SUPERVISION, code="4.1")
    assert evaluate(RULES, supervision, ENROLMENT).rules == ("oslo-supervision",)
    assert evaluate(RULES, supervision, None) is None  # no enrolment: no municipality
    assert evaluate(RULES, event(category=Category.SUPERVISION, code=None), ENROLMENT) is None


def test_no_match_is_none():
    assert evaluate(RULES, event(category=Category.MEDICATION, code="1.1"), ENROLMENT) is None


def test_combine_deliver_beats_filter_and_unites_destinations():
    filt = RouteDecision(RouteAction.FILTER, ("quiet-hours",))
    a = RouteDecision(RouteAction.DELIVER, ("r1",), ("ehr",), 50)
    b = RouteDecision(RouteAction.DELIVER, ("r2",), ("vkp", "ehr"), 100)
    combined = RouteDecision.combine([filt, None, a, b])
    assert combined == RouteDecision(RouteAction.DELIVER, ("r1", "r2"), ("ehr", "vkp"), 100)
    assert RouteDecision.combine([filt, None]).action is RouteAction.FILTER
    assert RouteDecision.combine([None, None]) is None
