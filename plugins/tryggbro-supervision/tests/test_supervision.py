"""The adapter on its own, and its fixtures through the real pipeline (hub.testing)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tryggbro_supervision.adapter import SupervisionAdapter

from hub.builtin.vkp_mapping import alarm_case
from hub.contracts import AdapterSetup, IntakeRequest, MapContext
from hub.domain.model import (
    AlarmStatus,
    Category,
    EncounterReason,
    Enrolment,
    PersonId,
    StoredMessage,
)
from hub.errors import InputError, MappingError
from hub.mappings import MappingStore

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "supervision"
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"


@pytest.fixture(scope="module")
def mappings():
    return MappingStore.load(REPO / "mappings")


@pytest.fixture(scope="module")
def adapter(mappings):
    return SupervisionAdapter(AdapterSetup("supervision", {}, mappings))


def message(data):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return StoredMessage(1, "supervision", "k", "application/json", raw,
                         datetime.now(UTC), {}, 1)


def case_input(name, n="01.json"):
    return json.loads((FIXTURES / "cases" / name / n).read_text(encoding="utf-8"))


def mapped(event, mappings):
    enrolment = Enrolment("supervision", event.device.id, PersonId(FNR, "01819012012"), "0301")
    ctx = MapContext(1, "k", 0, enrolment, mappings)
    return {r["resourceType"]: r for r in alarm_case(event, event.alarm, ctx)}


def test_fixtures_replay_without_differences(tryggbro_replay):
    report = tryggbro_replay(FIXTURES)
    assert len(report.cases) == 15


@pytest.mark.parametrize(("case", "code"), [
    ("01-fall-raised", "4.1"), ("02-left-bed-lifecycle", "4.2"),
    ("03-inactivity-wristband", "4.9"), ("04-door-opened-closed", "4.15"),
    ("05-camera-event-anonymised", "4.25"), ("06-planned-camera-follow-up", "4.26"),
])
def test_sensor_types_become_alert_codes(adapter, case, code):
    (event,) = adapter.parse(message(case_input(case)))
    assert event.category is Category.SUPERVISION
    assert event.code == code
    assert event.snapshot
    assert event.alarm.digital


def test_lifecycle_statuses_timeline_and_mode(adapter):
    events = [adapter.parse(message(case_input("02-left-bed-lifecycle", f"0{i}.json")))[0]
              for i in (1, 2, 3)]
    assert [e.alarm.status for e in events] == \
        [AlarmStatus.RAISED, AlarmStatus.IN_PROGRESS, AlarmStatus.CLOSED]
    assert {e.business_key for e in events} == {"RM-A-10002"}
    # Before anyone looked in, the anonymised camera decides; then the latest look-in.
    assert [e.alarm.encounter_mode for e in events] == ["0", "0", "2"]
    assert [t.code for t in events[2].alarm.timeline] == ["1", "1", "8", "3"]
    assert events[2].alarm.closed_at == events[2].alarm.timeline[-1].at
    assert events[2].alarm.operator_id == "ans-2231"
    assert events[0].alarm.reason is EncounterReason.EVENT_BASED


def test_event_based_camera_is_a_digital_encounter(adapter, mappings):
    (event,) = adapter.parse(message(case_input("05-camera-event-anonymised")))
    resources = mapped(event, mappings)
    assert set(resources) == {"DetectedIssue", "Encounter", "Composition"}
    enc = resources["Encounter"]
    assert enc["meta"]["profile"] == [
        "http://ehelse.no/fhir/StructureDefinition/vkp-digital-Encounter-v090"]
    assert enc["class"]["code"] == "VR"
    assert enc["reasonCode"][0]["coding"][0]["code"] == "2"
    assert enc["participant"][0]["type"][0]["coding"][0]["code"] == "0"
    assert enc["type"][0]["coding"][0]["code"] == "4.25"
    assert resources["Composition"]["title"] == "Digitalt tilsyn – hendelsesforløp"


def test_planned_round_with_nothing_found_is_an_encounter_only(adapter, mappings):
    (event,) = adapter.parse(message(case_input("07-planned-round-nothing-found")))
    assert event.code is None
    assert event.alarm.reason is EncounterReason.PLANNED
    resources = mapped(event, mappings)
    assert set(resources) == {"Encounter", "Composition"}
    enc = resources["Encounter"]
    assert enc["status"] == "finished"
    assert enc["reasonCode"][0]["coding"][0]["code"] == "1"
    assert "type" not in enc


def test_an_event_based_alarm_without_code_still_fails_in_the_mapping(adapter, mappings):
    from dataclasses import replace
    (event,) = adapter.parse(message(case_input("01-fall-raised")))
    with pytest.raises(MappingError, match="has no vkp-alert-code"):
        mapped(replace(event, code=None), mappings)


def test_planned_follow_up_is_4_26(adapter, mappings):
    (event,) = adapter.parse(message(case_input("06-planned-camera-follow-up")))
    resources = mapped(event, mappings)
    assert resources["DetectedIssue"]["code"]["coding"][0]["code"] == "4.26"
    assert resources["DetectedIssue"]["status"] == "final"
    assert resources["Encounter"]["reasonCode"][0]["coding"][0]["code"] == "1"


def test_heartbeat_is_device_health(adapter):
    (event,) = adapter.parse(message(case_input("13-heartbeat-filtered")))
    assert event.category is Category.DEVICE_HEALTH
    assert event.kind == "heartbeat"
    assert event.device.id == "RM-S-1001"
    assert event.alarm is None


def test_intake_key_and_its_errors(adapter):
    request = IntakeRequest("supervision", "application/json",
                            json.dumps({"eventId": "rm-9"}).encode(), {})
    assert adapter.intake_key(request) == "rm-9"
    for content, text in [(b"[]", "a JSON object"), (b'{"eventId": ""}', "eventId: required"),
                          (b"{", "invalid JSON")]:
        with pytest.raises(InputError, match=text):
            adapter.intake_key(IntakeRequest("supervision", "application/json", content, {}))


def test_parse_errors_name_the_field(adapter):
    with pytest.raises(InputError, match=r"alert\.detectedAt: Field required"):
        adapter.parse(message(case_input("14-missing-fields-fail")))
    data = case_input("01-fall-raised")
    data["alert"]["finding"] = "none"
    with pytest.raises(InputError, match="only a planned supervision has a finding"):
        adapter.parse(message(data))
    data = case_input("07-planned-round-nothing-found")
    del data["alert"]["finding"]
    with pytest.raises(InputError, match=r"supervision\.completed needs"):
        adapter.parse(message(data))


def test_unknown_codes_name_the_table(adapter):
    with pytest.raises(MappingError, match=r"supervision.toml \[event_types\] has no "
                                           r"mapping for 'smell_detected'"):
        adapter.parse(message(case_input("10-unknown-sensor-type-fails")))
    with pytest.raises(MappingError, match=r"\[look_in_methods\] has no mapping"):
        adapter.parse(message(case_input("15-unknown-look-in-method-fails")))
