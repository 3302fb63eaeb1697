"""The adapter on its own, its fixtures through the real pipeline (hub.testing), and the
rule that a position never reaches logs, error texts or `tryggbro show` summaries."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tryggbro_location.adapter import LocationAdapter

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import AlarmStatus, Category, StoredMessage
from hub.errors import InputError
from hub.logging import configure_logging
from hub.mappings import MappingStore
from hub.processing import _summary
from hub.replay import replay_path

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "location"


@pytest.fixture(scope="module")
def adapter() -> LocationAdapter:
    return LocationAdapter(AdapterSetup("gps", {}, MappingStore.load(REPO / "mappings")))


def message(data: Any) -> StoredMessage:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return StoredMessage(1, "gps", "k", "application/json", raw, datetime.now(UTC), {}, 1)


def case_input(name: str, n: str = "01.json") -> Any:
    return json.loads((FIXTURES / "cases" / name / n).read_text())


def coordinate_texts() -> set[str]:
    """Every latitude and longitude in the fixtures, as text (e.g. '58.7674')."""
    found = set()
    for path in (FIXTURES / "cases").glob("*/0*.json"):
        position = json.loads(path.read_text()).get("position") or {}
        for key in ("lat", "lon"):
            if isinstance(position.get(key), float):
                found.add(repr(position[key]))
    return found


def test_fixtures_replay_without_differences(tryggbro_replay):
    report = tryggbro_replay(FIXTURES)
    assert len(report.cases) == 13


def test_geofence_exit_is_a_location_alarm_with_position(adapter):
    (event,) = adapter.parse(message(case_input("01-geofence-exit")))
    assert event.category is Category.LOCATION
    assert event.code == "2"
    assert event.snapshot
    assert event.business_key == "SM-ALM-7001"
    assert event.alarm.status is AlarmStatus.RAISED
    assert event.alarm.trigger_text == "Lokaliseringsalarm: forlatt sone «Hjemmesone»"
    assert (event.position.latitude, event.position.longitude) == (58.7674, 5.8602)
    assert event.position.accuracy_m == 12
    assert event.position.at == datetime.fromisoformat("2026-11-20T14:02:51+01:00")


def test_lifecycle_updates_one_case(adapter):
    events = [adapter.parse(message(case_input("03-alarm-lifecycle", f"0{i}.json")))[0]
              for i in (1, 2, 3)]
    assert [e.alarm.status for e in events] == \
        [AlarmStatus.RAISED, AlarmStatus.IN_PROGRESS, AlarmStatus.CLOSED]
    assert {e.business_key for e in events} == {"SM-ALM-7020"}
    assert events[2].alarm.call_out
    assert not events[0].alarm.call_out
    assert events[2].alarm.closed_at == datetime.fromisoformat("2026-11-22T19:04:41+01:00")
    assert events[1].alarm.closed_at is None


def test_position_update_has_no_code_and_device_health_drops_the_position(adapter):
    (update,) = adapter.parse(message(case_input("04-position-update-filtered")))
    assert (update.category, update.kind, update.code) == \
        (Category.LOCATION, "position_update", None)
    assert update.position is not None
    assert update.alarm is None
    (heartbeat,) = adapter.parse(message(case_input("10-heartbeat-filtered")))
    assert heartbeat.category is Category.DEVICE_HEALTH
    assert heartbeat.position is None  # the payload had one; it is not kept
    (battery,) = adapter.parse(message(case_input("11-low-battery-filtered")))
    assert (battery.category, battery.kind) == (Category.DEVICE_HEALTH, "low_battery")


def test_intake_key_and_its_errors(adapter):
    request = IntakeRequest("gps", "application/json", b'{"eventId": "e-1"}', {})
    assert adapter.intake_key(request) == "e-1"
    for content, text in [(b"[]", "a JSON object"), (b'{"eventId": ""}', "eventId: required"),
                          (b"{", "invalid JSON")]:
        with pytest.raises(InputError, match=text):
            adapter.intake_key(IntakeRequest("gps", "application/json", content, {}))


@pytest.mark.parametrize(("position", "expected"), [
    ({"accuracy": 35}, r"position\.lat: Field required; position\.lon: Field required"),
    ({"lat": 91.5, "lon": 10.1}, r"position\.lat: Input should be less than or equal to 90"),
    ({"lat": 59.9, "lon": -180.25}, r"position\.lon: Input should be greater than or equal"),
    ({"lat": "59.91", "lon": 10.1}, r"position\.lat: Input should be a valid number"),
])
def test_bad_coordinates_fail_naming_the_field_not_the_value(adapter, position, expected):
    data = case_input("02-sos-with-position") | {"position": position}
    with pytest.raises(InputError, match=expected) as caught:
        adapter.parse(message(data))
    for value in position.values():
        assert str(value) not in str(caught.value)


def test_type_needs_its_object(adapter):
    data = case_input("02-sos-with-position")
    del data["alarm"]
    with pytest.raises(InputError, match="eventType sos needs an 'alarm' object"):
        adapter.parse(message(data))
    data = case_input("04-position-update-filtered")
    del data["position"]
    with pytest.raises(InputError, match="position_update needs a 'position' object"):
        adapter.parse(message(data))


def test_summaries_carry_no_position(adapter):
    coordinates = coordinate_texts()
    for name in ("01-geofence-exit", "02-sos-with-position", "04-position-update-filtered"):
        (event,) = adapter.parse(message(case_input(name)))
        assert event.position is not None
        text = json.dumps(_summary(event))
        assert not any(c in text for c in coordinates), name


def test_positions_never_reach_the_logs(tryggbro_plugins):
    """Replay every case (intake, parse, route, map, validate; failures included) with the
    hub's own logging at DEBUG captured: no coordinate appears in any line or reason."""
    coordinates = coordinate_texts()
    assert {"58.7674", "5.8602", "591.2734"} <= coordinates
    stream = io.StringIO()
    configure_logging("debug", redaction_key=b"test-key", stream=stream)
    try:
        report = replay_path(FIXTURES, plugins=tryggbro_plugins)
    finally:
        logging.getLogger().handlers.clear()
    assert report.ok, report.format()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(line["event"] == "message processed" for line in lines)
    held = [line for line in lines if line["event"] == "message held"]
    assert any("position.lat" in line["reason"] for line in held)  # the failed cases
    assert not any(c in stream.getvalue() for c in coordinates)
    reasons = [r.get("reason") or "" for p in (FIXTURES / "cases").glob("*/expected.json")
               for r in json.loads(p.read_text())]
    assert not any(c in reason for c in coordinates for reason in reasons)
