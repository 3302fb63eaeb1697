"""Nurse-call webhook JSON → canonical events. Codes come from mappings/nursecall.toml.

One call (sykesignal) is one alarm case for its whole life: every event about it carries
the call as it stands (a snapshot) and the call id is the business key, so "raised",
"presence" and "cancelled" update the same DetectedIssue (vkp-alert-code 7 / 7.1),
Encounter and Composition.
"""

from __future__ import annotations

from typing import Any

from hub.adapters import json_event_id, validate_payload
from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import (
    AlarmDetails,
    AlarmStatus,
    Category,
    DeviceRef,
    Event,
    Priority,
    StoredMessage,
    TimelineEntry,
)
from hub.jsonsafe import loads_strict
from tryggbro_nursecall.schema import Call, Device, Webhook

TABLE = "nursecall"
HEARTBEAT = "heartbeat"
_STATUS = {
    "call.raised": AlarmStatus.RAISED,
    "call.presence": AlarmStatus.IN_PROGRESS,
    "call.cancelled": AlarmStatus.CLOSED,
}


class NurseCallAdapter:
    # An alarm source: processing takes its messages ahead of other traffic.
    intake_priority = Priority.ALARM

    def __init__(self, setup: AdapterSetup) -> None:
        table = setup.mappings.table(TABLE)
        self.source = setup.source
        self.call_types = table.section("call_types")
        self.call_texts = table.section("call_texts")
        self.steps = table.section("timeline_steps")
        self.answer_modes = table.section("answer_modes")
        self.severities = table.section("severities")

    def intake_key(self, request: IntakeRequest) -> str | None:
        return json_event_id(request.body)

    def parse(self, message: StoredMessage) -> list[Event]:
        data: Any = loads_strict(message.body)
        hook = validate_payload(Webhook, data)
        if hook.call is not None:
            return [self._call_event(hook, hook.call)]
        assert hook.device is not None
        # Heartbeats say the unit is alive: device health, never journaled to the EHR.
        return [Event(
            source=self.source, business_key=hook.event_id, kind=HEARTBEAT,
            category=Category.DEVICE_HEALTH, occurred_at=hook.occurred_at,
            device=_device(hook.device, None),
        )]

    def _call_event(self, hook: Webhook, call: Call) -> Event:
        status = _STATUS[hook.type]
        closed_at = (call.cancelled_at or hook.occurred_at) if status is AlarmStatus.CLOSED \
            else None
        presence = sorted(call.presence, key=lambda p: p.at)
        steps: list[TimelineEntry] = [
            TimelineEntry(code=self.steps.lookup("presence"), at=p.at) for p in presence]
        if closed_at is not None:
            steps.append(TimelineEntry(code=self.steps.lookup("cancelled"), at=closed_at))
        if steps:  # a call nobody has answered yet has no story to tell
            steps.insert(0, TimelineEntry(code=self.steps.lookup("raised"), at=call.raised_at))
        mode = self.answer_modes.lookup(call.answered_via) if call.answered_via else None
        details = AlarmDetails(
            alarm_id=call.id, status=status, raised_at=call.raised_at, closed_at=closed_at,
            encounter_mode=mode,
            call_out=bool(presence),  # staff came to the room: not a remote encounter
            timeline=tuple(steps),
            operator_id=next((p.staff_id for p in reversed(presence) if p.staff_id), None),
            trigger_text=self.call_texts.get(call.call_type),
        )
        return Event(
            source=self.source, business_key=call.id, kind=hook.type,
            category=Category.NURSE_CALL, occurred_at=hook.occurred_at,
            device=_device(call.device, call.room), code=self.call_types.lookup(call.call_type),
            severity=self.severities.get(call.call_type), snapshot=True, alarm=details,
        )


def _device(device: Device, room: str | None) -> DeviceRef:
    return DeviceRef(id=device.id, model=device.model, type=device.type, location=room)
