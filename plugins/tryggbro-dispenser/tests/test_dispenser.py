"""The adapter on its own, and its fixtures through the real pipeline (hub.testing)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tryggbro_dispenser.adapter import HPR_SYSTEM, DispenserAdapter

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import Category, StoredMessage
from hub.errors import ConfigError, InputError, MappingError
from hub.mappings import MappingStore

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "dispenser"


@pytest.fixture(scope="module")
def adapter():
    return DispenserAdapter(AdapterSetup("dispenser", {}, MappingStore.load(REPO / "mappings")))


def message(data):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return StoredMessage(1, "dispenser", "k", "application/json", raw, datetime.now(UTC), {}, 1)


def case_input(name, n="01.json"):
    return json.loads((FIXTURES / "cases" / name / n).read_text(encoding="utf-8"))


def test_fixtures_replay_without_differences(tryggbro_replay):
    report = tryggbro_replay(FIXTURES)
    assert len(report.cases) == 19


def test_dispenses_carry_their_category_and_helper(adapter):
    (plain,) = adapter.parse(message(case_input("01-dispensed-unassisted")))
    (helped,) = adapter.parse(message(case_input("02-dispensed-assisted")))
    (prn,) = adapter.parse(message(case_input("03-as-needed")))
    assert [e.dispense.category for e in (plain, helped, prn)] == ["1.1", "1.2", "1.3"]
    assert all(e.category is Category.MEDICATION and e.kind == "dispense" and e.code is None
               for e in (plain, helped, prn))
    assert plain.business_key == "dose:PP000533-20261121-0800"
    assert plain.dispense.assisted_by is None
    assert helped.dispense.assisted_by.system == HPR_SYSTEM
    assert helped.dispense.assisted_by.value == "9144900"
    assert prn.dispense.planned_at is None
    assert plain.device.id == "PP000533"
    assert plain.device.location == "Kjøkken"


def test_alerts_are_plain_issues_with_severity_and_coded_detail(adapter):
    (missed,) = adapter.parse(message(case_input("04-not-dispensed")))
    (roll,) = adapter.parse(message(case_input("06-roll-error-fault")))
    (lid,) = adapter.parse(message(case_input("07-dispenser-open")))
    (battery,) = adapter.parse(message(case_input("08-battery-low")))
    assert [(e.code, e.severity) for e in (missed, roll, lid, battery)] == \
        [("1.1", "high"), ("1.7", "high"), ("1.21", "moderate"), ("1.17", "low")]
    assert all(e.dispense is None and e.alarm is None and e.kind == "issue"
               for e in (missed, roll, lid, battery))
    assert missed.detail == "Medisindispenser: Ikke utlevert, planlagt dose 21.11.2026 08:00"
    assert roll.detail == ("Medisindispenser: Feil på rull, planlagt dose 21.11.2026 12:00 "
                           "(feilkode E-ROLL-07)")
    assert "not advancing" not in roll.detail  # vendor free text stays out
    assert missed.business_key == "dose:PP000533-20261121-0802:1.1"
    assert lid.business_key == "event:evd-0701"


def test_heartbeat_is_device_health(adapter):
    (event,) = adapter.parse(message(case_input("16-heartbeat-filtered")))
    assert event.category is Category.DEVICE_HEALTH
    assert event.kind == "heartbeat"
    assert event.code is None
    assert event.dispense is None


def test_unknown_event_type_names_the_type_and_the_table(adapter):
    with pytest.raises(MappingError, match=r"unknown event type 'dose\.snoozed': "
                                           r"dispenser\.toml maps it in none of"):
        adapter.parse(message(case_input("10-unknown-event-type-fails")))


def test_parse_errors_name_the_field(adapter):
    with pytest.raises(InputError, match=r"device\.serialNumber: Field required; "
                                         r"dose\.doseId: Field required"):
        adapter.parse(message(case_input("13-missing-fields-fail")))
    with pytest.raises(InputError, match=r"dose\.handedOverAt: required for eventType"):
        adapter.parse(message(case_input("14-dispense-without-handover-time-fails")))
    no_dose = case_input("01-dispensed-unassisted")
    del no_dose["dose"]
    with pytest.raises(InputError, match=r"dose: required for eventType dose\.dispensed"):
        adapter.parse(message(no_dose))


def test_intake_key_and_its_errors(adapter):
    request = IntakeRequest("dispenser", "application/json",
                            json.dumps({"eventId": "evd-9"}).encode(), {})
    assert adapter.intake_key(request) == "evd-9"
    for content, text in [(b"[]", "a JSON object"), (b'{"eventId": ""}', "eventId: required"),
                          (b"{", "invalid JSON")]:
        with pytest.raises(InputError, match=text):
            adapter.intake_key(IntakeRequest("dispenser", "application/json", content, {}))


@pytest.fixture
def mappings_copy(tmp_path):
    target = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", target)
    return target


def test_new_event_type_is_data_only(mappings_copy):
    table = mappings_copy / "dispenser.toml"
    table.write_text(table.read_text().replace(
        '"device.lid_open" = "1.21"', '"device.lid_open" = "1.21"\n"lid.opened" = "1.21"'))
    adapter = DispenserAdapter(AdapterSetup("dispenser", {}, MappingStore.load(mappings_copy)))
    data = case_input("07-dispenser-open")
    data["eventType"] = "lid.opened"
    (event,) = adapter.parse(message(data))
    assert (event.code, event.severity) == ("1.21", "moderate")


def test_an_event_type_in_two_sections_stops_the_start(mappings_copy):
    table = mappings_copy / "dispenser.toml"
    table.write_text(table.read_text().replace('"battery.low" = "1.17"',
                                               '"battery.low" = "1.17"\n"dose.dispensed" = "1.1"'))
    with pytest.raises(ConfigError, match=r"event type 'dose\.dispensed' is in both "
                                          r"\[dispensed\] and \[alerts\]"):
        DispenserAdapter(AdapterSetup("dispenser", {}, MappingStore.load(mappings_copy)))


def test_a_severity_for_an_unknown_alert_code_stops_the_start(mappings_copy):
    table = mappings_copy / "dispenser.toml"
    table.write_text(table.read_text().replace('"1.23" = "moderate"',
                                               '"1.23" = "moderate"\n"1.99" = "low"'))
    with pytest.raises(ConfigError, match=r"\[alert_severities\] keys \['1\.99'\] are not in "
                                          r"vkp-alert-code"):
        DispenserAdapter(AdapterSetup("dispenser", {}, MappingStore.load(mappings_copy)))


def test_a_wrong_alert_code_in_the_table_stops_loading(mappings_copy):
    table = mappings_copy / "dispenser.toml"
    table.write_text(table.read_text().replace('"roll.empty" = "1.13"', '"roll.empty" = "1.31"'))
    with pytest.raises(ConfigError, match=r"\[alerts\] maps to codes not in vkp-alert-code: "
                                          r"roll\.empty = '1\.31'"):
        MappingStore.load(mappings_copy)
