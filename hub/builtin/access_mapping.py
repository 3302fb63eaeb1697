"""Built-in mapping of staff visits recorded by electronic door locks (elektronisk
dørlås) to FHIR.

A staff member's unlock opens a visit and the lock closes it; the lock system sends the
visit's id with both. The visit becomes one **Encounter** for its whole life (id derived
from the visit id): `in-progress` at the unlock, `finished` with `period.end` at the
lock. Class `HH` (home health), type vkp-alert-code `6`, the staff member as participant
by identifier (HPR number or the municipality's employee number), the lock as the
vkp-encounterDevice extension.

The Encounter claims **no** VKP profile: vkp-Encounter-v090 binds `participant.type`
(required) to vkp-encounter-mode, whose codes are all remote (image supervision, two-way
speech, listening-in); none describes a physical visit, and claiming the profile with
one of them would tell the EHR the visit was remote. The participant is coded instead
with HL7 v3 ParticipationType `PPRF` (primary performer). See
plugins/tryggbro-doorlock/README.md.

Forced or failed openings carry a vkp-alert-code and are plain issues
(DetectedIssue `6`) in hub.builtin.vkp_mapping. The staff id is personal data: it is in
the FHIR payload only, never logged.
"""

from __future__ import annotations

from typing import Any

from hub import hookimpl
from hub.contracts import MapContext
from hub.domain.model import DoorAccess, Event
from hub.errors import MappingError
from hub.fhir import vkp

DOOR_LOCK = "6"  # vkp-alert-code: Elektronisk dørlås
V3_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PRIMARY_PERFORMER = {"system": V3_PARTICIPATION_TYPE, "code": "PPRF",
                     "display": "primary performer"}
VISIT_ID_SYSTEM_PREFIX = "urn:tryggbro:visit:"
VISIT_OUTCOMES = frozenset({"unlocked", "locked"})


@hookimpl(trylast=True)
def hub_map_event(event: Event, context: MapContext) -> list[dict[str, Any]] | None:
    access = event.access
    if access is None or event.code is not None or access.outcome not in VISIT_OUTCOMES:
        return None
    if access.staff is None:
        return None
    return [staff_visit(event, access, context)]


def staff_visit(event: Event, access: DoorAccess, ctx: MapContext) -> dict[str, Any]:
    staff = access.staff
    assert staff is not None
    if access.visit_id is None or access.visit_start is None:
        raise MappingError(f"{event.kind} by staff without a visit id and start time")
    rid = ctx.resource_id(event, "Encounter")
    period = {"start": vkp.instant(access.visit_start)}
    finished = access.outcome == "locked"
    if finished:
        period["end"] = vkp.instant(access.visit_end or event.occurred_at)
    individual: dict[str, Any] = {
        "type": "Practitioner",
        "identifier": {"system": staff.system, "value": staff.value},
    }
    if staff.display:
        individual["display"] = staff.display
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": rid,
        "extension": [vkp.encounter_device_extension(event.source, event.device)],
        "identifier": [
            vkp.uuid_identifier(rid),
            {"system": VISIT_ID_SYSTEM_PREFIX + event.source, "value": access.visit_id},
        ],
        "status": "finished" if finished else "in-progress",
        "class": {"system": vkp.V3_ACT_CODE, "code": "HH", "display": "home health"},
        "type": [vkp.concept(ctx.mappings, vkp.ALERT_CODE, DOOR_LOCK)],
        "subject": vkp.person_reference(ctx.enrolment.patient),
        "participant": [{"type": [{"coding": [PRIMARY_PERFORMER]}],
                         "individual": individual}],
        "period": period,
    }
    if event.device.location:
        resource["location"] = [{"location": {"display": event.device.location}}]
    return resource
