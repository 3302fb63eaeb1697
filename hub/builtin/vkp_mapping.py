"""Built-in mapping of alarm events to VKP R4: DetectedIssue + Encounter (+ Composition).

An alarm case is one DetectedIssue, one Encounter and one Composition for its whole life:
their ids derive from the alarm, so "raised", "handled" and "acknowledged" update the
same resources and the EHR ends with the final picture (domain.md §1.3, §3 "Emit").
"""

from __future__ import annotations

from typing import Any

from hub import hookimpl
from hub.contracts import MapContext
from hub.domain.model import AlarmDetails, AlarmStatus, Event
from hub.errors import MappingError
from hub.fhir import vkp

# LOINC "Summary of episode note", as in NHN's JFT example for VKP Compositions.
COMPOSITION_TYPE = {"system": vkp.LOINC, "code": "34133-9", "display": "Summary of episode note"}
EVENT_BASED = "2"  # vkp-encounter-reason: hendelsesbasert tilsyn
SAFETY_AND_COPING = "1"  # vkp-composition-category: Trygghet og mestring
EVENT_DESCRIPTION = "1.2"  # vkp-composition-section: beskrivelse av hendelse
TWO_WAY_SPEECH = "2"  # vkp-encounter-mode: toveis tale, a safety alarm's usual contact


@hookimpl(trylast=True)
def hub_map_event(event: Event, context: MapContext) -> list[dict[str, Any]] | None:
    if event.alarm is None:
        return None
    if event.code is None:
        raise MappingError(f"{event.kind} event for an alarm has no vkp-alert-code")
    alarm = event.alarm
    resources = [detected_issue(event, alarm, context), encounter(event, alarm, context)]
    if alarm.timeline:
        resources.append(composition(event, alarm, context))
    return resources


def detected_issue(event: Event, alarm: AlarmDetails, ctx: MapContext) -> dict[str, Any]:
    rid = ctx.resource_id(event, "DetectedIssue")
    assert event.code is not None
    resource: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": rid,
        "meta": {"profile": [vkp.PROFILE_DETECTED_ISSUE]},
        # The vendor's case id lets staff find the case in the vendor's portal.
        "identifier": [vkp.uuid_identifier(rid),
                       {"system": vkp.ALARM_ID_SYSTEM_PREFIX + event.source,
                        "value": alarm.alarm_id}],
        "status": "final" if alarm.status is AlarmStatus.CLOSED else "preliminary",
        "code": vkp.concept(ctx.mappings, vkp.ALERT_CODE, event.code),
        "patient": vkp.person_reference(ctx.enrolment.patient),
        "identifiedDateTime": vkp.instant(alarm.raised_at),
        "author": vkp.device_reference(event.source, event.device),
    }
    if event.severity:
        resource["severity"] = event.severity
    if alarm.trigger_text:
        resource["detail"] = alarm.trigger_text
    return resource


def encounter(event: Event, alarm: AlarmDetails, ctx: MapContext) -> dict[str, Any]:
    rid = ctx.resource_id(event, "Encounter")
    mode = alarm.encounter_mode or TWO_WAY_SPEECH
    participants: list[dict[str, Any]] = [
        {"type": [vkp.concept(ctx.mappings, vkp.ENCOUNTER_MODE, mode)],
         "individual": vkp.device_reference(event.source, event.device)},
    ]
    period: dict[str, str] = {"start": vkp.instant(alarm.raised_at)}
    if alarm.closed_at is not None:
        period["end"] = vkp.instant(alarm.closed_at)
    # Handled remotely by the response centre is a virtual encounter; a call-out that
    # reached the home makes it home health.
    act = ("HH", "home health") if alarm.call_out else ("VR", "virtual")
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": rid,
        "meta": {"profile": [vkp.PROFILE_ENCOUNTER]},
        "extension": [vkp.encounter_device_extension(event.source, event.device)],
        "identifier": [vkp.uuid_identifier(rid)],
        "status": "finished" if alarm.status is AlarmStatus.CLOSED else "in-progress",
        "class": {"system": vkp.V3_ACT_CODE, "code": act[0], "display": act[1]},
        "type": [vkp.concept(ctx.mappings, vkp.ALERT_CODE, event.code or "3")],
        "subject": vkp.person_reference(ctx.enrolment.patient),
        "participant": participants,
        "period": period,
        "reasonCode": [vkp.concept(ctx.mappings, vkp.ENCOUNTER_REASON, EVENT_BASED)],
    }
    if event.device.location:
        resource["location"] = [{"location": {"display": event.device.location}}]
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
        "title": "Trygghetsalarm – hendelsesforløp",
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
