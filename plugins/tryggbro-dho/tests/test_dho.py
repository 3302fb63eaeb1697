"""Both adapters on their own, and their fixtures through the real pipeline (hub.testing)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from tryggbro_dho.phd import PhdFhirAdapter
from tryggbro_dho.vendor import DhoJsonAdapter

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import Category, Quantity, StoredMessage
from hub.errors import ConfigError, InputError, MappingError
from hub.mappings import MappingStore

REPO = Path(__file__).resolve().parents[3]
DHO = REPO / "fixtures" / "dho"
PHD = REPO / "fixtures" / "phd"
CORPUS_BUNDLE = PHD / "cases" / "03-transaction-bundle-corpus" / "01.json"


@pytest.fixture(scope="module")
def store():
    return MappingStore.load(REPO / "mappings")


@pytest.fixture(scope="module")
def vendor(store):
    return DhoJsonAdapter(AdapterSetup("dho", {}, store))


@pytest.fixture(scope="module")
def phd(store):
    return PhdFhirAdapter(AdapterSetup("phd-gateway", {}, store))


def message(data, source="dho"):
    raw = data if isinstance(data, bytes) else json.dumps(data, ensure_ascii=False).encode()
    return StoredMessage(1, source, "k", "application/json", raw, datetime.now(UTC), {}, 1)


def case_input(root, name, n="01.json"):
    return json.loads((root / "cases" / name / n).read_text(encoding="utf-8"))


def test_fixtures_replay_without_differences(tryggbro_replay):
    assert len(tryggbro_replay(DHO).cases) == 17
    assert len(tryggbro_replay(PHD).cases) == 10


def test_blood_pressure_reading_gives_panel_and_cuff_pulse(vendor):
    bp, pulse = vendor.parse(message(case_input(DHO, "01-blood-pressure")))
    assert bp.category is Category.HOME_FOLLOW_UP
    assert bp.device.id == "DHO-KIT-1001"
    assert [(c.type, c.value) for c in bp.measurement.components] == [
        ("systolic", Quantity(Decimal(132), "mm[Hg]")),
        ("diastolic", Quantity(Decimal(84), "mm[Hg]"))]
    assert pulse.business_key == "r-88121#pulse"
    assert pulse.measurement.mdc_code == "149546"
    assert pulse.measurement.value == Quantity(Decimal(71), "/min")


def test_numbers_are_exact_decimals(vendor):
    data = case_input(DHO, "17-several-readings")
    _, weight = vendor.parse(message(data))
    assert weight.measurement.value.value == Decimal("80.95")
    (glucose,) = vendor.parse(message(case_input(DHO, "07-glucose-mgdl-converted")))
    assert glucose.measurement.value == Quantity(Decimal("7.0"), "mmol/L")


def test_unknown_kind_and_unit_fail_with_reason(vendor):
    with pytest.raises(MappingError, match="no mapping for 'respiratoryRate'"):
        vendor.parse(message(case_input(DHO, "11-unknown-measurement-fails")))
    with pytest.raises(MappingError, match="no mapping for '°F'"):
        vendor.parse(message(case_input(DHO, "10-wrong-unit-fails")))
    with pytest.raises(MappingError, match="'kg' is not accepted for spo2"):
        vendor.parse(message(case_input(DHO, "10-wrong-unit-fails", "02.json")))


def test_nan_and_bad_values(vendor):
    (ev,) = vendor.parse(message(case_input(DHO, "14-nan-is-data-absent")))
    assert ev.measurement.value is None
    assert ev.measurement.data_absent == "not-a-number"
    data = case_input(DHO, "02-spo2")
    data["readings"][0]["value"] = "96"
    with pytest.raises(InputError, match=r"readings\[0\]\.value: must be a number"):
        vendor.parse(message(data))
    del data["readings"][0]["takenAt"]
    with pytest.raises(InputError, match=r"readings\.0\.takenAt: Field required"):
        vendor.parse(message(data))


def test_vendor_intake_key(vendor):
    body = json.dumps(case_input(DHO, "02-spo2")).encode()
    assert vendor.intake_key(IntakeRequest("dho", "application/json", body, {})) == "c0a8f3e2-0002"
    with pytest.raises(InputError, match="messageId: required"):
        vendor.intake_key(IntakeRequest("dho", "application/json", b"{}", {}))


def test_vendor_table_is_checked_at_start_up(tmp_path, store):
    (tmp_path / "codesystems").mkdir()
    (tmp_path / "measurements.toml").write_text(
        (REPO / "mappings" / "measurements.toml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "dho.toml").write_text('[kinds.map]\nbreath = "respiration"\n[units.map]\n')
    with pytest.raises(ConfigError, match="'respiration' is not a measurement type"):
        DhoJsonAdapter(AdapterSetup("dho", {}, MappingStore.load(tmp_path)))
    (tmp_path / "dho.toml").write_text('[kinds.map]\n[units.map]\n"°F" = "[degF]"\n')
    with pytest.raises(ConfigError, match="not a unit any measurement type accepts"):
        DhoJsonAdapter(AdapterSetup("dho", {}, MappingStore.load(tmp_path)))


def test_phd_bundle_resolves_device_by_sysid_and_skips_clock(phd):
    spo2, pulse = phd.parse(message(CORPUS_BUNDLE.read_bytes(), "phd-gateway"))
    assert spo2.device.id == pulse.device.id == "00-1C-05-04-00-00-78-25"
    assert spo2.measurement.type == "spo2"
    assert pulse.measurement.mdc_code == "149530"
    assert spo2.measurement.phd
    assert spo2.business_key == "00-1C-05-04-00-00-78-25-150456-2019-09-20T12:40:16.936-04:00"


def test_phd_keys_use_conditional_create_identifier_and_bundle_hash(phd):
    spot = (PHD / "cases" / "07-duplicate-reupload" / "01.json").read_bytes()
    key = phd.intake_key(IntakeRequest("phd-gateway", "application/fhir+json", spot, {}))
    assert key == json.loads(spot)["identifier"][0]["value"]
    bundle = CORPUS_BUNDLE.read_bytes()
    k1 = phd.intake_key(IntakeRequest("phd-gateway", "application/fhir+json", bundle, {}))
    data = json.loads(bundle)
    data["entry"].reverse()  # the same Observations in another order: the same upload
    k2 = phd.intake_key(IntakeRequest("phd-gateway", "application/fhir+json",
                                      json.dumps(data).encode(), {}))
    assert k1 == k2
    assert k1.startswith("bundle-sha256|")


def test_phd_blood_pressure_components(phd):
    body = (PHD / "cases" / "02-blood-pressure-components-corpus" / "01.json").read_bytes()
    (ev,) = phd.parse(message(body, "phd-gateway"))
    assert [(c.type, c.value.value) for c in ev.measurement.components] == [
        ("systolic", Decimal(116)), ("diastolic", Decimal(71)),
        ("mean_arterial_pressure", Decimal(86))]


def test_phd_errors_are_specific(phd):
    obs = case_input(PHD, "06-glucose-mgdl-converted")
    obs["valueQuantity"]["system"] = "urn:iso:std:iso:11073:10101"
    with pytest.raises(InputError, match="valueQuantity: system must be"):
        phd.parse(message(obs, "phd-gateway"))
    obs = case_input(PHD, "06-glucose-mgdl-converted")
    obs["effectiveDateTime"] = "2025-01-08T19:07:48"
    with pytest.raises(InputError, match="needs a UTC offset"):
        phd.parse(message(obs, "phd-gateway"))
    obs["code"]["coding"] = [{"system": "http://loinc.org", "code": "15074-8"}]
    with pytest.raises(InputError, match="needs an MDC coding"):
        phd.parse(message(obs, "phd-gateway"))
    with pytest.raises(InputError, match="expected Observation or Bundle"):
        phd.parse(message({"resourceType": "Patient"}, "phd-gateway"))
