"""The adapter on its own, and its fixtures through the real pipeline (hub.testing)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tryggbro_alarmplatform.adapter import AlarmPlatformAdapter

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import AlarmStatus, Category, StoredMessage
from hub.errors import InputError, MappingError
from hub.mappings import MappingStore

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "alarmplatform"


@pytest.fixture(scope="module")
def adapter():
    return AlarmPlatformAdapter(AdapterSetup("alarmplatform", {},
                                             MappingStore.load(REPO / "mappings")))


def message(data):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return StoredMessage(1, "alarmplatform", "k", "application/json", raw,
                         datetime.now(UTC), {}, 1)


def case_input(name, n="01.json"):
    return json.loads((FIXTURES / "cases" / name / n).read_text())


def test_fixtures_replay_without_differences(tryggbro_replay):
    report = tryggbro_replay(FIXTURES)
    assert len(report.cases) == 18


def test_lifecycle_statuses_and_timeline_codes(adapter):
    raised, handled, acked = (case_input("02-alarm-lifecycle", f"0{i}.json") for i in (1, 2, 3))
    (e1,) = adapter.parse(message(raised))
    (e2,) = adapter.parse(message(handled))
    (e3,) = adapter.parse(message(acked))
    assert [e.alarm.status for e in (e1, e2, e3)] == \
        [AlarmStatus.RAISED, AlarmStatus.IN_PROGRESS, AlarmStatus.CLOSED]
    assert {e.business_key for e in (e1, e2, e3)} == {"ALM-1002"}
    assert all(e.snapshot and e.category is Category.SAFETY_ALARM and e.code == "3"
               for e in (e1, e2, e3))
    assert [t.code for t in e3.alarm.timeline] == ["0", "1", "8", "4", "5", "3"]
    assert e3.alarm.call_out
    assert not e1.alarm.call_out
    assert e3.alarm.closed_at == e3.alarm.timeline[-1].at  # from the acknowledged step
    assert e2.alarm.closed_at is None
    assert e3.alarm.response_centre.org_number == "999888777"


def test_device_events_are_device_health(adapter):
    (event,) = adapter.parse(message(case_input("05-heartbeat-filtered")))
    assert event.category is Category.DEVICE_HEALTH
    assert event.kind == "device.heartbeat"
    assert event.alarm is None


def test_intake_key_and_its_errors(adapter):
    request = IntakeRequest("alarmplatform", "application/json",
                            json.dumps({"eventId": "evt-9"}).encode(), {})
    assert adapter.intake_key(request) == "evt-9"
    for content, text in [(b"[]", "a JSON object"), (b'{"eventId": 5}', "eventId: required"),
                          (b"{", "invalid JSON")]:
        with pytest.raises(InputError, match=text):
            adapter.intake_key(IntakeRequest("alarmplatform", "application/json", content, {}))


def test_parse_errors_name_the_field(adapter):
    with pytest.raises(InputError, match=r"alarm\.raisedAt: Field required"):
        adapter.parse(message(case_input("08-missing-fields-fail")))
    event = case_input("01-alarm-raised")
    del event["alarm"]
    with pytest.raises(InputError, match=r"type alarm\.raised needs an 'alarm' object"):
        adapter.parse(message(event))


def test_unknown_timeline_step_names_the_table(adapter):
    with pytest.raises(MappingError, match=r"alarmplatform.toml \[timeline_steps\] has no "
                                           r"mapping for 'drone_dispatched'"):
        adapter.parse(message(case_input("10-unknown-timeline-step-fails")))
