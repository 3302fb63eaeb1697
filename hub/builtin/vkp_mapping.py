"""Built-in mapping of alarms and issues to VKP R4.

- An alarm case (safety alarm, digital supervision, location, nurse call: `event.alarm`)
  is one DetectedIssue, one Encounter and one Composition for its whole life: their ids
  derive from the alarm, so "raised", "handled" and "acknowledged" update the same
  resources and the EHR ends with the final picture (domain.md §1.3, §3 "Emit").
- A planned supervision with nothing to report (`event.alarm` with a planned reason and
  no `event.code`) is the IG's "report physical or digital supervision": an Encounter and
  the optional Composition, no DetectedIssue (domain.md §1.3).
- A plain issue (`event.code` and no details: a dispenser fault, a missed measurement,
  a device out of contact) is one DetectedIssue.
- A position (`event.position`) travels as a Location resource that the DetectedIssue
  names as evidence and the Encounter as its location: the receiver gets it, logs never.
"""

from __future__ import annotations

from typing import Any

from hub import hookimpl
from hub.contracts import MapContext
from hub.domain.model import AlarmDetails, AlarmStatus, EncounterReason, Event, Position
from hub.errors import MappingError
from hub.fhir import vkp

# LOINC "Summary of episode note", as in NHN's JFT example for VKP Compositions.
COMPOSITION_TYPE = {"system": vkp.LOINC, "code": "34133-9", "display": "Summary of episode note"}
SAFETY_AND_COPING = "1"  # vkp-composition-category: Trygghet og mestring
EVENT_DESCRIPTION = "1.2"  # vkp-composition-section: beskrivelse av hendelse
TWO_WAY_SPEECH = "2"  # vkp-encounter-mode: toveis tale, a safety alarm's usual contact
IMAGE_SUPERVISION = "1"  # vkp-encounter-mode: bildebasert tilsyn


@hookimpl(trylast=True)
def hub_map_event(event: Event, context: MapContext) -> list[dict[str, Any]] | None:
    if event.alarm is not None:
        return alarm_case(event, event.alarm, context)
    # A door-lock event with a code (forced or failed opening) is an issue too; staff
    # visits (access without a code) are hub.builtin.access_mapping's.
    if event.code is not None and event.dispense is None and event.measurement is None:
        return plain_issue(event, context)
    return None


def alarm_case(event: Event, alarm: AlarmDetails, ctx: MapContext) -> list[dict[str, Any]]:
    resources = []
    if event.code is not None:
        resources.append(detected_issue(event, ctx, alarm))
    elif alarm.reason is not EncounterReason.PLANNED:
        # Only a planned supervision may report nothing found; an event-based alarm
        # without a code is an adapter bug, not an Encounter.
        raise MappingError(f"{event.kind} event for an alarm has no vkp-alert-code")
    resources.append(encounter(event, alarm, ctx))
    if alarm.timeline:
        resources.append(composition(event, alarm, ctx))
    if event.position is not None:
        resources.append(location(event, event.position, ctx))
    return resources


def plain_issue(event: Event, ctx: MapContext) -> list[dict[str, Any]]:
    resources = [detected_issue(event, ctx)]
    if event.position is not None:
        resources.append(location(event, event.position, ctx))
    return resources


def detected_issue(event: Event, ctx: MapContext,
                   alarm: AlarmDetails | None = None) -> dict[str, Any]:
    """vkp-DetectedIssue: the alarm or issue itself, coded with vkp-alert-code."""
    rid = ctx.resource_id(event, "DetectedIssue")
    assert event.code is not None
    identifiers = [vkp.uuid_identifier(rid)]
    if alarm is not None:
        # The vendor's case id lets staff find the case in the vendor's portal.
        identifiers.append({"system": vkp.ALARM_ID_SYSTEM_PREFIX + event.source,
                            "value": alarm.alarm_id})
    open_case = alarm is not None and alarm.status is not AlarmStatus.CLOSED
    resource: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": rid,
        "meta": {"profile": [vkp.PROFILE_DETECTED_ISSUE]},
        "identifier": identifiers,
        "status": "preliminary" if open_case else "final",
        "code": vkp.concept(ctx.mappings, vkp.ALERT_CODE, event.code),
        "patient": vkp.person_reference(ctx.enrolment.patient),
        "identifiedDateTime": vkp.instant(alarm.raised_at if alarm else event.occurred_at),
        "author": vkp.device_reference(event.source, event.device),
    }
    if event.severity:
        resource["severity"] = event.severity
    detail = (alarm.trigger_text if alarm else None) or event.detail
    known = _known_about_patient(ctx)
    if known:
        detail = f"{detail}. {known}" if detail else known
    if detail:
        resource["detail"] = detail
    if event.position is not None:
        resource["evidence"] = [{"detail": [
            {"reference": f"Location/{ctx.resource_id(event, 'Location')}"}]}]
    return resource


def _known_about_patient(ctx: MapContext) -> str:
    """What the EPJ knows about the patient (hub_patient_context, e.g. VKP's Patient), for
    the responder reading the issue: care zone, household, e-lock system."""
    known = ctx.enrolment.context
    if not known:
        return ""
    facts = (("Sone (zone)", known.zone), ("Husstand (household)", known.household),
             ("Dørlås (e-lock)", known.door_lock))
    return "; ".join(f"{label}: {value}" for label, value in facts if value)


def location(event: Event, position: Position, ctx: MapContext) -> dict[str, Any]:
    """Where the event happened (GPS). Coordinates are personal data: only the receiver
    sees them."""
    rid = ctx.resource_id(event, "Location")
    description = "Posisjon ved hendelsen (position at the event)"
    if position.accuracy_m is not None:
        description += f", ±{position.accuracy_m:g} m"
    if position.at is not None:
        description += f", målt (measured) {vkp.instant(position.at)}"
    resource: dict[str, Any] = {
        "resourceType": "Location",
        "id": rid,
        "identifier": [vkp.uuid_identifier(rid)],
        "status": "active",
        "mode": "instance",
        "description": description,
        "position": {"latitude": position.latitude, "longitude": position.longitude},
    }
    return resource


def encounter(event: Event, alarm: AlarmDetails, ctx: MapContext) -> dict[str, Any]:
    rid = ctx.resource_id(event, "Encounter")
    mode = alarm.encounter_mode or (IMAGE_SUPERVISION if alarm.digital else TWO_WAY_SPEECH)
    participants: list[dict[str, Any]] = [
        {"type": [vkp.concept(ctx.mappings, vkp.ENCOUNTER_MODE, mode)],
         "individual": vkp.device_reference(event.source, event.device)},
    ]
    period: dict[str, str] = {"start": vkp.instant(alarm.raised_at)}
    if alarm.closed_at is not None:
        period["end"] = vkp.instant(alarm.closed_at)
    # Handled remotely by the response centre is a virtual encounter; a call-out that
    # reached the home makes it home health. Digital supervision is always virtual.
    act = ("HH", "home health") if alarm.call_out and not alarm.digital else ("VR", "virtual")
    profile = vkp.PROFILE_DIGITAL_ENCOUNTER if alarm.digital else vkp.PROFILE_ENCOUNTER
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": rid,
        "meta": {"profile": [profile]},
        "extension": [vkp.encounter_device_extension(event.source, event.device)],
        "identifier": [vkp.uuid_identifier(rid)],
        "status": "finished" if alarm.status is AlarmStatus.CLOSED else "in-progress",
        "class": {"system": vkp.V3_ACT_CODE, "code": act[0], "display": act[1]},
        "subject": vkp.person_reference(ctx.enrolment.patient),
        "participant": participants,
        "period": period,
        "reasonCode": [vkp.concept(ctx.mappings, vkp.ENCOUNTER_REASON, str(alarm.reason))],
    }
    if event.code is not None:
        resource["type"] = [vkp.concept(ctx.mappings, vkp.ALERT_CODE, event.code)]
    places: list[dict[str, Any]] = []
    if event.device.location:
        places.append({"location": {"display": event.device.location}})
    if event.position is not None:
        places.append({"location": {"reference": f"Location/{ctx.resource_id(event, 'Location')}"}})
    if places:
        resource["location"] = places
    if alarm.response_centre is not None:
        resource["serviceProvider"] = vkp.organisation_reference(alarm.response_centre)
    return resource


def composition(event: Event, alarm: AlarmDetails, ctx: MapContext) -> dict[str, Any]:
    rid = ctx.resource_id(event, "Composition")
    events_cs = ctx.mappings.codesystem(vkp.COMPOSITION_EVENT)
    timeline = sorted(alarm.timeline, key=lambda t: t.at)
    lines = []
    for step in timeline:
        line = f"{step.at.strftime('%d.%m.%Y %H:%M:%S')} {events_cs.display(step.code)}"
        if step.note:
            line += f": {step.note}"
        lines.append(line)
    author = (vkp.organisation_reference(alarm.response_centre) if alarm.response_centre
              else vkp.device_reference(event.source, event.device))
    return {
        "resourceType": "Composition",
        "id": rid,
        "meta": {"profile": [vkp.PROFILE_COMPOSITION]},
        "identifier": vkp.uuid_identifier(rid),
        "status": "final" if alarm.status is AlarmStatus.CLOSED else "preliminary",
        "type": {"coding": [COMPOSITION_TYPE]},
        "category": [vkp.concept(ctx.mappings, vkp.COMPOSITION_CATEGORY, SAFETY_AND_COPING)],
        "subject": vkp.person_reference(ctx.enrolment.patient),
        "encounter": {"reference": f"Encounter/{ctx.resource_id(event, 'Encounter')}"},
        "date": vkp.instant(timeline[-1].at),
        "author": [author],
        "title": f"{_area_title(event, alarm, ctx)} – hendelsesforløp",
        "event": [
            {"code": [vkp.concept(ctx.mappings, vkp.COMPOSITION_EVENT, step.code)],
             "period": {"start": vkp.instant(step.at)}}
            for step in timeline
        ],
        "section": [
            {"title": "Hendelsesforløp",
             "code": vkp.concept(ctx.mappings, vkp.COMPOSITION_SECTION, EVENT_DESCRIPTION),
             "text": vkp.narrative(lines)},
        ],
    }


def _area_title(event: Event, alarm: AlarmDetails, ctx: MapContext) -> str:
    """The welfare-technology area for a Composition title: the display of the alert
    code's top level (`3` Trygghetsalarm, `4` Digitalt tilsyn, `7` Sykesignalanlegg)."""
    area = event.code.split(".")[0] if event.code else ("4" if alarm.digital else None)
    if area is None:
        return "Tilsyn"
    return ctx.mappings.codesystem(vkp.ALERT_CODE).display(area)
