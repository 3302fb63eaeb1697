"""Built-in mapping of medication-dispenser dispenses to vkp-MedicationDispense-v090.

A *successful* dispense (`event.dispense`: with or without assistance, as-needed, for
travel, a message acknowledged) is one MedicationDispense (domain.md §1.3). Its id
derives from the event's business key (the vendor's dose id), so a resend of the same
dose updates the same resource. An *unsuccessful* dispense or a dispenser fault is not
mapped here: it is a plain issue (`event.code` 1.x, no details) and becomes a
DetectedIssue in `hub.builtin.vkp_mapping`.

Profile rules this follows (VKP-R4 StructureDefinition vkp-MedicationDispense-v090):

- `performer.actor` is a logical reference by identifier (`actor.reference` is 0..0):
  the dispenser device, and the assisting health worker (HPR number) when assisted;
- `subject.identifier` is the patient's FNR/DNR/FHN, never a literal reference;
- `medicationCodeableConcept.text` is fixed to "Ukjent medisin" (the dispenser does not
  know the medicine as coded data), and `whenPrepared` and `note` are 0..0, so the
  dispenser's free text and the planned time travel in `dosageInstruction.text`.
"""

from __future__ import annotations

from typing import Any

from hub import hookimpl
from hub.contracts import MapContext
from hub.domain.model import DispenseDetails, Event
from hub.errors import MappingError
from hub.fhir import vkp

GENERIC_DEVICE_TYPE = "Medisindispenser"  # vkp-medicationDispenseDevice `type` (1..1)


@hookimpl(trylast=True)
def hub_map_event(event: Event, context: MapContext) -> list[dict[str, Any]] | None:
    if event.dispense is None:
        return None
    return [medication_dispense(event, event.dispense, context)]


def medication_dispense(event: Event, dispense: DispenseDetails,
                        ctx: MapContext) -> dict[str, Any]:
    """vkp-MedicationDispense-v090 for one successful dispense."""
    events_cs = ctx.mappings.codesystem(vkp.MEDICATION_DISPENSE_EVENTS)
    if dispense.category not in events_cs:
        known = ", ".join(sorted(events_cs.codes))
        raise MappingError(
            f"dispense category {dispense.category!r} is not in "
            f"{vkp.MEDICATION_DISPENSE_EVENTS} (known: {known})"
        )
    rid = ctx.resource_id(event, "MedicationDispense")
    performers = [{"actor": vkp.performer_identifier(
        vkp.device_performer(event.source, event.device))}]
    if dispense.assisted_by is not None:
        performers.append({"actor": vkp.performer_identifier(dispense.assisted_by)})
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "id": rid,
        "meta": {"profile": [vkp.PROFILE_MEDICATION_DISPENSE]},
        "extension": [vkp.medication_dispense_device_extension(event.device,
                                                               GENERIC_DEVICE_TYPE)],
        "identifier": [vkp.uuid_identifier(rid)],
        "status": "completed",
        "category": vkp.concept(ctx.mappings, vkp.MEDICATION_DISPENSE_EVENTS,
                                dispense.category),
        "medicationCodeableConcept": {"text": vkp.UNKNOWN_MEDICATION},
        "subject": vkp.person_reference(ctx.enrolment.patient),
        "performer": performers,
        "whenHandedOver": vkp.instant(dispense.handed_over_at),
    }
    lines = dosage_lines(dispense)
    if lines:
        resource["dosageInstruction"] = [{"text": "\n".join(lines)}]
    return resource


def dosage_lines(dispense: DispenseDetails) -> list[str]:
    """The dispenser's free text for `dosageInstruction.text`, one line per fact.

    Times are shown in the offset the dispenser reported (the patient's local time).
    """
    lines = []
    if dispense.medication_text:
        lines.append(f"Medisin: {dispense.medication_text}")
    if dispense.dosage_text:
        lines.append(dispense.dosage_text)
    if dispense.planned_at is not None:
        lines.append(f"Planlagt utlevering: {dispense.planned_at.strftime('%d.%m.%Y %H:%M')}")
    return lines
