"""Mapped output: R4 structure by fhir.resources, VKP rules by our own checks."""

import copy
import json
from pathlib import Path

import pytest

from hub.errors import ValidationFailure
from hub.fhir import validate_bundle
from hub.mappings import MappingStore

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = MappingStore.load(ROOT / "mappings")
GOLDEN = ROOT / "fixtures/alarmplatform/cases/02-alarm-lifecycle/expected.json"


@pytest.fixture
def bundle():
    return copy.deepcopy(json.loads(GOLDEN.read_text())[2]["events"][0]["bundle"])


def resource(bundle, rtype):
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


def problems(bundle):
    with pytest.raises(ValidationFailure) as info:
        validate_bundle(bundle, MAPPINGS)
    return info.value.problems


def test_golden_bundle_is_valid(bundle):
    validate_bundle(bundle, MAPPINGS)


def test_alert_code_outside_vkp_alert_code(bundle):
    resource(bundle, "DetectedIssue")["code"]["coding"][0]["code"] = "3.9"
    assert any("code: code '3.9' is not in vkp-alert-code" in p for p in problems(bundle))


def test_patient_with_bad_check_digits(bundle):
    resource(bundle, "DetectedIssue")["patient"]["identifier"]["value"] = "01819012013"
    assert any("patient.identifier: FNR is not 11 digits with valid mod-11" in p
               for p in problems(bundle))


def test_patient_by_literal_reference_is_refused(bundle):
    resource(bundle, "Encounter")["subject"]["reference"] = "Patient/123"
    assert any("subject: VKP references the patient by identifier only" in p
               for p in problems(bundle))


def test_encounter_without_participant_or_period_start(bundle):
    enc = resource(bundle, "Encounter")
    enc["participant"] = []
    del enc["period"]["start"]
    found = problems(bundle)
    assert any("participant: at least one is required" in p for p in found)
    assert any("period.start: required" in p for p in found)


def test_status_binding_that_fhir_resources_does_not_check(bundle):
    resource(bundle, "Composition")["status"] = "bogus"
    assert any("status 'bogus' is not one of" in p for p in problems(bundle))


def test_composition_event_code_two_does_not_exist(bundle):
    resource(bundle, "Composition")["event"][0]["code"][0]["coding"][0]["code"] = "2"
    assert any("event[0].code: code '2' is not in vkp-composition-event" in p
               for p in problems(bundle))


def test_structure_errors_come_from_the_r4_models(bundle):
    resource(bundle, "DetectedIssue")["identifiedDateTime"] = "yesterday"
    del resource(bundle, "Encounter")["class"]
    found = problems(bundle)
    assert any("identifiedDateTime" in p for p in found)
    assert any("class" in p for p in found)


def test_non_idempotent_request_is_refused(bundle):
    bundle["entry"][0]["request"] = {"method": "POST", "url": "DetectedIssue"}
    assert any("request must be PUT DetectedIssue/" in p for p in problems(bundle))


def test_encounter_mode_is_required_of_vkp_profiled_encounters_only(bundle):
    """A physical visit (hub.builtin.access_mapping) claims no VKP profile and codes its
    participant with v3 ParticipationType; a vkp-Encounter may not."""
    enc = resource(bundle, "Encounter")
    enc["participant"][0]["type"] = [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
        "code": "PPRF", "display": "primary performer"}]}]
    assert any("participant[0].type: needs a coding from vkp-encounter-mode" in p
               for p in problems(bundle))
    del enc["meta"]
    validate_bundle(bundle, MAPPINGS)
    enc["participant"][0]["type"] = []  # still exactly one type, profile or not
    assert any("participant[0].type: exactly one is required" in p for p in problems(bundle))


# Validation once per shape (hub.fhir.validate.ShapeCache): after a bundle of the same
# shape passed full validation, the values that differ are still checked by their own
# FHIR types, and a bad one gets fhir.resources' own error from a full validation.

@pytest.mark.parametrize(("rtype", "path", "bad", "expected"), [
    ("DetectedIssue", ("identifiedDateTime",), "2026-13-40T25:00:00+01:00",
     "identifiedDateTime"),
    ("Encounter", ("period", "start"), "yesterday", "period.start"),
    ("DetectedIssue", ("id",), "not a valid id!", "DetectedIssue).id"),
    ("Composition", ("date",), "2026-11-20 21:14", "date"),
    ("DetectedIssue", ("severity",), "  high", "severity"),
])
def test_a_bad_value_in_a_known_shape_is_still_rejected(bundle, rtype, path, bad, expected):
    validate_bundle(bundle, MAPPINGS)  # the shape is known from here on
    again = copy.deepcopy(bundle)
    target = resource(again, rtype)
    for key in path[:-1]:
        target = target[key]
    assert isinstance(target[path[-1]], str)  # same type: the same shape as the valid one
    target[path[-1]] = bad
    found = problems(again)
    assert any(expected in p for p in found), found


def test_changed_values_of_a_known_shape_are_accepted_when_valid(bundle):
    validate_bundle(bundle, MAPPINGS)
    again = copy.deepcopy(bundle)
    resource(again, "DetectedIssue")["identifiedDateTime"] = "2027-01-02T03:04:05+01:00"
    resource(again, "Encounter")["period"]["start"] = "2027-01-02T03:04:05+01:00"
    validate_bundle(again, MAPPINGS)


def test_a_new_key_in_a_known_shape_gets_the_full_validation(bundle):
    validate_bundle(bundle, MAPPINGS)
    again = copy.deepcopy(bundle)
    resource(again, "DetectedIssue")["notAnElement"] = "x"
    assert any("notAnElement" in p for p in problems(again))
