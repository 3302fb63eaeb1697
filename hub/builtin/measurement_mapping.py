"""Built-in mapping of DHO measurements (digital hjemmeoppfølging) to VKP R4 Observations.

- Every measurement (`event.measurement`) is one Observation in the vkp-Observation shape
  (domain.md §1.3, §4.2): LOINC + SNOMED CT + MDC codings from `mappings/measurements.toml`,
  UCUM `valueQuantity` (or one component per part of a blood pressure), vital-signs
  category (+ `phd` for PHD input), the patient by national identifier. Its id derives from
  the measurement's dedupe key (the PHD conditionalCreate recipe for PHD input), so a
  re-upload updates the same Observation.
- A value outside the patient's measurement plan adds, in the same Bundle, a DetectedIssue
  with vkp-alert-code `5.1` naming the Observation, and a Composition with
  vkp-composition-category `2` (Digital hjemmeoppfølging): the DHO document pattern
  "alert on a measurement" (domain.md §1.4 "DHO bundles").
- A measurement without a usable value (NaN, device error) is journaled with
  `dataAbsentReason` and no value, and is never range-checked.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hub import hookimpl
from hub.contracts import MapContext
from hub.domain.model import Event, Measurement, Quantity
from hub.fhir import vkp
from hub.measurements import (
    OUT_OF_RANGE_CODE,
    MeasurementTable,
    MeasurementType,
    RangeFinding,
    out_of_range,
)

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PHD_CATEGORY = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories"
PHD_IDENTIFIER_SYSTEM = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
DHO = "2"  # vkp-composition-category: Digital hjemmeoppfølging
SYSTEM_TEXT = "2"  # vkp-composition-section: systemgenerert tekst
COMMENT = "1.3"  # vkp-composition-section: kommentar
COMPOSITION_TYPE = {"system": vkp.LOINC, "code": "34133-9", "display": "Summary of episode note"}
DEFAULT_SEVERITY = "moderate"


@hookimpl(trylast=True)
def hub_map_event(event: Event, context: MapContext) -> list[dict[str, Any]] | None:
    if event.measurement is None:
        return None
    return measurement_resources(event, event.measurement, context)


def measurement_resources(event: Event, m: Measurement, ctx: MapContext) -> list[dict[str, Any]]:
    table = ctx.mappings.measurements
    findings = [] if m.data_absent else out_of_range(m, ctx.enrolment, table)
    resources = [observation(event, m, ctx, table, findings)]
    if findings:
        resources.append(detected_issue(event, m, ctx, table, findings))
        resources.append(composition(event, m, ctx, table, findings))
    return resources


def number(value: Decimal) -> int | float:
    """A Decimal as a JSON number: integral values as integers, others as the float whose
    shortest text is the decimal's text (exact for the ≤ 15 digits a measurement has)."""
    if value == value.to_integral_value() and value.as_tuple().exponent >= 0:  # type: ignore[operator]
        return int(value)
    return float(value)


def quantity(q: Quantity, mtype: MeasurementType) -> dict[str, Any]:
    return {"value": number(q.value), "unit": mtype.unit_display or q.unit,
            "system": vkp.UCUM, "code": q.unit}


def code_concept(mtype: MeasurementType, mdc_code: str | None) -> dict[str, Any]:
    """LOINC, SNOMED CT (the VKP slice) and MDC. With several MDC codes for one type
    (pulse: oximeter or cuff) only the one the device reported is named, never a guess."""
    codings: list[dict[str, str]] = [_coding(vkp.LOINC, mtype.loinc.code, mtype.loinc.display)]
    if mtype.snomed is not None:
        codings.append(_coding(vkp.SNOMED, mtype.snomed.code, mtype.snomed.display))
    mdc = mdc_code or (mtype.mdc[0] if len(mtype.mdc) == 1 else None)
    if mdc is not None:
        codings.append({"system": vkp.MDC, "code": mdc})
    return {"coding": codings, "text": mtype.display}


def _coding(system: str, code: str, display: str | None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _interpretation(finding: RangeFinding) -> list[dict[str, Any]]:
    code, display = ("L", "Low") if finding.below else ("H", "High")
    return [{"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}]


def observation(event: Event, m: Measurement, ctx: MapContext, table: MeasurementTable,
                findings: list[RangeFinding]) -> dict[str, Any]:
    rid = ctx.resource_id(event, "Observation")
    mtype = table.type(m.type)
    identifiers = [vkp.uuid_identifier(rid)]
    categories: list[dict[str, Any]] = [{"coding": [
        {"system": OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}]
    if m.phd:
        identifiers.append({"system": PHD_IDENTIFIER_SYSTEM, "value": m.measurement_id})
        categories.append({"coding": [{"system": PHD_CATEGORY, "code": "phd"}]})
    device = vkp.device_reference(event.source, event.device)
    if m.device_display:
        device["display"] = m.device_display
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "meta": {"profile": [mtype.profile]},
        "identifier": identifiers,
        "status": "final",
        "category": categories,
        "code": code_concept(mtype, m.mdc_code),
        "subject": vkp.person_reference(ctx.enrolment.patient),
        "effectiveDateTime": vkp.instant(m.effective_at),
        "device": device,
    }
    by_type = {f.type: f for f in findings}
    if m.data_absent:
        resource["dataAbsentReason"] = {"coding": [
            {"system": DATA_ABSENT_REASON, "code": m.data_absent}]}
    elif m.components:
        components = []
        for c in m.components:
            ctype = table.type(c.type)
            component: dict[str, Any] = {"code": code_concept(ctype, None),
                                         "valueQuantity": quantity(c.value, ctype)}
            if c.type in by_type:
                component["interpretation"] = _interpretation(by_type[c.type])
            components.append(component)
        resource["component"] = components
    elif m.value is not None:
        resource["valueQuantity"] = quantity(m.value, mtype)
        if m.type in by_type:
            resource["interpretation"] = _interpretation(by_type[m.type])
    if m.note:
        resource["note"] = [{"text": m.note}]
    return resource


def _finding_line(f: RangeFinding, table: MeasurementTable) -> str:
    mtype = table.type(f.type)
    unit = mtype.unit_display or f.value.unit
    bound, word = (f.low, "under nedre grense (below low limit)") if f.below \
        else (f.high, "over øvre grense (above high limit)")
    return f"{mtype.display}: {f.value.value} {unit} {word} {bound} {unit}"


def detected_issue(event: Event, m: Measurement, ctx: MapContext, table: MeasurementTable,
                   findings: list[RangeFinding]) -> dict[str, Any]:
    """vkp-DetectedIssue 5.1: the measurement is outside the patient's plan."""
    rid = ctx.resource_id(event, "DetectedIssue")
    observation_ref = {"reference": f"Observation/{ctx.resource_id(event, 'Observation')}"}
    return {
        "resourceType": "DetectedIssue",
        "id": rid,
        "meta": {"profile": [vkp.PROFILE_DETECTED_ISSUE]},
        "identifier": [vkp.uuid_identifier(rid)],
        "status": "final",
        "code": vkp.concept(ctx.mappings, vkp.ALERT_CODE, OUT_OF_RANGE_CODE),
        "severity": event.severity or DEFAULT_SEVERITY,
        "patient": vkp.person_reference(ctx.enrolment.patient),
        "identifiedDateTime": vkp.instant(m.effective_at),
        "author": vkp.device_reference(event.source, event.device),
        "implicated": [observation_ref],
        "evidence": [{"detail": [observation_ref]}],
        "detail": "; ".join(_finding_line(f, table) for f in findings),
    }


def composition(event: Event, m: Measurement, ctx: MapContext, table: MeasurementTable,
                findings: list[RangeFinding]) -> dict[str, Any]:
    """The DHO document's Composition (category 2) for an alert on a measurement."""
    rid = ctx.resource_id(event, "Composition")
    issue_ref = {"reference": f"DetectedIssue/{ctx.resource_id(event, 'DetectedIssue')}"}
    observation_ref = {"reference": f"Observation/{ctx.resource_id(event, 'Observation')}"}
    lines = [f"Målt (measured) {vkp.instant(m.effective_at)}",
             *(_finding_line(f, table) for f in findings)]
    sections: list[dict[str, Any]] = [{
        "title": "Varsel om måling utenfor grenseverdi",
        "code": vkp.concept(ctx.mappings, vkp.COMPOSITION_SECTION, SYSTEM_TEXT),
        "text": vkp.narrative(lines),
        "entry": [issue_ref, observation_ref],
    }]
    if m.note:
        sections.append({
            "title": "Kommentar",
            "code": vkp.concept(ctx.mappings, vkp.COMPOSITION_SECTION, COMMENT),
            "text": vkp.narrative([m.note]),
            "entry": [observation_ref],
        })
    return {
        "resourceType": "Composition",
        "id": rid,
        "meta": {"profile": [vkp.PROFILE_COMPOSITION]},
        "identifier": vkp.uuid_identifier(rid),
        "status": "final",
        "type": {"coding": [COMPOSITION_TYPE]},
        "category": [vkp.concept(ctx.mappings, vkp.COMPOSITION_CATEGORY, DHO)],
        "subject": vkp.person_reference(ctx.enrolment.patient),
        "date": vkp.instant(m.effective_at),
        "author": [vkp.device_reference(event.source, event.device)],
        "title": "Digital hjemmeoppfølging – måling utenfor grenseverdi",
        "section": sections,
    }
