"""Built-in mapping: a GP's answer (Dialogmelding) → FHIR Communication for the EHR.

The answer arrives through an `edi2-inbox` source; processing has already found the
message it answers (by ConversationRef) and made the event about that message's patient
and device, with `extra["about"]` naming the resources that were sent (the DetectedIssue
the GP was told about). The Communication points at them with `about`; there is no
`inResponseTo`, since what we sent was not itself a Communication.
"""

from __future__ import annotations

from typing import Any

from hub import hookimpl
from hub.contracts import MapContext
from hub.domain.model import Event
from hub.errors import MappingError
from hub.fhir import vkp

GP_ANSWER = "gp_answer"
HER_ID_SYSTEM = "urn:oid:2.16.578.1.12.4.1.2"  # HER-id (Adresseregisteret)
MSGHEAD_MSGID_SYSTEM = "urn:tryggbro:msghead:msgid"


@hookimpl(trylast=True)
def hub_map_event(event: Event, context: MapContext) -> list[dict[str, Any]] | None:
    if event.kind != GP_ANSWER:
        return None
    return [communication(event, context)]


def communication(event: Event, ctx: MapContext) -> dict[str, Any]:
    x = event.extra
    patient = ctx.enrolment.patient
    if x.get("patient_id") and x["patient_id"] != patient.value:
        raise MappingError("the answer's MsgHead names another patient than the message it "
                           "answers; it is held for an operator")
    rid = ctx.resource_id(event, "Communication")
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "id": rid,
        "identifier": [vkp.uuid_identifier(rid),
                       {"system": MSGHEAD_MSGID_SYSTEM, "value": str(x["msg_id"])}],
        "status": "completed",
        "category": [{"text": "Svar fra fastlege (answer from the GP)"}],
        "subject": vkp.person_reference(patient),
        "about": [{"reference": r} for r in x.get("about", [])],
        "received": vkp.instant(event.occurred_at),
        "payload": [{"contentString": str(x.get("text") or "")}],
    }
    if x.get("subject"):
        resource["topic"] = {"text": str(x["subject"])}
    if x.get("sender_her_id"):
        sender: dict[str, Any] = {"identifier": {"system": HER_ID_SYSTEM,
                                                 "value": str(x["sender_her_id"])}}
        if x.get("sender_name"):
            sender["display"] = str(x["sender_name"])
        resource["sender"] = sender
    if x.get("sent"):
        resource["sent"] = str(x["sent"])
    return resource
