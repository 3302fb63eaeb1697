"""The adapter on its own, its fixtures through the real pipeline (hub.testing), and the
rule that staff ids never reach logs, error texts or `tryggbro show` summaries."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tryggbro_doorlock.adapter import HPR_SYSTEM, DoorLockAdapter

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import Category, StoredMessage
from hub.errors import InputError, MappingError
from hub.logging import configure_logging
from hub.mappings import MappingStore
from hub.processing import _summary
from hub.replay import replay_path

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "doorlock"
STAFF_IDS = ("9144900", "E-40417", "Åse Bjørnø")


@pytest.fixture(scope="module")
def adapter() -> DoorLockAdapter:
    return DoorLockAdapter(AdapterSetup("doorlock", {}, MappingStore.load(REPO / "mappings")))


def message(data: Any) -> StoredMessage:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return StoredMessage(1, "doorlock", "k", "application/json", raw, datetime.now(UTC), {}, 1)


def case_input(name: str, n: str = "01.json") -> Any:
    return json.loads((FIXTURES / "cases" / name / n).read_text())


def test_fixtures_replay_without_differences(tryggbro_replay):
    report = tryggbro_replay(FIXTURES)
    assert len(report.cases) == 11


def test_staff_unlock_records_who_and_when(adapter):
    (event,) = adapter.parse(message(case_input("01-staff-unlock")))
    assert (event.category, event.kind, event.code) == (Category.DOOR_LOCK, "unlocked", None)
    assert event.snapshot
    assert event.business_key == "V-88001"
    access = event.access
    assert (access.outcome, access.method) == ("unlocked", "app")
    assert (access.staff.system, access.staff.value) == (HPR_SYSTEM, "9144900")
    assert access.visit_start == datetime.fromisoformat("2026-11-20T07:45:12+01:00")


def test_lock_closes_the_same_visit(adapter):
    first, second = (adapter.parse(message(case_input("02-staff-visit-unlock-lock", n)))[0]
                     for n in ("01.json", "02.json"))
    assert first.business_key == second.business_key == "V-88010"
    assert second.access.outcome == "locked"
    assert second.access.staff.system == "urn:tryggbro:staff:doorlock"
    assert second.access.method == "key-card"
    assert second.access.visit_end == datetime.fromisoformat("2026-11-20T12:31:05+01:00")


@pytest.mark.parametrize(("case", "outcome", "severity"), [
    ("03-forced-opening", "forced", "high"),
    ("04-failed-attempts", "failed", "moderate"),
])
def test_forced_and_failed_are_issues_6(adapter, case, outcome, severity):
    (event,) = adapter.parse(message(case_input(case)))
    assert event.code == "6"
    assert (event.access.outcome, event.severity) == (outcome, severity)
    assert not event.snapshot


def test_door_use_without_staff_is_its_own_kind(adapter):
    (event,) = adapter.parse(message(case_input("09-unlock-without-staff-filtered")))
    assert (event.kind, event.code, event.access.staff) == ("unlocked.no_staff", None, None)
    assert event.access.method == "key"


def test_unknown_event_type_names_the_table(adapter):
    with pytest.raises(MappingError, match=r"doorlock.toml \[event_types\] has no mapping "
                                           r"for 'tamper_alarm'"):
        adapter.parse(message(case_input("08-unknown-event-type-fails")))


def test_bad_staff_ids_fail_without_the_value(adapter):
    data = case_input("01-staff-unlock")
    data["staff"] = {"id": "91449001234", "idType": "hpr"}
    with pytest.raises(InputError, match="an HPR number is 1 to 9 digits") as caught:
        adapter.parse(message(data))
    assert "91449001234" not in str(caught.value)
    data["staff"] = {"id": "9144900", "idType": "badge"}
    with pytest.raises(InputError, match=r"staff\.idType: Input should be 'hpr' or 'employee'"):
        adapter.parse(message(data))


def test_intake_key_and_its_errors(adapter):
    request = IntakeRequest("doorlock", "application/json", b'{"eventId": "e-1"}', {})
    assert adapter.intake_key(request) == "e-1"
    for content, text in [(b"[]", "a JSON object"), (b'{"eventId": 1}', "eventId: required")]:
        with pytest.raises(InputError, match=text):
            adapter.intake_key(IntakeRequest("doorlock", "application/json", content, {}))


def test_staff_ids_never_reach_logs_or_summaries(adapter, tryggbro_plugins):
    for name in ("01-staff-unlock", "02-staff-visit-unlock-lock"):
        (event,) = adapter.parse(message(case_input(name)))
        assert event.access.staff is not None
        assert not any(s in json.dumps(_summary(event), ensure_ascii=False) for s in STAFF_IDS)
    stream = io.StringIO()
    configure_logging("debug", redaction_key=b"test-key", stream=stream)
    try:
        report = replay_path(FIXTURES, plugins=tryggbro_plugins)
    finally:
        logging.getLogger().handlers.clear()
    assert report.ok, report.format()
    out = stream.getvalue()
    assert "message processed" in out
    assert not any(s in out for s in STAFF_IDS)
