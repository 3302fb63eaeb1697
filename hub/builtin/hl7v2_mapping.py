"""Built-in mapping of hospital HL7 v2 events (ADT, lab) to FHIR R4 (docs/hl7v2.md).

- ADT (`event.adt`): the **Patient** (no-basis-Patient shape when a national id is
  present: no-basis OIDs, names, gender, birthDate, deceased), and the **Encounter** of
  the visit when the message has one (class from PV1-2 as v3-ActCode, status from the
  trigger, period PV1-44/45, identifier = visit number PV1-19, serviceProvider = the
  configured hospital). A11 cancels the Encounter, A13 re-opens it; A40 adds
  `Patient.link` replaces / replaced-by between the surviving and the merged record.
- Lab (`event.lab`): the Patient, one **Observation** per OBX (LOINC or the sender's code,
  valueQuantity with UCUM when the unit is known, referenceRange, interpretation) and the
  **DiagnosticReport** (status, code, effective, issued, result references).

Ids are deterministic: the Patient's from its identifier, the Encounter's from the visit,
the report's from its order number, each Observation's from the report and its OBX, so a
resent or corrected message updates the same resources. The patient is referenced by
identifier (logical reference), as everywhere in the hub. None of these resources claims
a VKP profile: a hospital-local record number is allowed only here (docs/hl7v2.md).
"""

from __future__ import annotations

from typing import Any

from hub import hookimpl
from hub.builtin.measurement_mapping import number
from hub.contracts import MapContext
from hub.domain.ids import resource_id
from hub.domain.model import (
    AdtAction,
    CodedValue,
    Event,
    Identifier,
    LabReport,
    LabResult,
    PatientDetails,
    PersonId,
    Visit,
)
from hub.domain.privacy import HNR_SYSTEM, HNR_TYPE_SYSTEM, PERSON_ID_SYSTEMS
from hub.fhir import vkp

NO_BASIS_PATIENT = "http://hl7.no/fhir/StructureDefinition/no-basis-Patient"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0112 = "http://terminology.hl7.org/CodeSystem/v2-0112"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CLASS_DISPLAY = {"IMP": "inpatient encounter", "AMB": "ambulatory", "EMER": "emergency",
                 "PRENC": "pre-admission", "OBSENC": "observation encounter"}
TIMES = ("DT", "DTM", "TS")


@hookimpl(trylast=True)
def hub_map_event(event: Event, context: MapContext) -> list[dict[str, Any]] | None:
    if event.adt is not None and event.patient is not None:
        return adt_resources(event, context)
    if event.lab is not None and event.patient is not None:
        return lab_resources(event, event.lab, context)
    return None


def subject(person: PersonId) -> dict[str, Any]:
    """The patient by identifier. A hospital-local record number (no national id in the
    message) is marked as one: type MR (v2-0203) and its assigning authority, so the
    validator can tell it from a mistyped national id."""
    if person.system in PERSON_ID_SYSTEMS:
        return vkp.person_reference(person)
    ident: dict[str, Any] = {"type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                             "system": person.system, "value": person.value}
    if person.assigner:
        ident["assigner"] = {"display": person.assigner}
    return {"identifier": ident}


def patient_id(source: str, person: PersonId) -> str:
    return resource_id(source, f"patient|{person.system}|{person.value}", "Patient")


def adt_resources(event: Event, ctx: MapContext) -> list[dict[str, Any]]:
    assert event.adt is not None
    assert event.patient is not None
    person = ctx.enrolment.patient
    patient = patient_resource(event, event.patient, ctx)
    resources = [patient]
    if event.adt.action is AdtAction.MERGE:
        for prior in event.adt.prior_identifiers:
            old = PersonId(str(prior.system), prior.value, prior.assigner)
            old_id = patient_id(event.source, old)
            if old_id == patient["id"]:
                continue
            patient.setdefault("link", []).append(
                {"other": {"reference": f"Patient/{old_id}"}, "type": "replaces"})
            resources.append({
                "resourceType": "Patient", "id": old_id,
                "identifier": [identifier(prior)], "active": False,
                "link": [{"other": {"reference": f"Patient/{patient['id']}"},
                          "type": "replaced-by"}],
            })
    if event.visit is not None:
        resources.append(encounter(event, event.visit, person, ctx))
    return resources


def identifier(ident: Identifier) -> dict[str, Any]:
    """A patient identifier: national ids in the no-basis shape, others with their type
    and assigning authority."""
    if ident.system == HNR_SYSTEM:
        out: dict[str, Any] = {"type": {"coding": [{"system": HNR_TYPE_SYSTEM, "code": "HNR"}]},
                               "value": ident.value}
        if ident.assigner:
            out["assigner"] = {"identifier": {"system": vkp.ORG_NUMBER_SYSTEM,
                                              "value": ident.assigner}}
        return out
    out = {"use": "official" if ident.system in PERSON_ID_SYSTEMS else "usual",
           "system": ident.system, "value": ident.value}
    if ident.system not in PERSON_ID_SYSTEMS:
        if ident.type:
            out["type"] = {"coding": [{"system": V2_0203, "code": ident.type}]}
        if ident.assigner:
            out["assigner"] = {"display": ident.assigner}
    return out


def patient_resource(event: Event, p: PatientDetails, ctx: MapContext) -> dict[str, Any]:
    pid = patient_id(event.source, ctx.enrolment.patient)
    national = any(i.system in PERSON_ID_SYSTEMS for i in p.identifiers)
    resource: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if national:
        resource["meta"] = {"profile": [NO_BASIS_PATIENT]}
    resource["identifier"] = [identifier(i) for i in p.identifiers]
    resource["active"] = True
    names = []
    for n in p.names:
        name: dict[str, Any] = {"use": n.use or "official"}
        if n.family:
            name["family"] = n.family
        if n.given:
            name["given"] = list(n.given)
        if n.prefix:
            name["prefix"] = list(n.prefix)
        if n.suffix:
            name["suffix"] = list(n.suffix)
        names.append(name)
    if names:
        resource["name"] = names
    if p.gender:
        resource["gender"] = p.gender
    if p.birth_date:
        resource["birthDate"] = p.birth_date
    if p.deceased_at is not None:
        resource["deceasedDateTime"] = vkp.instant(p.deceased_at)
    elif p.deceased is not None:
        resource["deceasedBoolean"] = p.deceased
    return resource


def encounter(event: Event, v: Visit, person: PersonId, ctx: MapContext) -> dict[str, Any]:
    rid = ctx.resource_id(event, "Encounter")
    identifiers: list[dict[str, Any]] = [vkp.uuid_identifier(rid)]
    if v.visit_number is not None:
        visit_id: dict[str, Any] = {"use": "official", "system": v.visit_number.system,
                                    "value": v.visit_number.value,
                                    "type": {"coding": [{"system": V2_0203, "code": "VN"}]}}
        identifiers.append(visit_id)
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": rid,
        "identifier": identifiers,
        "status": v.status,
        "class": {"system": vkp.V3_ACT_CODE, "code": v.encounter_class,
                  **({"display": CLASS_DISPLAY[v.encounter_class]}
                     if v.encounter_class in CLASS_DISPLAY else {})},
        "subject": subject(person),
    }
    period: dict[str, str] = {}
    if v.start is not None:
        period["start"] = vkp.instant(v.start)
    if v.end is not None:
        period["end"] = vkp.instant(v.end)
    if period:
        resource["period"] = period
    if v.discharge_disposition:
        resource["hospitalization"] = {"dischargeDisposition": {"coding": [
            {"system": V2_0112, "code": v.discharge_disposition}]}}
    if v.location:
        resource["location"] = [{"location": {"display": v.location}}]
    if v.facility:
        resource["serviceProvider"] = {"type": "Organization", "identifier": {
            "system": vkp.ORG_NUMBER_SYSTEM, "value": v.facility}}
    return resource


# --- lab ------------------------------------------------------------------------------


def concept(c: CodedValue) -> dict[str, Any]:
    coding: dict[str, str] = {}
    if c.system:
        coding["system"] = c.system
    if c.code:
        coding["code"] = c.code
    if c.display:
        coding["display"] = c.display
    out: dict[str, Any] = {"coding": [coding]} if c.code else {}
    if c.display:
        out["text"] = c.display
    return out


def observation_id(event: Event, r: LabResult) -> str:
    return resource_id(event.source, f"{event.business_key}|{r.result_id}", "Observation")


def lab_observation(event: Event, report: LabReport, r: LabResult,
                    ctx: MapContext) -> dict[str, Any]:
    rid = observation_id(event, r)
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "identifier": [vkp.uuid_identifier(rid)],
        "status": r.status,
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory",
                                  "display": "Laboratory"}]}],
        "code": concept(r.code),
        "subject": subject(ctx.enrolment.patient),
    }
    effective = r.effective_at or report.effective_at
    if effective is not None:
        resource["effectiveDateTime"] = vkp.instant(effective)
    if r.number is not None:
        q: dict[str, Any] = {"value": number(r.number)}
        if r.comparator:
            q["comparator"] = r.comparator
        if r.unit_text:
            q["unit"] = r.unit_text
        if r.unit:
            q["system"] = vkp.UCUM
            q["code"] = r.unit
        resource["valueQuantity"] = q
    elif r.coded is not None:
        resource["valueCodeableConcept"] = concept(r.coded)
    elif r.text is not None and r.value_type in TIMES:
        resource["valueDateTime"] = r.text
    elif r.text is not None:
        resource["valueString"] = r.text
    else:
        resource["dataAbsentReason"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "not-performed" if r.status == "cancelled" else "unknown"}]}
    if r.interpretation:
        resource["interpretation"] = [{"coding": [{"system": V3_INTERPRETATION, "code": c}]}
                                      for c in r.interpretation]
    if r.reference_range is not None:
        rr: dict[str, Any] = {}
        unit = ({"unit": r.unit_text} if r.unit_text else {}) | (
            {"system": vkp.UCUM, "code": r.unit} if r.unit else {})
        if r.reference_range.low is not None:
            rr["low"] = {"value": number(r.reference_range.low), **unit}
        if r.reference_range.high is not None:
            rr["high"] = {"value": number(r.reference_range.high), **unit}
        if r.reference_range.text:
            rr["text"] = r.reference_range.text
        resource["referenceRange"] = [rr]
    return resource


def lab_resources(event: Event, report: LabReport, ctx: MapContext) -> list[dict[str, Any]]:
    assert event.patient is not None
    patient = patient_resource(event, event.patient, ctx)
    observations = [lab_observation(event, report, r, ctx) for r in report.results]
    rid = ctx.resource_id(event, "DiagnosticReport")
    identifiers: list[dict[str, Any]] = [vkp.uuid_identifier(rid)]
    for order, code in ((report.filler_order, "FILL"), (report.placer_order, "PLAC")):
        if order is not None:
            identifiers.append({"type": {"coding": [{"system": V2_0203, "code": code}]},
                                "system": order.system, "value": order.value})
    dr: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "identifier": identifiers,
        "status": report.status,
        "category": [{"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}],
        "code": concept(report.code),
        "subject": subject(ctx.enrolment.patient),
    }
    if report.effective_at is not None:
        dr["effectiveDateTime"] = vkp.instant(report.effective_at)
    if report.issued is not None:
        dr["issued"] = vkp.instant(report.issued)
    if observations:
        dr["result"] = [{"reference": f"Observation/{o['id']}"} for o in observations]
    return [patient, *observations, dr]
