"""vkp-MedicationDispense: the built-in mapping and the VKP rules that guard it."""

import copy
import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from hub.builtin import medication_mapping, vkp_mapping
from hub.contracts import MapContext
from hub.domain.model import (
    Category,
    DeviceRef,
    DispenseDetails,
    Enrolment,
    Event,
    Performer,
    PersonId,
)
from hub.domain.privacy import DNR_SYSTEM, FNR_SYSTEM
from hub.errors import MappingError, ValidationFailure
from hub.fhir import transaction_bundle, validate_bundle
from hub.mappings import MappingStore
from tests.unit.test_fhir_validation import MAPPINGS

OSLO = timezone(timedelta(hours=1))
HPR = "urn:oid:2.16.578.1.12.4.1.4.4"
DEVICE = DeviceRef("PP000533", model="Evondos E300", type="Multidosedispenser",
                   location="Kjøkken")


def context(mappings: MappingStore = MAPPINGS) -> MapContext:
    enrolment = Enrolment("dispenser", "PP000533", PersonId(FNR_SYSTEM, "01819012012"), "0301")
    return MapContext(1, "evt-1", 0, enrolment, mappings)


def dispense_event(**changes) -> Event:
    details = DispenseDetails(
        dispense_id="PP000533-20261121-0800", category="1.1",
        handed_over_at=datetime(2026, 11, 21, 8, 2, 41, tzinfo=OSLO),
        planned_at=datetime(2026, 11, 21, 8, 0, tzinfo=OSLO),
        medication_text="Morgendose", dosage_text="Tas med vann",
    )
    details = dataclasses.replace(details, **changes)
    return Event(source="dispenser", business_key=f"dose:{details.dispense_id}",
                 kind="dispense", category=Category.MEDICATION,
                 occurred_at=details.handed_over_at, device=DEVICE, dispense=details)


def mapped(event: Event) -> dict[str, Any]:
    result = medication_mapping.hub_map_event(event=event, context=context())
    assert result is not None
    (resource,) = result
    return resource


def bundle_of(resource: dict[str, Any]) -> dict[str, Any]:
    return transaction_bundle("b-1", datetime(2026, 11, 21, 8, 3, tzinfo=UTC), [resource])


def problems(resource: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationFailure) as info:
        validate_bundle(bundle_of(resource), MAPPINGS)
    return info.value.problems


def test_unassisted_dispense_is_a_valid_vkp_medication_dispense():
    r = mapped(dispense_event())
    validate_bundle(bundle_of(r), MAPPINGS)
    assert r["meta"]["profile"] == [
        "http://ehelse.no/fhir/StructureDefinition/vkp-MedicationDispense-v090"]
    assert r["status"] == "completed"
    assert r["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{r['id']}"}]
    assert r["category"]["coding"] == [{
        "system": "http://ehelse.no/fhir/CodeSystem/vkp-medicationdispense-events-v090",
        "code": "1.1", "display": "Utlevert uten assistanse"}]
    assert r["subject"] == {"identifier": {"system": FNR_SYSTEM, "value": "01819012012"}}
    assert r["performer"] == [{"actor": {
        "identifier": {"system": "urn:tryggbro:device:dispenser", "value": "PP000533"},
        "display": "Evondos E300"}}]
    assert r["whenHandedOver"] == "2026-11-21T08:02:41+01:00"
    assert r["medicationCodeableConcept"] == {"text": "Ukjent medisin"}
    assert r["dosageInstruction"] == [{"text": "Medisin: Morgendose\nTas med vann\n"
                                               "Planlagt utlevering: 21.11.2026 08:00"}]
    assert "whenPrepared" not in r  # 0..0 in the profile: the planned time is in the text
    ext = r["extension"][0]
    assert ext["url"] == ("http://ehelse.no/fhir/StructureDefinition/"
                          "vkp-medicationDispenseDevice-v090")
    assert {e["url"]: e["valueString"] for e in ext["extension"]} == {
        "identifier": "PP000533", "displayName": "Evondos E300", "type": "Multidosedispenser",
        "typeName": "Evondos E300", "location": "Kjøkken"}


def test_assisted_dispense_names_device_and_helper_by_identifier_only():
    helper = Performer(HPR, "9144900", "Kari Nordmann")
    r = mapped(dispense_event(category="1.2", assisted_by=helper))
    validate_bundle(bundle_of(r), MAPPINGS)
    assert [p["actor"]["identifier"] for p in r["performer"]] == [
        {"system": "urn:tryggbro:device:dispenser", "value": "PP000533"},
        {"system": HPR, "value": "9144900"}]
    assert all("reference" not in p["actor"] for p in r["performer"])
    assert r["category"]["coding"][0]["code"] == "1.2"


def test_minimal_dispense_has_no_dosage_instruction_and_a_generic_device_type():
    event = dispense_event(category="1.3", planned_at=None, medication_text=None,
                           dosage_text=None)
    event = dataclasses.replace(event, device=DeviceRef("PP000871"))
    r = mapped(event)
    validate_bundle(bundle_of(r), MAPPINGS)
    assert "dosageInstruction" not in r
    assert {e["url"]: e["valueString"] for e in r["extension"][0]["extension"]} == {
        "identifier": "PP000871", "displayName": "PP000871", "type": "Medisindispenser"}


def test_same_dose_maps_to_the_same_resource_id():
    first = mapped(dispense_event())
    again = mapped(dispense_event(handed_over_at=datetime(2026, 11, 21, 8, 5, tzinfo=OSLO)))
    other = mapped(dispense_event(dispense_id="PP000533-20261121-1200"))
    assert first["id"] == again["id"] != other["id"]


def test_category_outside_the_code_system_fails_mapping_with_the_codes():
    with pytest.raises(MappingError, match=r"dispense category '1\.9' is not in "
                                           r"vkp-medicationdispense-events \(known: 1, 1\.1"):
        mapped(dispense_event(category="1.9"))


def test_only_dispense_events_are_mapped_here_and_not_by_the_issue_mapping():
    event = dispense_event()
    issue = Event(source="dispenser", business_key="event:e1", kind="issue",
                  category=Category.MEDICATION, occurred_at=event.occurred_at, device=DEVICE,
                  code="1.7", severity="high", detail="Medisindispenser: Feil på rull")
    assert medication_mapping.hub_map_event(event=issue, context=context()) is None
    assert vkp_mapping.hub_map_event(event=event, context=context()) is None
    result = vkp_mapping.hub_map_event(event=issue, context=context())
    assert result is not None
    (di,) = result
    assert di["resourceType"] == "DetectedIssue"
    assert (di["code"]["coding"][0]["code"], di["severity"], di["detail"]) == \
        ("1.7", "high", "Medisindispenser: Feil på rull")
    validate_bundle(bundle_of(di), MAPPINGS)


# --- the VKP rules (hub.fhir.validate) -------------------------------------------------

@pytest.fixture
def resource():
    return copy.deepcopy(mapped(dispense_event(
        category="1.2", assisted_by=Performer(HPR, "9144900"))))


def test_performer_by_literal_reference_is_refused(resource):
    resource["performer"][0]["actor"]["reference"] = "Device/123"
    assert ("MedicationDispense/{}: performer[0].actor.reference: not allowed in "
            "vkp-MedicationDispense (0..0); name the device or person by actor.identifier "
            "(system + value)".format(resource["id"])) in problems(resource)


def test_performer_reference_instead_of_identifier_is_refused_twice_over(resource):
    resource["performer"][1]["actor"] = {"reference": "Practitioner/9144900"}
    found = problems(resource)
    assert any("performer[1].actor.reference: not allowed" in p for p in found)
    assert any("performer[1].actor.identifier: required with system and value" in p
               for p in found)


def test_no_performer_is_refused(resource):
    resource["performer"] = []
    assert any("performer: at least one is required" in p for p in problems(resource))


def test_subject_must_be_a_national_identifier(resource):
    resource["subject"] = {"identifier": {"system": "urn:example:local", "value": "42"}}
    assert any("subject.identifier: identifier system 'urn:example:local' is not a national "
               "person id" in p for p in problems(resource))
    resource["subject"] = {"reference": "Patient/1"}
    assert any("subject: must reference the patient by identifier" in p
               for p in problems(resource))
    resource["subject"] = {"reference": "Patient/1",
                           "identifier": {"system": FNR_SYSTEM, "value": "01819012012"}}
    assert any("subject: VKP references the patient by identifier only" in p
               for p in problems(resource))


def test_a_d_number_subject_is_accepted(resource):
    # A synthetic D-number (first digit + 4, valid mod-11 check digits).
    resource["subject"] = {"identifier": {"system": DNR_SYSTEM, "value": "41819012006"}}
    validate_bundle(bundle_of(resource), MAPPINGS)


def test_category_must_come_from_the_code_system(resource):
    resource["category"]["coding"][0]["code"] = "4"
    assert any("category: code '4' is not in vkp-medicationdispense-events" in p
               for p in problems(resource))
    resource["category"] = {"coding": [{"system": "http://example.org/cs", "code": "1.1"}]}
    assert any("category: needs a coding from vkp-medicationdispense-events" in p
               for p in problems(resource))
    del resource["category"]
    assert any("category: required" in p for p in problems(resource))


@pytest.mark.parametrize("status", ["in-progress", "completed"])
def test_allowed_statuses(resource, status):
    resource["status"] = status
    validate_bundle(bundle_of(resource), MAPPINGS)


@pytest.mark.parametrize("status", ["declined", "stopped", "preparation"])
def test_other_statuses_are_refused(resource, status):
    resource["status"] = status
    assert any(f"status {status!r} is not one of ['completed', 'in-progress']" in p
               for p in problems(resource))


def test_profile_fixed_and_forbidden_elements(resource):
    resource["medicationCodeableConcept"] = {"text": "Paracet 500 mg"}
    resource["whenPrepared"] = "2026-11-21T08:00:00+01:00"
    resource["note"] = [{"text": "fritekst"}]
    del resource["whenHandedOver"]
    found = problems(resource)
    assert any("medicationCodeableConcept.text: fixed to 'Ukjent medisin'" in p for p in found)
    assert any("whenPrepared: not allowed in vkp-MedicationDispense (0..0)" in p for p in found)
    assert any("note: not allowed in vkp-MedicationDispense (0..0)" in p for p in found)
    assert any("whenHandedOver: required" in p for p in found)


def test_identifier_must_be_a_uuid(resource):
    resource["identifier"] = [{"system": "urn:example:x", "value": "1"}]
    assert any("identifier: needs one with system urn:ietf:rfc:3986" in p
               for p in problems(resource))
