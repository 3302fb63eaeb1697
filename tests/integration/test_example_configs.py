"""The shipped configuration examples load with every plugin, and route as they say."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.config import load_config
from hub.domain.model import Category, DeviceRef, Enrolment, Event, PersonId
from hub.domain.privacy import FNR_SYSTEM
from hub.domain.routing import RouteAction, evaluate
from hub.runtime import Hub

ROOT = Path(__file__).resolve().parents[2]
BERGEN = Enrolment("x", "d", PersonId(FNR_SYSTEM, "01819012012"), "4601")
OSLO = Enrolment("x", "d", PersonId(FNR_SYSTEM, "01819012012"), "0301")


def event(category: Category, kind: str = "k", code: str | None = None,
          severity: str | None = None) -> Event:
    return Event(source="x", business_key="b", kind=kind, category=category,
                 occurred_at=datetime(2026, 11, 22, tzinfo=UTC), device=DeviceRef("d"),
                 code=code, severity=severity)


@pytest.fixture
def municipality(tmp_path):
    config = load_config(ROOT / "examples" / "municipality.toml")
    hub = Hub.build(config, database_url=f"sqlite:///{tmp_path}/hub.db", with_sources=False)
    yield hub
    hub.close()


@pytest.mark.parametrize(("ev", "enrolment", "expected"), [
    (event(Category.SAFETY_ALARM, code="3"), BERGEN, ("response-centre", "ehr")),
    (event(Category.NURSE_CALL, code="7.1"), BERGEN, ("response-centre", "ehr")),
    (event(Category.MEDICATION, code="1.20"), BERGEN, ("response-centre", "ehr")),
    (event(Category.MEDICATION, code="1.7"), BERGEN, ("ehr",)),
    (event(Category.HOME_FOLLOW_UP, code="5.1", severity="high"), BERGEN,
     ("response-centre", "ehr", "gp")),
    (event(Category.HOME_FOLLOW_UP, kind="gp_answer"), BERGEN, ("ehr",)),
    (event(Category.SAFETY_ALARM, kind="receipt_overdue", code="3"), BERGEN, ("ehr",)),
    (event(Category.HOME_FOLLOW_UP, code="5.1", severity="moderate"), BERGEN, ("ehr",)),
    (event(Category.DOOR_LOCK, kind="unlocked"), BERGEN, ("ehr",)),
    (event(Category.DOOR_LOCK, kind="unlocked.no_staff"), BERGEN, None),
    (event(Category.LOCATION, kind="position_update"), BERGEN, None),
    (event(Category.DEVICE_HEALTH, kind="heartbeat"), None, None),
    (event(Category.PATIENT_ADMINISTRATION, kind="adt.discharge"), BERGEN, ("home-care", "ehr")),
    (event(Category.PATIENT_ADMINISTRATION, kind="adt.admit"), BERGEN, ("ehr",)),
    (event(Category.LABORATORY, kind="lab.result"), BERGEN, ("ehr",)),
])
def test_the_municipality_example_routes_each_category(municipality, ev, enrolment, expected):
    decision = evaluate(municipality.rules, ev, enrolment)
    assert decision is not None
    if expected is None:
        assert decision.action is RouteAction.FILTER
    else:
        assert (decision.action, decision.destinations) == (RouteAction.DELIVER, expected)


def test_another_municipalitys_alarm_matches_no_route_and_is_held(municipality):
    assert evaluate(municipality.rules, event(Category.SAFETY_ALARM, code="3"), OSLO) is None
