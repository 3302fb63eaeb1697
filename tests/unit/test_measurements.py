"""DHO measurements: the code table, exact conversions, the range check (5.1), the
Observation mapping and the VKP Observation rules."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from hub.builtin import measurement_mapping, vkp_mapping
from hub.contracts import MapContext
from hub.domain.model import (
    Category,
    DeviceRef,
    Enrolment,
    Event,
    Measurement,
    MeasurementComponent,
    MeasurementPlan,
    PersonId,
    Priority,
    Quantity,
)
from hub.domain.privacy import FNR_SYSTEM
from hub.errors import ConfigError, MappingError, ValidationFailure
from hub.fhir import transaction_bundle, validate_bundle
from hub.mappings import MappingStore
from hub.measurements import assess, load, out_of_range
from hub.registry import parse_plans


def parse_plan(text: str) -> MeasurementPlan:
    """One plan in the registry's syntax (hub.registry, as CLI, CSV and fixtures use)."""
    problems: list[str] = []
    plans = parse_plans(text, problems)
    if problems:
        raise ValueError(problems[0])
    return plans[0]


REPO_MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
AT = datetime(2026, 1, 10, 8, 15, tzinfo=UTC)


@pytest.fixture(scope="module")
def store() -> MappingStore:
    return MappingStore.load(REPO_MAPPINGS)


# -- code table and conversions -------------------------------------------------------------


def test_table_loads_with_codes_per_type(store):
    table = store.measurements
    assert table.by_mdc("149530").key == table.by_mdc("149546").key == "pulse"
    bp = table.type("blood_pressure")
    assert bp.loinc.code == "85354-9"
    assert bp.snomed.code == "75367002"
    assert bp.unit is None
    assert bp.components == ("systolic", "diastolic", "mean_arterial_pressure")
    assert table.type("spo2").loinc.code == "2708-6"
    assert table.type("body_temperature").unit == "Cel"
    assert table.type("glucose").unit == "mmol/L"


@pytest.mark.parametrize(("mg_dl", "mmol_l"), [
    ("126", "7.0"),   # 6.99394…
    ("99", "5.5"),    # 5.49523…
    ("100", "5.6"),   # 5.55074…
    ("180.156", "10.0"),  # exactly 10
    ("72", "4.0"),    # 3.99653…
    ("0", "0.0"),
])
def test_glucose_mg_dl_to_mmol_l_is_exact_decimal(store, mg_dl, mmol_l):
    q = store.measurements.type("glucose").to_canonical(Decimal(mg_dl), "mg/dL")
    assert q == Quantity(Decimal(mmol_l), "mmol/L")
    assert str(q.value) == mmol_l  # one decimal, as documented


def test_glucose_rounds_half_up(store):
    # 9.0078 mg/dL × 10 / 180.156 = 0.5 mmol/L exactly: no rounding at all.
    value = store.measurements.type("glucose").to_canonical(Decimal("9.0078"), "mg/dL").value
    assert value == Decimal("0.5")
    # 4.5039 mg/dL → exactly 0.25 mmol/L, a tie: half-up gives 0.3 (half-even would give 0.2)
    tie = Decimal("0.25") * Decimal("180.156") / 10
    assert store.measurements.type("glucose").to_canonical(tie, "mg/dL").value == Decimal("0.3")


def test_grams_to_kilograms_exact_and_canonical_unchanged(store):
    weight = store.measurements.type("body_weight")
    assert weight.to_canonical(Decimal("81450"), "g") == Quantity(Decimal("81.450"), "kg")
    assert weight.to_canonical(Decimal("80.95"), "kg").value == Decimal("80.95")
    pulse = store.measurements.type("pulse")
    assert pulse.to_canonical(Decimal("71"), "{beat}/min") == Quantity(Decimal("71"), "/min")


def test_unknown_unit_code_and_type_are_clear_errors(store):
    table = store.measurements
    with pytest.raises(MappingError, match=r"unit '\[degF\]' is not accepted for body_temperature"):
        table.type("body_temperature").to_canonical(Decimal("99"), "[degF]")
    with pytest.raises(MappingError, match="MDC code '150320' is not a known measurement"):
        table.by_mdc("150320")
    with pytest.raises(MappingError, match="measurement type 'respiration' is not in"):
        table.type("respiration")
    with pytest.raises(MappingError, match="is a panel"):
        table.type("blood_pressure").to_canonical(Decimal(1), "mm[Hg]")


BASE = """
[types.spo2]
display = "SpO2"
loinc = { code = "2708-6" }
profile = "http://example.org/p"
unit = "%"
mdc = ["150456"]
"""


@pytest.mark.parametrize(("extra", "message"), [
    ('[types.spo2.units]\n"1" = { multiply = 100 }\n', "must be a decimal string"),
    ('[types.spo2.units]\n"1" = { multiply = "100", divide = "3" }\n', "needs `decimals`"),
    ('[types.spo2.units]\n"1" = { multiply = "-1" }\n', "must be a positive number"),
    ('[types.other]\ndisplay = "x"\nloinc = { code = "1-1" }\nprofile = "p"\nunit = "%"\n'
     'mdc = ["150456"]\n', "MDC code 150456 is in both"),
    ('[types.bp]\ndisplay = "x"\nloinc = { code = "1-1" }\nprofile = "p"\n'
     'components = ["nope"]\n', "component 'nope' is not a measurement type"),
    ('[types.x]\ndisplay = "x"\nprofile = "p"\nunit = "%"\n', "loinc: required"),
    ('[types.y]\ndisplay = "y"\nloinc = { code = "1-1" }\nprofile = "p"\nunti = "%"\n',
     "unknown key"),
])
def test_loader_rejects_bad_tables(tmp_path, extra, message):
    path = tmp_path / "measurements.toml"
    path.write_text(BASE + extra)
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_mapping_store_loads_the_table_and_says_when_missing(tmp_path):
    (tmp_path / "measurements.toml").write_text(BASE)
    assert MappingStore.load(tmp_path).measurements.type("spo2").unit == "%"
    (tmp_path / "measurements.toml").unlink()
    with pytest.raises(ConfigError, match="measurement code table not found"):
        _ = MappingStore.load(tmp_path).measurements


def test_parse_plan_syntax():
    assert parse_plan("spo2:92..100@24h") == MeasurementPlan(
        "spo2", Decimal(92), Decimal(100), None, parse_plan("x@1d").every)
    assert parse_plan("glucose:..12").low is None
    assert parse_plan("body_weight@7d").low is None
    assert parse_plan("body_temperature:35.5..38.0").low == Decimal("35.5")
    with pytest.raises(ValueError, match="is not type"):
        parse_plan("spo2:ninety..100")


# -- range check and mapping -----------------------------------------------------------------


def enrolment(*plans: str, units: dict[str, str] | None = None) -> Enrolment:
    parsed = tuple(parse_plan(p) for p in plans)
    if units:
        from dataclasses import replace
        parsed = tuple(replace(p, unit=units.get(p.type)) for p in parsed)
    return Enrolment("dho", "KIT-1", PersonId(FNR_SYSTEM, "01819012012"), "0301",
                     measurement_plans=parsed)


def event_for(m: Measurement) -> Event:
    return Event(source="dho", business_key=m.measurement_id, kind="measurement",
                 category=Category.HOME_FOLLOW_UP, occurred_at=m.effective_at,
                 device=DeviceRef("KIT-1", model="CareTab 3"), measurement=m)


def spo2(value: str, **kw) -> Measurement:
    return Measurement("r-1", "spo2", AT, value=Quantity(Decimal(value), "%"), **kw)


def bp(sys: str, dia: str) -> Measurement:
    return Measurement("r-2", "blood_pressure", AT, components=(
        MeasurementComponent("systolic", Quantity(Decimal(sys), "mm[Hg]")),
        MeasurementComponent("diastolic", Quantity(Decimal(dia), "mm[Hg]"))), mdc_code="150020")


def mapped(store, m: Measurement, enrol: Enrolment) -> list[dict[str, Any]]:
    ev = assess(event_for(m), enrol, store.measurements)
    ctx = MapContext(1, "k", 0, enrol, store)
    resources = measurement_mapping.hub_map_event(ev, ctx)
    assert resources is not None
    validate_bundle(transaction_bundle("b1", AT, resources), store)
    return resources


def test_range_check_bounds_are_inclusive(store):
    enrol = enrolment("spo2:92..100@24h")
    assert out_of_range(spo2("92"), enrol, store.measurements) == []
    assert out_of_range(spo2("100"), enrol, store.measurements) == []
    (finding,) = out_of_range(spo2("91.9"), enrol, store.measurements)
    assert finding.below
    assert finding.low == Decimal(92)
    assert out_of_range(spo2("85"), enrolment("pulse:40..100"), store.measurements) == []
    assert out_of_range(spo2("85"), enrolment("spo2@24h"), store.measurements) == []


def test_range_check_converts_plan_bounds_given_in_another_unit(store):
    glucose = Measurement("g", "glucose", AT, value=Quantity(Decimal("7.0"), "mmol/L"))
    enrol = enrolment("glucose:72..120", units={"glucose": "mg/dL"})  # 4.0 .. 6.7 mmol/L
    (finding,) = out_of_range(glucose, enrol, store.measurements)
    assert finding.high == Decimal("6.7")


def test_in_range_measurement_is_one_observation(store):
    enrol = enrolment("spo2:92..100")
    (obs,) = mapped(store, spo2("96", note="Målt før frokost"), enrol)
    assert obs["resourceType"] == "Observation"
    assert obs["meta"]["profile"] == [store.measurements.type("spo2").profile]
    assert [c["system"] for c in obs["code"]["coding"]] == [
        "http://loinc.org", "http://snomed.info/sct", "urn:iso:std:iso:11073:10101"]
    assert obs["valueQuantity"] == {"value": 96, "unit": "%",
                                    "system": "http://unitsofmeasure.org", "code": "%"}
    assert obs["subject"] == {"identifier": {"system": FNR_SYSTEM, "value": "01819012012"}}
    assert obs["category"][0]["coding"][0]["code"] == "vital-signs"
    assert obs["identifier"][0]["system"] == "urn:ietf:rfc:3986"
    assert obs["note"] == [{"text": "Målt før frokost"}]
    assert "interpretation" not in obs


def test_out_of_range_adds_detected_issue_5_1_and_dho_composition(store):
    enrol = enrolment("systolic:90..160", "diastolic:50..100")
    ev = assess(event_for(bp("172", "96")), enrol, store.measurements)
    assert ev.code == "5.1"
    assert ev.severity == "moderate"
    assert ev.effective_priority > Priority.NORMAL
    assert ev.effective_priority < Priority.ALARM
    obs, issue, comp = mapped(store, bp("172", "96"), enrol)
    assert [c.get("interpretation", [{}])[0].get("coding", [{}])[0].get("code")
            for c in obs["component"]] == ["H", None]
    assert issue["code"]["coding"][0]["code"] == "5.1"
    assert issue["implicated"] == [{"reference": f"Observation/{obs['id']}"}]
    assert issue["evidence"] == [{"detail": [{"reference": f"Observation/{obs['id']}"}]}]
    assert "172 mmHg" in issue["detail"]
    assert comp["category"][0]["coding"][0]["code"] == "2"
    assert {"reference": f"DetectedIssue/{issue['id']}"} in comp["section"][0]["entry"]


def test_in_range_event_is_unchanged_by_assess(store):
    ev = event_for(spo2("97"))
    assert assess(ev, enrolment("spo2:92..100"), store.measurements) is ev


def test_data_absent_is_never_a_number_nor_an_alert(store):
    m = Measurement("r-3", "spo2", AT, data_absent="not-a-number")
    enrol = enrolment("spo2:92..100")
    assert assess(event_for(m), enrol, store.measurements).code is None
    (obs,) = mapped(store, m, enrol)
    assert "valueQuantity" not in obs
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"


def test_pulse_names_only_the_mdc_code_the_device_reported(store):
    enrol = enrolment()
    pulse = Measurement("p", "pulse", AT, value=Quantity(Decimal(70), "/min"))
    (obs,) = mapped(store, pulse, enrol)
    assert all(c["system"] != "urn:iso:std:iso:11073:10101" for c in obs["code"]["coding"])
    from dataclasses import replace
    (obs,) = mapped(store, replace(pulse, mdc_code="149546"), enrol)
    assert obs["code"]["coding"][-1]["code"] == "149546"


def test_phd_measurement_carries_phd_category_and_identifier(store):
    (obs,) = mapped(store, spo2("97", phd=True), enrolment())
    assert obs["category"][1]["coding"][0]["code"] == "phd"
    assert obs["identifier"][1] == {"system": measurement_mapping.PHD_IDENTIFIER_SYSTEM,
                                    "value": "r-1"}


def test_missing_measurement_issue_5_3_2_maps_as_a_plain_issue(store):
    enrol = enrolment("spo2@24h")
    ev = Event(source="hub", business_key="missing|KIT-1|spo2|2026-01-10", kind="missing",
               category=Category.HOME_FOLLOW_UP, occurred_at=AT, device=DeviceRef("KIT-1"),
               code="5.3.2", detail="Måling ikke rapportert: spo2")
    ctx = MapContext(1, "k", 0, enrol, store)
    assert measurement_mapping.hub_map_event(ev, ctx) is None
    resources = vkp_mapping.hub_map_event(ev, ctx)
    assert resources is not None
    (issue,) = resources
    assert issue["code"]["coding"][0]["code"] == "5.3.2"
    validate_bundle(transaction_bundle("b", AT, [issue]), store)


# -- VKP Observation rules -------------------------------------------------------------------


def problems_of(store, resource: dict[str, Any]) -> list[str]:
    try:
        validate_bundle(transaction_bundle("b", AT, [resource]), store)
    except ValidationFailure as exc:
        return exc.problems
    return []


@pytest.fixture
def observation(store) -> dict[str, Any]:
    (obs,) = mapped(store, spo2("96"), enrolment())
    return obs


def test_rule_value_quantity_must_be_ucum_with_code(store, observation):
    bad = copy.deepcopy(observation)
    bad["valueQuantity"]["system"] = "http://example.org/units"
    del bad["valueQuantity"]["code"]
    found = problems_of(store, bad)
    assert any("valueQuantity.system: must be UCUM" in p for p in found)
    assert any("valueQuantity.code: required" in p for p in found)


def test_rule_component_quantity_must_be_ucum(store):
    (obs,) = mapped(store, bp("120", "80"), enrolment())
    obs["component"][1]["valueQuantity"]["system"] = "urn:mdc-units"
    assert any("component[1].valueQuantity.system" in p for p in problems_of(store, obs))


def test_rule_vital_signs_needs_loinc(store, observation):
    bad = copy.deepcopy(observation)
    bad["code"]["coding"] = [c for c in bad["code"]["coding"] if c["system"] != "http://loinc.org"]
    assert any("needs a LOINC coding" in p for p in problems_of(store, bad))


def test_rule_subject_by_national_identifier(store, observation):
    bad = copy.deepcopy(observation)
    bad["subject"] = {"reference": "Patient/123"}
    assert any("subject: must reference the patient by identifier" in p
               for p in problems_of(store, bad))
    bad["subject"] = {"identifier": {"system": FNR_SYSTEM, "value": "01819012013"}}
    assert any("subject.identifier" in p for p in problems_of(store, bad))


def test_rule_value_or_data_absent_reason(store, observation):
    both = copy.deepcopy(observation)
    both["dataAbsentReason"] = {"coding": [{"code": "error"}]}
    assert any("obs-6" in p for p in problems_of(store, both))
    neither = copy.deepcopy(observation)
    del neither["valueQuantity"]
    assert any("vs-2" in p for p in problems_of(store, neither))
    assert problems_of(store, observation) == []
